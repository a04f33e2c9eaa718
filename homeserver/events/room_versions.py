"""Room version capabilities for the versions this server supports."""

from __future__ import annotations

from dataclasses import dataclass, replace


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
    # Redaction keeps join_rules.allow (v8+) and member join_authorised_via_users_server (v9+).
    redaction_keeps_allow: bool = True
    redaction_keeps_join_authorised: bool = True
    # Every supported version uses v4+ event IDs ($ + url-safe reference hash), state res v2
    # and the v6 rules (no m.room.aliases special case, `notifications` power level checked).
    event_id_is_reference_hash: bool = True
    state_res_v2: bool = True


# Versions 6 to 9 still live on in rooms created before 10 became the default; servers
# joining them over federation need them. They differ from 10 only in these flags.
ROOM_V6 = RoomVersion(
    identifier="6",
    updated_redaction_rules=False,
    implicit_room_creator=False,
    knock_join_rule=False,
    restricted_join_rule=False,
    knock_restricted_join_rule=False,
    enforce_int_power_levels=False,
    redaction_keeps_allow=False,
    redaction_keeps_join_authorised=False,
)
ROOM_V7 = replace(ROOM_V6, identifier="7", knock_join_rule=True)
ROOM_V8 = replace(ROOM_V7, identifier="8", restricted_join_rule=True, redaction_keeps_allow=True)
ROOM_V9 = replace(ROOM_V8, identifier="9", redaction_keeps_join_authorised=True)

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
    v.identifier: v for v in (ROOM_V6, ROOM_V7, ROOM_V8, ROOM_V9, ROOM_V10, ROOM_V11)
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
