"""Tortoise models: room state as groups of deltas, and current state as a table."""

from tortoise import fields
from tortoise.models import Model


class Room(Model):
    room_id = fields.CharField(max_length=255, primary_key=True)
    room_version = fields.CharField(max_length=32)
    creator = fields.CharField(max_length=255, null=True)
    # Published in the public room directory.
    is_public = fields.BooleanField(default=False)
    created_ts = fields.BigIntField()

    class Meta:
        table = "rooms"


class RoomAlias(Model):
    alias = fields.CharField(max_length=255, primary_key=True)
    room_id = fields.CharField(max_length=255, db_index=True)
    creator = fields.CharField(max_length=255)

    class Meta:
        table = "room_aliases"


class StateGroup(Model):
    """State after an event: prev_group plus the edits in StateGroupEdit.

    Chains are capped (see storage/state.py) so that reading any group is a bounded walk.
    """

    id = fields.BigIntField(primary_key=True, generated=False)
    room_id = fields.CharField(max_length=255, db_index=True)
    prev_group = fields.BigIntField(null=True)
    chain_length = fields.IntField(default=0)

    class Meta:
        table = "state_groups"


class StateGroupEdit(Model):
    id = fields.BigIntField(primary_key=True)
    state_group = fields.BigIntField(db_index=True)
    type = fields.CharField(max_length=255)
    state_key = fields.CharField(max_length=255)
    event_id = fields.CharField(max_length=255)

    class Meta:
        table = "state_group_edits"


class CurrentState(Model):
    id = fields.BigIntField(primary_key=True)
    room_id = fields.CharField(max_length=255)
    type = fields.CharField(max_length=255)
    state_key = fields.CharField(max_length=255)
    event_id = fields.CharField(max_length=255)

    class Meta:
        table = "current_state"
        unique_together = (("room_id", "type", "state_key"),)


class RoomMembership(Model):
    """Current membership of every user in every room: the hot look-up for sync and auth."""

    id = fields.BigIntField(primary_key=True)
    room_id = fields.CharField(max_length=255, db_index=True)
    user_id = fields.CharField(max_length=255, db_index=True)
    membership = fields.CharField(max_length=32)
    event_id = fields.CharField(max_length=255)
    stream_ordering = fields.BigIntField()
    # Set by /forget: the room no longer appears anywhere for this user.
    forgotten = fields.BooleanField(default=False)

    class Meta:
        table = "room_memberships"
        unique_together = (("room_id", "user_id"),)
