"""Tortoise models: server keys, durable outbound queues and inbound transaction records."""

from tortoise import fields
from tortoise.models import Model


class ServerKey(Model):
    """A remote server's verify key, kept after expiry so old events still verify."""

    id = fields.BigIntField(primary_key=True)
    server_name = fields.CharField(max_length=255)
    key_id = fields.CharField(max_length=255)
    verify_key = fields.CharField(max_length=128)
    valid_until_ts = fields.BigIntField()
    fetched_ts = fields.BigIntField()

    class Meta:
        table = "server_keys"
        unique_together = (("server_name", "key_id"),)


class FederationOutbox(Model):
    """One PDU or EDU waiting for a destination; written with the event, deleted on 2xx."""

    id = fields.BigIntField(primary_key=True)
    destination = fields.CharField(max_length=255)
    event_id = fields.CharField(max_length=255, null=True)
    edu_json = fields.TextField(null=True)
    # Assigned when first sent, so a retry resends the same transaction ID.
    txn_id = fields.CharField(max_length=64, null=True)
    created_ts = fields.BigIntField()

    class Meta:
        table = "federation_outbox"
        indexes = (("destination", "id"),)


class FederationDestination(Model):
    destination = fields.CharField(max_length=255, primary_key=True)
    retry_at_ts = fields.BigIntField(default=0)
    backoff_ms = fields.BigIntField(default=0)
    last_success_ts = fields.BigIntField(null=True)

    class Meta:
        table = "federation_destinations"


class InboundTransaction(Model):
    """Transactions already processed: a replayed txnId gets the stored answer, nothing reapplied."""

    id = fields.BigIntField(primary_key=True)
    origin = fields.CharField(max_length=255)
    txn_id = fields.CharField(max_length=255)
    response_json = fields.TextField()
    received_ts = fields.BigIntField()

    class Meta:
        table = "federation_inbound_txns"
        unique_together = (("origin", "txn_id"),)


class RejectedEvent(Model):
    event_id = fields.CharField(max_length=255, primary_key=True)
    room_id = fields.CharField(max_length=255)
    reason = fields.TextField()
    ts = fields.BigIntField()

    class Meta:
        table = "rejected_events"
