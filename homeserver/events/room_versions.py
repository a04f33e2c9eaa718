"""Room version capabilities for the versions this server supports."""

from __future__ import annotations

from dataclasses import dataclass


class UnsupportedRoomVersion(ValueError):
    """Raised for a room version identifier this server does not implement."""

    def __init__(self, identifier: object) -> None:
        super().__init__(f"unsupported room version {identifier!r}")
        self.identifier = identifier


@dataclass(frozen=True)
class RoomVersion:
    identifier: str
    # v11 (MSC2176/MSC3821/MSC2174): drops top-level origin/membership/prev_state,
    # keeps all create content, power_levels.invite, redaction.redacts and
    # member third_party_invite.signed.
    updated_redaction_rules: bool
    # v11: the room creator is the create event's sender, not content.creator.
    implicit_room_creator: bool
    knock_join_rule: bool
    restricted_join_rule: bool
    knock_restricted_join_rule: bool
    # v10: power level values must be real integers (no strings).
    enforce_int_power_levels: bool
    # v11: m.room.redaction carries `redacts` in content, not at top level.
    redacts_in_content: bool = False
    # Both versions use v4+ event IDs ($ + url-safe reference hash) and state res v2.
    event_id_is_reference_hash: bool = True
    state_res_v2: bool = True


ROOM_V10 = RoomVersion(
    identifier="10",
    updated_redaction_rules=False,
    implicit_room_creator=False,
    knock_join_rule=True,
    restricted_join_rule=True,
    knock_restricted_join_rule=True,
    enforce_int_power_levels=True,
)

ROOM_V11 = RoomVersion(
    identifier="11",
    updated_redaction_rules=True,
    implicit_room_creator=True,
    knock_join_rule=True,
    restricted_join_rule=True,
    knock_restricted_join_rule=True,
    enforce_int_power_levels=True,
    redacts_in_content=True,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    ROOM_V10.identifier: ROOM_V10,
    ROOM_V11.identifier: ROOM_V11,
}

DEFAULT_ROOM_VERSION = "10"


def get_room_version(identifier: str) -> RoomVersion:
    """Look up a supported room version; raise UnsupportedRoomVersion otherwise."""
    if not isinstance(identifier, str):
        raise UnsupportedRoomVersion(identifier)
    try:
        return KNOWN_ROOM_VERSIONS[identifier]
    except KeyError:
        raise UnsupportedRoomVersion(identifier) from None
