"""Tortoise models: per-user data — account data, filters, receipts, presence, push rules."""

from tortoise import fields
from tortoise.models import Model


class AccountData(Model):
    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255)
    room_id = fields.CharField(max_length=255, default="")  # "" = global
    type = fields.CharField(max_length=255)
    content = fields.TextField()
    stream_id = fields.BigIntField(db_index=True)

    class Meta:
        table = "account_data"
        unique_together = (("user_id", "room_id", "type"),)


class Filter(Model):
    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255, db_index=True)
    filter_json = fields.TextField()

    class Meta:
        table = "filters"


class Receipt(Model):
    id = fields.BigIntField(primary_key=True)
    room_id = fields.CharField(max_length=255)
    receipt_type = fields.CharField(max_length=64)
    user_id = fields.CharField(max_length=255)
    thread_id = fields.CharField(max_length=255, default="")
    event_id = fields.CharField(max_length=255)
    ts = fields.BigIntField()
    stream_id = fields.BigIntField(db_index=True)

    class Meta:
        table = "receipts"
        unique_together = (("room_id", "receipt_type", "user_id", "thread_id"),)


class Presence(Model):
    user_id = fields.CharField(max_length=255, primary_key=True)
    state = fields.CharField(max_length=32)
    status_msg = fields.CharField(max_length=1024, null=True)
    last_active_ts = fields.BigIntField()
    stream_id = fields.BigIntField(db_index=True)

    class Meta:
        table = "presence"


class PushRules(Model):
    """A user's changes to the default push rules, as one JSON document."""

    user_id = fields.CharField(max_length=255, primary_key=True)
    rules = fields.TextField()

    class Meta:
        table = "push_rules"


class NotificationCount(Model):
    """Unread notification and highlight counts of one user in one room.

    Maintained as events are persisted (same transaction) and reset by read receipts and by
    the user's own events. The counts cover timeline events after reset_ordering; last_ordering
    is the newest event counted, so a receipt can tell whether it covers everything counted.
    """

    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255)
    room_id = fields.CharField(max_length=255)
    notification_count = fields.IntField(default=0)
    highlight_count = fields.IntField(default=0)
    reset_ordering = fields.BigIntField(default=0)
    last_ordering = fields.BigIntField(default=0)

    class Meta:
        table = "notification_counts"
        unique_together = (("user_id", "room_id"),)
