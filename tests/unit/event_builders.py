"""Builds realistic room DAGs (real event IDs and auth_events) for tests."""

from __future__ import annotations

from homeserver.events.auth import AuthError, auth_types_for_event, check_auth
from homeserver.events.hashing import add_content_hash, compute_event_id
from homeserver.events.room_versions import get_room_version

ALICE = "@alice:a.test"
BOB = "@bob:b.test"
CAROL = "@carol:c.test"
DAVE = "@dave:a.test"


class Room:
    """A room whose events are built against a (possibly forked) state map."""

    def __init__(self, version: str = "10", creator: str = ALICE, room_id: str = "!room:a.test"):
        self.rv = get_room_version(version)
        self.room_id = room_id
        self.events: dict[str, dict] = {}
        self.state: dict[tuple[str, str], str] = {}
        self._ts = 1000
        self._last: list[str] = []
        content = {"room_version": version}
        if not self.rv.implicit_room_creator:
            content["creator"] = creator
        self.create = self.send("m.room.create", creator, content, state_key="")
        self.send("m.room.member", creator, {"membership": "join"}, state_key=creator)

    def make(self, event_type, sender, content, state_key=None, state=None, prev=None, ts=None):
        """Build (but do not record) an event with auth events chosen from ``state``."""
        state = self.state if state is None else state
        if ts is None:
            self._ts += 10
            ts = self._ts
        event = {
            "type": event_type,
            "sender": sender,
            "room_id": self.room_id,
            "content": content,
            "origin_server_ts": ts,
            "depth": len(self.events) + 1,
            "prev_events": list(self._last if prev is None else prev),
        }
        if state_key is not None:
            event["state_key"] = state_key
        event["auth_events"] = [state[k] for k in auth_types_for_event(event) if k in state]
        event = add_content_hash(event)
        event["event_id"] = compute_event_id(event, self.rv)
        return event

    def auth_events_for(self, event, state=None):
        state = self.state if state is None else state
        return {
            k: self.events[state[k]] for k in auth_types_for_event(event) if k in state
        }

    def check(self, *args, **kwargs):
        """Build an event and run check_auth against the current state."""
        event = self.make(*args, **kwargs)
        check_auth(event, self.auth_events_for(event, kwargs.get("state")), self.rv)
        return event

    def send(self, event_type, sender, content, state_key=None, state=None, ts=None, force=False):
        """Build, authorise (unless ``force``) and record an event; update ``state``."""
        target_state = self.state if state is None else state
        event = self.make(event_type, sender, content, state_key, target_state, ts=ts)
        if not force and event_type != "m.room.create":
            check_auth(event, self.auth_events_for(event, target_state), self.rv)
        self.events[event["event_id"]] = event
        self._last = [event["event_id"]]
        if state_key is not None:
            target_state[(event_type, state_key)] = event["event_id"]
        return event

    # Convenience wrappers.
    def member(self, user, membership, sender=None, state=None, ts=None, **extra):
        content = {"membership": membership, **extra}
        return self.send("m.room.member", sender or user, content, user, state=state, ts=ts)

    def power_levels(self, sender, content, state=None, ts=None):
        return self.send("m.room.power_levels", sender, content, "", state=state, ts=ts)

    def join_rules(self, sender, rule, state=None, ts=None, **extra):
        return self.send(
            "m.room.join_rules", sender, {"join_rule": rule, **extra}, "", state=state, ts=ts
        )


def rejected(fn, *args, **kwargs) -> str:
    """Run ``fn`` expecting AuthError; return its reason for assertions."""
    try:
        fn(*args, **kwargs)
    except AuthError as exc:
        return exc.reason
    raise AssertionError("expected AuthError, event was allowed")


def public_room(version="10", users=None):
    """Alice's public room with explicit power levels and given joined users."""
    room = Room(version)
    room.power_levels(ALICE, {"users": {ALICE: 100, **(users or {})}})
    room.join_rules(ALICE, "public")
    return room
