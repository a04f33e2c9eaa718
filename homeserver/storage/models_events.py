"""Tortoise models: the event DAG, its stream ordering and per-device transaction IDs."""

from tortoise import fields
from tortoise.models import Model


class Event(Model):
    # Per-server position: assigned when the event is persisted, increasing in commit order.
    stream_ordering = fields.BigIntField(primary_key=True, generated=False)
    event_id = fields.CharField(max_length=255, unique=True)
    room_id = fields.CharField(max_length=255)
    type = fields.CharField(max_length=255)
    state_key = fields.CharField(max_length=255, null=True)
    sender = fields.CharField(max_length=255)
    depth = fields.BigIntField()
    origin_server_ts = fields.BigIntField()
    # The full PDU as canonical JSON (signatures included).
    json = fields.TextField()
    # State after this event (see storage/state.py).
    state_group = fields.BigIntField(null=True)
    # Set when a redaction of this event has been accepted; reads then serve the redacted form.
    redacted_by = fields.CharField(max_length=255, null=True)
    # Transaction ID of the local client that sent it (for unsigned.transaction_id).
    txn_device = fields.CharField(max_length=255, null=True)
    txn_id = fields.CharField(max_length=255, null=True)
    # Known for auth or state only (e.g. a remote room's state at join): not in the timeline.
    outlier = fields.BooleanField(default=False, db_default=False)
    # Passed auth against its own state but not against current state: stored, never served.
    soft_failed = fields.BooleanField(default=False, db_default=False)

    class Meta:
        table = "events"
        # (room_id, origin_server_ts): /timestamp_to_event, jumping to a date.
        indexes = (("room_id", "stream_ordering"), ("room_id", "type", "state_key"),
                   ("room_id", "origin_server_ts"))


class EventEdge(Model):
    id = fields.BigIntField(primary_key=True)
    event_id = fields.CharField(max_length=255, db_index=True)
    prev_event_id = fields.CharField(max_length=255, db_index=True)
    room_id = fields.CharField(max_length=255)

    class Meta:
        table = "event_edges"


class ForwardExtremity(Model):
    id = fields.BigIntField(primary_key=True)
    room_id = fields.CharField(max_length=255, db_index=True)
    event_id = fields.CharField(max_length=255)

    class Meta:
        table = "forward_extremities"
        unique_together = (("room_id", "event_id"),)


class EventTxn(Model):
    """(user, device, txnId) -> event: makes PUT /send/{txnId} idempotent."""

    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255)
    device_id = fields.CharField(max_length=255)
    txn_id = fields.CharField(max_length=255)
    event_id = fields.CharField(max_length=255)
    created_ts = fields.BigIntField()

    class Meta:
        table = "event_txns"
        unique_together = (("user_id", "device_id", "txn_id"),)


class EventRelation(Model):
    """m.relates_to index: reactions, edits, replies and threads look-ups without scanning."""

    id = fields.BigIntField(primary_key=True)
    event_id = fields.CharField(max_length=255, unique=True)
    relates_to_id = fields.CharField(max_length=255, db_index=True)
    rel_type = fields.CharField(max_length=255)
    aggregation_key = fields.CharField(max_length=255, null=True)
    room_id = fields.CharField(max_length=255)
    sender = fields.CharField(max_length=255)

    class Meta:
        table = "event_relations"
        # A room's threads (/threads).
        indexes = (("room_id", "rel_type"),)
