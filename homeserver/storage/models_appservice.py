"""Tortoise models: the durable outbound queues of application services."""

from tortoise import fields
from tortoise.models import Model


class AppServiceOutbox(Model):
    """One event waiting for one application service, written in the same transaction as the event."""

    id = fields.BigIntField(primary_key=True)
    appservice_id = fields.CharField(max_length=255)
    event_id = fields.CharField(max_length=255)
    created_ts = fields.BigIntField()

    class Meta:
        table = "appservice_outbox"
        indexes = (("appservice_id", "id"),)


class AppServiceTxn(Model):
    """A transaction given an ID and not yet acknowledged: resent as stored, never rebuilt."""

    id = fields.BigIntField(primary_key=True)
    appservice_id = fields.CharField(max_length=255)
    txn_id = fields.CharField(max_length=64)
    body_json = fields.TextField()
    event_count = fields.IntField()
    created_ts = fields.BigIntField()

    class Meta:
        table = "appservice_txns"
        unique_together = (("appservice_id", "txn_id"),)


class AppServiceState(Model):
    """Retry state per application service, so a restart honours the backoff."""

    appservice_id = fields.CharField(max_length=255, primary_key=True)
    retry_at_ts = fields.BigIntField(default=0)
    backoff_ms = fields.BigIntField(default=0)
    last_success_ts = fields.BigIntField(null=True)
    last_txn_id = fields.CharField(max_length=64, null=True)

    class Meta:
        table = "appservice_state"


class AppServiceEphemeral(Model):
    """Ephemeral data (typing, a receipt, presence) waiting for a service that asked for it.

    A newer value with the same coalesce_key replaces the queued one."""

    id = fields.BigIntField(primary_key=True)
    appservice_id = fields.CharField(max_length=255)
    # What a newer value replaces: a hash of ("typing", room) / ("receipt", room, user,
    # thread) / ("presence", user).
    coalesce_key = fields.CharField(max_length=64)
    edu_json = fields.TextField()
    created_ts = fields.BigIntField()

    class Meta:
        table = "appservice_ephemeral"
        unique_together = (("appservice_id", "coalesce_key"),)
        indexes = (("appservice_id", "id"),)
