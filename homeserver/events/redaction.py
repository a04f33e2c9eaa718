"""The redaction algorithm for room versions 6 to 11.

Redaction is also the first step of event signing and of the reference hash,
so any deviation here breaks event IDs and signatures; keep it exact.
"""

from __future__ import annotations

import copy
from typing import Any

from homeserver.events.room_versions import RoomVersion

# Top-level keys kept by every supported version.
_BASE_TOP_LEVEL = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)
# Room versions before 11 also protect these legacy keys.
_PRE_V11_TOP_LEVEL = _BASE_TOP_LEVEL | {"prev_state", "origin", "membership"}

_V10_CONTENT_KEYS: dict[str, frozenset[str]] = {
    "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
    "m.room.create": frozenset({"creator"}),
    "m.room.join_rules": frozenset({"join_rule", "allow"}),
    "m.room.power_levels": frozenset(
        {
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        }
    ),
    "m.room.history_visibility": frozenset({"history_visibility"}),
}

_V11_CONTENT_KEYS: dict[str, frozenset[str]] = {
    **_V10_CONTENT_KEYS,
    "m.room.power_levels": _V10_CONTENT_KEYS["m.room.power_levels"] | {"invite"},
    "m.room.redaction": frozenset({"redacts"}),
    # m.room.create keeps all of its content in v11; handled specially.
}


def _redact_content(event_type: Any, content: dict, room_version: RoomVersion) -> dict:
    if room_version.updated_redaction_rules:
        if event_type == "m.room.create":
            return copy.deepcopy(content)
        allowed = _V11_CONTENT_KEYS.get(event_type, frozenset())
    else:
        allowed = _V10_CONTENT_KEYS.get(event_type, frozenset())

    if event_type == "m.room.join_rules" and not room_version.redaction_keeps_allow:
        allowed = allowed - {"allow"}
    elif event_type == "m.room.member" and not room_version.redaction_keeps_join_authorised:
        allowed = allowed - {"join_authorised_via_users_server"}
    new_content = {k: copy.deepcopy(v) for k, v in content.items() if k in allowed}

    if room_version.updated_redaction_rules and event_type == "m.room.member":
        # v11 keeps only the `signed` part of a third-party invite, so the
        # invite can still be authorised after redaction.
        tpi = content.get("third_party_invite")
        if isinstance(tpi, dict) and "signed" in tpi:
            new_content["third_party_invite"] = {"signed": copy.deepcopy(tpi["signed"])}
    return new_content


def redact_event(event: dict, room_version: RoomVersion) -> dict:
    """Return a new, redacted copy of ``event`` (the input is not modified).

    Keys outside the version's protected list (including ``unsigned``) are
    removed and ``content`` is reduced to the type-specific allowed keys.
    ``content`` is always present in the result, as an object.
    """
    keep = _BASE_TOP_LEVEL if room_version.updated_redaction_rules else _PRE_V11_TOP_LEVEL
    redacted = {k: copy.deepcopy(v) for k, v in event.items() if k in keep and k != "content"}
    content = event.get("content")
    if not isinstance(content, dict):
        content = {}
    redacted["content"] = _redact_content(event.get("type"), content, room_version)
    return redacted


def get_redaction_target(event: dict, room_version: RoomVersion) -> str | None:
    """The event ID an ``m.room.redaction`` event redacts, or None.

    v11 moved ``redacts`` into ``content``; earlier versions keep it at the
    top level. Only the version's own location counts, so a stray copy in
    the other place cannot change what is redacted.
    """
    if event.get("type") != "m.room.redaction":
        return None
    if room_version.redacts_in_content:
        content = event.get("content")
        target = content.get("redacts") if isinstance(content, dict) else None
    else:
        target = event.get("redacts")
    return target if isinstance(target, str) else None
