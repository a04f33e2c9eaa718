"""Power level lookups and m.room.power_levels validation (auth rule 9).

Re-exported by :mod:`homeserver.events.auth`; kept separate for size.
"""

from __future__ import annotations

from typing import Any, Mapping

from homeserver.events.room_versions import RoomVersion

CREATE_KEY = ("m.room.create", "")
POWER_LEVELS_KEY = ("m.room.power_levels", "")

# Top-level integer fields whose alteration rule 9.5 restricts.
LEVEL_KEYS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")
# Maps of name -> level restricted by rules 9.6/9.7.
LEVEL_MAPS = ("events", "notifications")


def is_int(value: Any) -> bool:
    # JSON booleans are not integers, even though Python's bool subclasses int.
    return isinstance(value, int) and not isinstance(value, bool)


def as_int(value: Any, default: Any) -> Any:
    """Read a power level value; anything that is not an integer gives ``default``.

    Strings of digits are accepted for robustness (older room versions
    allowed them); v10+ auth rules stop new non-integer values being stored.
    """
    if is_int(value):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    return default


def is_valid_user_id(user_id: Any) -> bool:
    """Structural user ID check: ``@localpart:server`` within 255 bytes."""
    if not isinstance(user_id, str) or not user_id.startswith("@"):
        return False
    localpart, sep, server = user_id[1:].partition(":")
    return bool(sep and localpart and server) and len(user_id.encode("utf-8")) <= 255


def _content(event: Mapping | None) -> dict:
    content = event.get("content") if event else None
    return content if isinstance(content, dict) else {}


def room_creator(create_event: Mapping, room_version: RoomVersion) -> Any:
    """The room creator: create sender in v11, ``content.creator`` before."""
    if room_version.implicit_room_creator:
        return create_event.get("sender")
    return _content(create_event).get("creator")


def get_named_level(auth_events: Mapping, name: str, default: int) -> int:
    """A named level (``ban``, ``kick``, ``invite``, ``redact``...) or its default."""
    return as_int(_content(auth_events.get(POWER_LEVELS_KEY)).get(name), default)


def get_user_power_level(user_id: str, auth_events: Mapping, room_version: RoomVersion) -> int:
    """A user's power level; without a power levels event, the creator has 100."""
    pl_event = auth_events.get(POWER_LEVELS_KEY)
    if pl_event is not None:
        content = _content(pl_event)
        default = as_int(content.get("users_default"), 0)
        users = content.get("users")
        if isinstance(users, dict) and user_id in users:
            return as_int(users[user_id], default)
        return default
    create = auth_events.get(CREATE_KEY)
    if create is not None and room_creator(create, room_version) == user_id:
        return 100
    return 0


def get_send_level(
    event_type: str, state_key: str | None, power_levels_content: Mapping | None
) -> int:
    """Level required to send ``event_type`` (state if ``state_key`` is not None).

    ``state_default`` is 50 and ``events_default`` 0 when unspecified, even
    with no power levels event at all (m.room.power_levels schema).
    """
    content = power_levels_content or {}
    events = content.get("events")
    if isinstance(events, dict) and event_type in events:
        level = as_int(events[event_type], None)
        if level is not None:
            return level
    if state_key is not None:
        return as_int(content.get("state_default"), 50)
    return as_int(content.get("events_default"), 0)


def validate_power_levels_content(content: Mapping, room_version: RoomVersion) -> str | None:
    """Rules 9.1-9.3; returns a reason string if the content is invalid."""
    if room_version.enforce_int_power_levels:
        for name in LEVEL_KEYS:
            if name in content and not is_int(content[name]):
                return f"power level {name!r} must be an integer"
        for name in LEVEL_MAPS:
            if name in content:
                value = content[name]
                if not isinstance(value, dict) or not all(is_int(v) for v in value.values()):
                    return f"power levels {name!r} must map to integers"
    if "users" in content:
        users = content["users"]
        if not isinstance(users, dict):
            return "power levels 'users' must be an object"
        for user_id, level in users.items():
            if not is_valid_user_id(user_id):
                return f"power levels 'users' has invalid user ID {user_id!r}"
            if room_version.enforce_int_power_levels:
                ok = is_int(level)
            else:
                ok = as_int(level, None) is not None
            if not ok:
                return f"power level for {user_id} must be an integer"
    return None


def _as_map(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def check_power_levels_change(
    old: Mapping, new: Mapping, sender: str, sender_level: int
) -> str | None:
    """Rules 9.5-9.9; returns a reason string if the change is not allowed.

    Absent values are "not present" (None), not defaults: the spec speaks of
    values being added, changed or removed.
    """
    for name in LEVEL_KEYS:
        old_v, new_v = as_int(old.get(name), None), as_int(new.get(name), None)
        if old_v == new_v:
            continue
        if old_v is not None and old_v > sender_level:
            return f"cannot change {name!r} from {old_v}: above sender's power {sender_level}"
        if new_v is not None and new_v > sender_level:
            return f"cannot set {name!r} to {new_v}: above sender's power {sender_level}"

    for map_name in LEVEL_MAPS:
        old_map, new_map = _as_map(old.get(map_name)), _as_map(new.get(map_name))
        for key in old_map.keys() | new_map.keys():
            old_v = as_int(old_map.get(key), None)
            new_v = as_int(new_map.get(key), None)
            if old_v == new_v:
                continue
            if old_v is not None and old_v > sender_level:
                return f"cannot change {map_name}[{key!r}] from {old_v}: above sender's power"
            if new_v is not None and new_v > sender_level:
                return f"cannot set {map_name}[{key!r}] to {new_v}: above sender's power"

    old_users, new_users = _as_map(old.get("users")), _as_map(new.get("users"))
    for user_id in old_users.keys() | new_users.keys():
        old_v = as_int(old_users.get(user_id), None)
        new_v = as_int(new_users.get(user_id), None)
        if old_v == new_v:
            continue
        # Users may lower themselves, but not peers at or above their level.
        if user_id != sender and old_v is not None and old_v >= sender_level:
            return f"cannot change power of {user_id} ({old_v}): not below sender's {sender_level}"
        if new_v is not None and new_v > sender_level:
            return f"cannot give {user_id} power {new_v}: above sender's {sender_level}"
    return None
