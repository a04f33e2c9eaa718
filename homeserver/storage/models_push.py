"""Tortoise models: pushers (where a user's notifications are pushed) and the notifications
themselves (which events notified whom, written with the event)."""

from tortoise import fields
from tortoise.models import Model


class Pusher(Model):
    """One HTTP pusher of a user: a push gateway URL and the device's pushkey.

    last_stream_ordering is how far the user's notifications have been pushed to it; the push
    sender sends the notifications after it, so nothing waits in a separate queue."""

    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255, db_index=True)
    app_id = fields.CharField(max_length=64)
    pushkey = fields.CharField(max_length=512)
    kind = fields.CharField(max_length=32)
    app_display_name = fields.CharField(max_length=255)
    device_display_name = fields.CharField(max_length=255)
    profile_tag = fields.CharField(max_length=255, null=True)
    lang = fields.CharField(max_length=255)
    data = fields.TextField()  # JSON object, url included
    # The device whose access token set it up: deleting the device deletes the pusher.
    device_id = fields.CharField(max_length=255, null=True)
    # When the pushkey was set (or set again): the gateway's pushkey_ts.
    created_ts = fields.BigIntField()
    last_stream_ordering = fields.BigIntField(default=0)
    # Retry schedule while the gateway fails, so a restart honours it.
    retry_at_ts = fields.BigIntField(default=0)
    backoff_ms = fields.BigIntField(default=0)

    class Meta:
        table = "pushers"
        unique_together = (("app_id", "pushkey", "user_id"),)


class Notification(Model):
    """An event that notified a user (the actions of the push rule that matched)."""

    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255)
    room_id = fields.CharField(max_length=255)
    event_id = fields.CharField(max_length=255)
    stream_ordering = fields.BigIntField()
    actions = fields.TextField()
    highlight = fields.BooleanField(default=False)
    ts = fields.BigIntField()

    class Meta:
        table = "notifications"
        indexes = (("user_id", "stream_ordering"),)
