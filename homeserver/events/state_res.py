"""State resolution v2 (room versions 2+, used by v10 and v11).

Pure: every event needed (the state sets' events and their full auth chains)
must be supplied in ``event_map``. Events are not known to be rejected here,
so every supplied auth event is treated as accepted; callers should not put
events rejected against their own auth chain into ``event_map``.
"""

from __future__ import annotations

import heapq
from typing import Iterable, Mapping

from homeserver.events.auth import AuthError, auth_types_for_event, check_auth
from homeserver.events.power_levels import get_user_power_level
from homeserver.events.room_versions import RoomVersion

__all__ = ["auth_chain", "resolve_state_v2"]

StateKey = tuple[str, str]
StateMap = Mapping[StateKey, str]
EventMap = Mapping[str, dict]

_POWER_LEVELS = ("m.room.power_levels", "")
_INFINITY = float("inf")


def _get(event_map: EventMap, event_id: str) -> dict:
    try:
        return event_map[event_id]
    except KeyError:
        raise KeyError(
            f"event {event_id!r} is missing from event_map; state resolution needs "
            "every state event and its full auth chain"
        ) from None


def _auth_ids(event: dict) -> list[str]:
    ids = event.get("auth_events")
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []


def auth_chain(event_ids: Iterable[str], event_map: EventMap) -> set[str]:
    """All events reachable through ``auth_events`` links from ``event_ids``.

    The starting events themselves are included only if one is in another's
    auth chain (the spec's auth chain excludes the event itself).
    """
    chain: set[str] = set()
    stack: list[str] = []
    for event_id in event_ids:
        stack.extend(_auth_ids(_get(event_map, event_id)))
    while stack:
        event_id = stack.pop()
        if event_id in chain:
            continue
        chain.add(event_id)
        stack.extend(_auth_ids(_get(event_map, event_id)))
    return chain


def _is_power_event(event: dict) -> bool:
    if "state_key" not in event:
        return False
    event_type = event.get("type")
    if event_type in ("m.room.power_levels", "m.room.join_rules"):
        return True
    if event_type == "m.room.member":
        content = event.get("content")
        membership = content.get("membership") if isinstance(content, dict) else None
        return membership in ("leave", "ban") and event.get("sender") != event.get("state_key")
    return False


def _ts(event: dict) -> int:
    ts = event.get("origin_server_ts")
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else 0


class _Resolver:
    def __init__(self, room_version: RoomVersion, event_map: EventMap) -> None:
        self.room_version = room_version
        self.event_map = event_map
        self._chains: dict[str, frozenset[str]] = {}
        self._pl_parent: dict[str, str | None] = {}

    def event(self, event_id: str) -> dict:
        return _get(self.event_map, event_id)

    def chain_of(self, event_id: str) -> frozenset[str]:
        cached = self._chains.get(event_id)
        if cached is None:
            cached = self._chains[event_id] = frozenset(auth_chain([event_id], self.event_map))
        return cached

    def cited_auth_events(self, event: dict) -> dict[StateKey, dict]:
        cited: dict[StateKey, dict] = {}
        for auth_id in _auth_ids(event):
            auth_event = self.event(auth_id)
            event_type, state_key = auth_event.get("type"), auth_event.get("state_key")
            if isinstance(event_type, str) and isinstance(state_key, str):
                cited[(event_type, state_key)] = auth_event
        return cited

    def sender_power(self, event_id: str) -> int:
        # "when looking at their respective auth_events"
        event = self.event(event_id)
        sender = event.get("sender")
        if not isinstance(sender, str):
            return 0
        return get_user_power_level(sender, self.cited_auth_events(event), self.room_version)

    def reverse_topological_power_order(self, event_ids: set[str]) -> list[str]:
        """Kahn's algorithm over the auth DAG restricted to ``event_ids``.

        Predecessors are taken transitively (auth chain ∩ set), so ordering
        constraints through events outside the set are still honoured.
        """
        predecessors = {e: self.chain_of(e) & event_ids for e in event_ids}
        successors: dict[str, list[str]] = {e: [] for e in event_ids}
        for event_id, preds in predecessors.items():
            for pred in preds:
                successors[pred].append(event_id)
        in_degree = {e: len(p) for e, p in predecessors.items()}

        def sort_key(event_id: str) -> tuple[int, int, str]:
            return (-self.sender_power(event_id), _ts(self.event(event_id)), event_id)

        heap = [(sort_key(e), e) for e, d in in_degree.items() if d == 0]
        heapq.heapify(heap)
        ordered: list[str] = []
        while heap:
            _, event_id = heapq.heappop(heap)
            ordered.append(event_id)
            for succ in successors[event_id]:
                in_degree[succ] -= 1
                if in_degree[succ] == 0:
                    heapq.heappush(heap, (sort_key(succ), succ))
        if len(ordered) != len(event_ids):
            raise ValueError("auth events contain a cycle")
        return ordered

    def pl_parent(self, event_id: str) -> str | None:
        """The m.room.power_levels event among an event's auth events, if any."""
        if event_id not in self._pl_parent:
            parent = None
            for auth_id in _auth_ids(self.event(event_id)):
                auth_event = self.event(auth_id)
                if (auth_event.get("type"), auth_event.get("state_key")) == _POWER_LEVELS:
                    parent = auth_id
                    break
            self._pl_parent[event_id] = parent
        return self._pl_parent[event_id]

    def mainline_order(self, event_ids: set[str], power_levels_id: str | None) -> list[str]:
        mainline: dict[str, int] = {}
        current = power_levels_id
        while current is not None and current not in mainline:
            mainline[current] = len(mainline)
            current = self.pl_parent(current)

        def position(event_id: str) -> float:
            # e_0 itself is not considered: start from its power levels auth event.
            seen: set[str] = set()
            current = self.pl_parent(event_id)
            while current is not None and current not in seen:
                if current in mainline:
                    return mainline[current]
                seen.add(current)
                current = self.pl_parent(current)
            return _INFINITY

        def sort_key(event_id: str) -> tuple[float, int, str]:
            # Larger mainline position (older power levels) sorts first.
            return (-position(event_id), _ts(self.event(event_id)), event_id)

        return sorted(event_ids, key=sort_key)

    def iterative_auth_checks(
        self, event_ids: list[str], base_state: Mapping[StateKey, str]
    ) -> dict[StateKey, str]:
        state = dict(base_state)
        for event_id in event_ids:
            event = self.event(event_id)
            event_type, state_key = event.get("type"), event.get("state_key")
            if not isinstance(event_type, str) or not isinstance(state_key, str):
                continue  # only state events can change the state map
            auth_events = self.cited_auth_events(event)
            # The resolved-so-far state wins; cited auth events fill the gaps.
            for key in auth_types_for_event(event):
                if key in state:
                    auth_events[key] = self.event(state[key])
            try:
                check_auth(event, auth_events, self.room_version)
            except AuthError:
                continue
            state[(event_type, state_key)] = event_id
        return state


def _split_state_sets(
    state_sets: list[StateMap],
) -> tuple[dict[StateKey, str], set[str]]:
    unconflicted: dict[StateKey, str] = {}
    conflicted: set[str] = set()
    all_keys = set().union(*(s.keys() for s in state_sets))
    for key in all_keys:
        values = [s.get(key) for s in state_sets]
        first = values[0]
        if first is not None and all(v == first for v in values):
            unconflicted[key] = first
        else:
            conflicted.update(v for v in values if v is not None)
    return unconflicted, conflicted


def resolve_state_v2(
    room_version: RoomVersion,
    state_sets: list[dict[StateKey, str]],
    event_map: dict[str, dict],
) -> dict[StateKey, str]:
    """Resolve several state maps ``(type, state_key) -> event_id`` into one.

    Raises KeyError if an event needed for resolution is not in ``event_map``.
    """
    if not state_sets:
        return {}
    unconflicted, conflicted = _split_state_sets(state_sets)
    if not conflicted:
        return unconflicted

    resolver = _Resolver(room_version, event_map)
    chains = [auth_chain(s.values(), event_map) for s in state_sets]
    auth_difference = set().union(*chains) - set.intersection(*chains)
    full_conflicted = conflicted | auth_difference

    # Step 1: power events plus the parts of their auth chains in the full set.
    power_events = {e for e in full_conflicted if _is_power_event(resolver.event(e))}
    selected = set(power_events)
    for event_id in power_events:
        selected |= resolver.chain_of(event_id) & full_conflicted
    ordered_power = resolver.reverse_topological_power_order(selected)

    # Step 2: iterative auth checks from the unconflicted state.
    partial = resolver.iterative_auth_checks(ordered_power, unconflicted)

    # Steps 3-4: everything else, in mainline order of the resolved power levels.
    remaining = full_conflicted - selected
    ordered_rest = resolver.mainline_order(remaining, partial.get(_POWER_LEVELS))
    resolved = resolver.iterative_auth_checks(ordered_rest, partial)

    # Step 5: the unconflicted state always wins.
    resolved.update(unconflicted)
    return resolved
