"""Authorisation rules for room versions 10 and 11 (pure functions).

``auth_events`` everywhere is a map ``(type, state_key) -> event dict`` of
the state the event is checked against (its cited auth events, the state
before it, or the current state, depending on the caller's check stage).

Not covered here, because they need I/O or data this module does not have:

* rule 2.1-2.3 on the event's *cited* ``auth_events`` list: duplicates and
  wrong selections are checked by :func:`check_auth_events_selection`, but
  whether a cited event was itself rejected is the caller's knowledge;
* rule 4.2, the signature of ``join_authorised_via_users_server``'s server:
  the caller must verify it with ``signing.verify_event_signature`` using
  that server's key (this module only checks the user is joined and may
  invite).

Third-party invites (rule 4.4.1) are implemented fully, including the
ed25519 check of ``signed`` against the ``m.room.third_party_invite`` keys.
Redactions are not judged by the auth rules in v3+ rooms (the spec says the
redact level is *not* considered); :func:`check_redaction_allowed`
implements the separate "handling redactions" check.
"""

from __future__ import annotations

from typing import Any, Iterable

from homeserver.events import power_levels as _pl
from homeserver.events.hashing import compute_event_id
from homeserver.events.power_levels import (
    get_named_level,
    get_send_level,
    get_user_power_level,
    room_creator,
)
from homeserver.events.redaction import get_redaction_target
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.events.signing import SignatureError, verify_json

__all__ = [
    "AuthError",
    "auth_types_for_event",
    "check_auth",
    "check_auth_events_selection",
    "check_redaction_allowed",
    "get_named_level",
    "get_send_level",
    "get_user_power_level",
]

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"

Key = tuple[str, str]
AuthEvents = dict[Key, dict]


class AuthError(Exception):
    """An event is not authorised; ``reason`` says why, for humans and logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _domain(identifier: Any) -> str | None:
    if not isinstance(identifier, str) or ":" not in identifier:
        return None
    return identifier.split(":", 1)[1]


def _content(event: dict | None) -> dict:
    content = event.get("content") if event else None
    return content if isinstance(content, dict) else {}


def _membership(auth_events: AuthEvents, user_id: str) -> str | None:
    membership = _content(auth_events.get((MEMBER, user_id))).get("membership")
    return membership if isinstance(membership, str) else None


def _join_rule(auth_events: AuthEvents) -> str:
    # No join rules event: treat as "invite" (private), like other servers do;
    # the spec would otherwise reject every join, including invited users.
    rule = _content(auth_events.get((JOIN_RULES, ""))).get("join_rule")
    return rule if isinstance(rule, str) else "invite"


def _event_id(event: dict, room_version: RoomVersion) -> str:
    # Event dicts usually carry their ID; otherwise derive it (v4+ format).
    event_id = event.get("event_id")
    return event_id if isinstance(event_id, str) else compute_event_id(event, room_version)


def auth_types_for_event(event: dict) -> list[Key]:
    """The ``(type, state_key)`` pairs an event's auth events are selected from."""
    if event.get("type") == CREATE:
        return []
    keys: list[Key] = [(CREATE, ""), (POWER_LEVELS, "")]
    sender = event.get("sender")
    if isinstance(sender, str):
        keys.append((MEMBER, sender))
    if event.get("type") == MEMBER:
        content = _content(event)
        membership = content.get("membership")
        state_key = event.get("state_key")
        if isinstance(state_key, str):
            keys.append((MEMBER, state_key))
        if membership in ("join", "invite", "knock"):
            keys.append((JOIN_RULES, ""))
        if membership == "invite":
            tpi = content.get("third_party_invite")
            signed = tpi.get("signed") if isinstance(tpi, dict) else None
            token = signed.get("token") if isinstance(signed, dict) else None
            if isinstance(token, str):
                keys.append((THIRD_PARTY_INVITE, token))
        if membership == "join":
            via = content.get("join_authorised_via_users_server")
            if isinstance(via, str):
                keys.append((MEMBER, via))
    return list(dict.fromkeys(keys))  # de-duplicate, keep order


def check_auth_events_selection(
    event: dict, cited_auth_events: Iterable[dict], room_version: RoomVersion
) -> AuthEvents:
    """Rules 2.1, 2.2, 2.4, 2.5 on the events an event cites as auth events.

    Returns them as an ``auth_events`` map ready for :func:`check_auth`.
    """
    allowed = set(auth_types_for_event(event))
    selected: AuthEvents = {}
    for auth_event in cited_auth_events:
        key = (auth_event.get("type"), auth_event.get("state_key"))
        if not all(isinstance(part, str) for part in key):
            raise AuthError("auth event is not a state event")
        if key in selected:
            raise AuthError(f"duplicate auth event for {key}")
        if key not in allowed:
            raise AuthError(f"auth event {key} is not a valid auth event for this event")
        if auth_event.get("room_id") != event.get("room_id"):
            raise AuthError(f"auth event {key} belongs to a different room")
        selected[key] = auth_event  # type: ignore[index]
    if event.get("type") != CREATE and (CREATE, "") not in selected:
        raise AuthError("no m.room.create event among the auth events")
    return selected


def check_auth(event: dict, auth_events: AuthEvents, room_version: RoomVersion) -> None:
    """Apply the v10/v11 authorisation rules; raise AuthError if not allowed."""
    event_type = event.get("type")
    sender = event.get("sender")
    if not isinstance(event_type, str) or not isinstance(sender, str):
        raise AuthError("event has no valid type or sender")
    if "state_key" in event and not isinstance(event["state_key"], str):
        raise AuthError("state_key must be a string")

    if event_type == CREATE:
        _check_create(event, room_version)
        return

    create = auth_events.get((CREATE, ""))
    if create is None:
        raise AuthError("no m.room.create event in the auth events")
    for key, auth_event in auth_events.items():
        if auth_event.get("room_id") != event.get("room_id"):
            raise AuthError(f"auth event {key} belongs to a different room")
    if _content(create).get("m.federate", True) is False and _domain(sender) != _domain(
        create.get("sender")
    ):
        raise AuthError(f"room is not federated and {sender} is from another server")

    if event_type == MEMBER:
        _check_membership(event, auth_events, room_version)
        return

    if _membership(auth_events, sender) != "join":
        raise AuthError(f"user {sender} is not joined to the room")

    sender_level = get_user_power_level(sender, auth_events, room_version)
    if event_type == THIRD_PARTY_INVITE:
        invite_level = get_named_level(auth_events, "invite", 0)
        if sender_level < invite_level:
            raise AuthError(
                f"user {sender} has power {sender_level} < invite level {invite_level}"
            )
        return

    state_key = event.get("state_key")
    pl_event = auth_events.get((POWER_LEVELS, ""))
    pl_content = _content(pl_event) if pl_event is not None else None
    required = get_send_level(event_type, state_key, pl_content)
    if required > sender_level:
        raise AuthError(
            f"user {sender} has power {sender_level} but {event_type} requires {required}"
        )
    if isinstance(state_key, str) and state_key.startswith("@") and state_key != sender:
        raise AuthError(f"user {sender} cannot set state keyed to another user {state_key}")

    if event_type == POWER_LEVELS:
        _check_power_levels(event, auth_events, room_version, sender_level)


def _check_create(event: dict, room_version: RoomVersion) -> None:
    if event.get("prev_events"):
        raise AuthError("m.room.create must not have prev_events")
    room_domain, sender_domain = _domain(event.get("room_id")), _domain(event.get("sender"))
    if room_domain is None or room_domain != sender_domain:
        raise AuthError("m.room.create sender is not from the room ID's server")
    content = _content(event)
    if "room_version" in content:
        declared = content["room_version"]
        if not isinstance(declared, str) or declared not in KNOWN_ROOM_VERSIONS:
            raise AuthError(f"unknown room version {declared!r}")
    if not room_version.implicit_room_creator and "creator" not in content:
        raise AuthError("m.room.create has no creator")


def _check_membership(event: dict, auth_events: AuthEvents, room_version: RoomVersion) -> None:
    content = _content(event)
    target = event.get("state_key")
    if not isinstance(target, str) or "membership" not in content:
        raise AuthError("m.room.member needs a state_key and content.membership")
    membership = content["membership"]
    sender: str = event["sender"]
    ctx = _MemberContext(event, auth_events, room_version, sender, target)

    if membership == "join":
        ctx.check_join()
    elif membership == "invite":
        ctx.check_invite()
    elif membership == "leave":
        ctx.check_leave()
    elif membership == "ban":
        ctx.check_ban()
    elif membership == "knock":
        ctx.check_knock()
    else:
        raise AuthError(f"unknown membership {membership!r}")


class _MemberContext:
    """Shared lookups for the m.room.member rules (rule 4)."""

    def __init__(
        self,
        event: dict,
        auth_events: AuthEvents,
        room_version: RoomVersion,
        sender: str,
        target: str,
    ) -> None:
        self.event = event
        self.auth_events = auth_events
        self.room_version = room_version
        self.sender = sender
        self.target = target
        self.sender_membership = _membership(auth_events, sender)
        self.target_membership = _membership(auth_events, target)
        self.sender_level = get_user_power_level(sender, auth_events, room_version)
        self.target_level = get_user_power_level(target, auth_events, room_version)

    def _level(self, name: str, default: int) -> int:
        return get_named_level(self.auth_events, name, default)

    def _join_rule_in(self, *rules: str) -> bool:
        rv = self.room_version
        enabled = {
            "knock": rv.knock_join_rule,
            "restricted": rv.restricted_join_rule,
            "knock_restricted": rv.knock_restricted_join_rule,
        }
        rule = _join_rule(self.auth_events)
        return rule in rules and enabled.get(rule, True)

    def check_join(self) -> None:
        create = self.auth_events[(CREATE, "")]
        prev_events = self.event.get("prev_events")
        if (
            isinstance(prev_events, list)
            and len(prev_events) == 1
            and self.target == room_creator(create, self.room_version)
            and prev_events[0] == _event_id(create, self.room_version)
        ):
            return  # the creator's initial join, straight after the create event
        if self.sender != self.target:
            raise AuthError(f"user {self.sender} cannot join on behalf of {self.target}")
        if self.sender_membership == "ban":
            raise AuthError(f"user {self.sender} is banned from the room")
        if self._join_rule_in("invite", "knock"):
            if self.sender_membership in ("invite", "join"):
                return
            raise AuthError(f"user {self.sender} is not invited to this room")
        if self._join_rule_in("restricted", "knock_restricted"):
            if self.sender_membership in ("invite", "join"):
                return
            self._check_restricted_authoriser()
            return
        if self._join_rule_in("public"):
            return
        raise AuthError(f"join rule {_join_rule(self.auth_events)!r} does not allow joining")

    def _check_restricted_authoriser(self) -> None:
        via = _content(self.event).get("join_authorised_via_users_server")
        if not isinstance(via, str):
            raise AuthError("restricted join without join_authorised_via_users_server")
        if _membership(self.auth_events, via) != "join":
            raise AuthError(f"authorising user {via} is not joined")
        via_level = get_user_power_level(via, self.auth_events, self.room_version)
        if via_level < self._level("invite", 0):
            raise AuthError(f"authorising user {via} may not invite")

    def check_invite(self) -> None:
        content = _content(self.event)
        if "third_party_invite" in content:
            if self.target_membership == "ban":
                raise AuthError(f"user {self.target} is banned")
            self._check_third_party_invite(content["third_party_invite"])
            return
        if self.sender_membership != "join":
            raise AuthError(f"user {self.sender} is not joined to the room")
        if self.target_membership in ("join", "ban"):
            state = "joined" if self.target_membership == "join" else "banned"
            raise AuthError(f"user {self.target} is {state}; cannot invite")
        invite_level = self._level("invite", 0)
        if self.sender_level < invite_level:
            raise AuthError(
                f"user {self.sender} has power {self.sender_level} < invite level {invite_level}"
            )

    def _check_third_party_invite(self, tpi: Any) -> None:
        signed = tpi.get("signed") if isinstance(tpi, dict) else None
        if not isinstance(signed, dict):
            raise AuthError("third_party_invite has no signed object")
        mxid, token = signed.get("mxid"), signed.get("token")
        if not isinstance(mxid, str) or not isinstance(token, str):
            raise AuthError("third_party_invite.signed needs mxid and token")
        if mxid != self.target:
            raise AuthError("third_party_invite mxid does not match state_key")
        invite_event = self.auth_events.get((THIRD_PARTY_INVITE, token))
        if invite_event is None:
            raise AuthError("no m.room.third_party_invite for this token")
        if invite_event.get("sender") != self.sender:
            raise AuthError("sender did not send the m.room.third_party_invite")
        if not _third_party_signature_valid(signed, _content(invite_event)):
            raise AuthError("third_party_invite signature does not match any public key")

    def check_leave(self) -> None:
        if self.sender == self.target:
            if self.sender_membership in ("invite", "join", "knock"):
                return
            raise AuthError(
                f"user {self.sender} cannot leave: membership is {self.sender_membership}"
            )
        if self.sender_membership != "join":
            raise AuthError(f"user {self.sender} is not joined to the room")
        ban_level = self._level("ban", 50)
        if self.target_membership == "ban" and self.sender_level < ban_level:
            raise AuthError(f"user {self.sender} may not unban (needs power {ban_level})")
        kick_level = self._level("kick", 50)
        if self.sender_level >= kick_level and self.target_level < self.sender_level:
            return
        raise AuthError(
            f"user {self.sender} (power {self.sender_level}) may not kick {self.target} "
            f"(power {self.target_level}, kick level {kick_level})"
        )

    def check_ban(self) -> None:
        if self.sender_membership != "join":
            raise AuthError(f"user {self.sender} is not joined to the room")
        ban_level = self._level("ban", 50)
        if self.sender_level >= ban_level and self.target_level < self.sender_level:
            return
        raise AuthError(
            f"user {self.sender} (power {self.sender_level}) may not ban {self.target} "
            f"(power {self.target_level}, ban level {ban_level})"
        )

    def check_knock(self) -> None:
        if not self._join_rule_in("knock", "knock_restricted"):
            raise AuthError("the join rule does not allow knocking")
        if self.sender != self.target:
            raise AuthError(f"user {self.sender} cannot knock on behalf of {self.target}")
        if self.sender_membership not in ("ban", "invite", "join"):
            return
        raise AuthError(f"user {self.sender} cannot knock: membership is {self.sender_membership}")


def _third_party_signature_valid(signed: dict, invite_content: dict) -> bool:
    keys: list[str] = []
    if isinstance(invite_content.get("public_key"), str):
        keys.append(invite_content["public_key"])
    for entry in invite_content.get("public_keys") or []:
        if isinstance(entry, dict) and isinstance(entry.get("public_key"), str):
            keys.append(entry["public_key"])
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict):
        return False
    for server_name, server_sigs in signatures.items():
        if not isinstance(server_sigs, dict):
            continue
        for key_id in server_sigs:
            for public_key in keys:
                try:
                    verify_json(signed, server_name, key_id, public_key)
                    return True
                except (SignatureError, ValueError):
                    continue
    return False


def _check_power_levels(
    event: dict, auth_events: AuthEvents, room_version: RoomVersion, sender_level: int
) -> None:
    problem = _pl.validate_power_levels_content(_content(event), room_version)
    if problem:
        raise AuthError(problem)
    current = auth_events.get((POWER_LEVELS, ""))
    if current is None:
        return  # the room's first power levels event
    problem = _pl.check_power_levels_change(
        _content(current), _content(event), event["sender"], sender_level
    )
    if problem:
        raise AuthError(problem)


def check_redaction_allowed(
    redaction: dict,
    redacted_event: dict,
    auth_events: AuthEvents,
    room_version: RoomVersion,
) -> None:
    """Whether a (validly authorised) redaction may actually be applied.

    Spec "Handling redactions": allowed when the redaction's sender has at
    least the *redact level*, or is on the same server as the original
    event's sender. Raise AuthError otherwise.
    """
    target_id = get_redaction_target(redaction, room_version)
    if target_id is None:
        raise AuthError("event is not a redaction or has no redacts target")
    actual_id = _event_id(redacted_event, room_version)
    if target_id != actual_id:
        raise AuthError(f"redaction targets {target_id}, not {actual_id}")
    if redacted_event.get("room_id") != redaction.get("room_id"):
        raise AuthError("redaction and redacted event are in different rooms")
    sender = redaction.get("sender")
    sender_domain = _domain(sender)
    if sender_domain is not None and sender_domain == _domain(redacted_event.get("sender")):
        return
    level = get_user_power_level(sender, auth_events, room_version)
    redact_level = get_named_level(auth_events, "redact", 50)
    if level < redact_level:
        raise AuthError(
            f"user {sender} has power {level} < redact level {redact_level} "
            "and is not on the original sender's server"
        )

