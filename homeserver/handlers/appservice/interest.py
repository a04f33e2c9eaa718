"""Which application services care about an event, a room or a user (the spec's rules).

A service receives the events sent by, or whose membership target is, a user in its `users`
namespace or its sender; those in a room whose ID matches `rooms`, or one of whose aliases
matches `aliases`; and every event of a room where one of its local users (or its sender) is
joined. Ephemeral data follows the same room rules (typing, receipts); presence goes to the
services whose namespace holds the user or who have a user in a room with them.

The answers per room are cached for a while and dropped when the room's membership or
canonical alias changes, so the event pipeline rarely waits on the database for them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable

from homeserver.handlers.appservice.registration import AppService
from homeserver.handlers.lru import LRU
from homeserver.storage import appservice as store
from homeserver.storage import userdata
from homeserver.types import server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer

INTEREST_TTL_S = 60.0  # cached "which services care about this room" answers
ALIAS_TTL_S = 30.0  # cached aliases of a room (directory changes show up within this)
INVALIDATING_TYPES = ("m.room.member", "m.room.canonical_alias")


class Interest:
    def __init__(self, hs: HomeServer, services: dict[str, AppService]) -> None:
        self.hs = hs
        self.services = services  # the handler's: id -> service
        self._member_interest: LRU = LRU(20_000)  # room_id -> (expires, frozenset of ids)
        self._room_aliases: LRU = LRU(20_000)  # room_id -> (expires, list of aliases)

    def delivering(self) -> list[AppService]:
        return [s for s in self.services.values() if s.url]

    def invalidate_room(self, room_id: Any) -> None:
        self._member_interest.pop(room_id, None)
        self._room_aliases.pop(room_id, None)

    async def for_event(self, pdu: dict) -> list[AppService]:
        services = self.delivering()
        if not services:
            return []
        room_id = pdu.get("room_id")
        sender = pdu.get("sender")
        target = pdu.get("state_key") if pdu.get("type") == "m.room.member" else None
        if not isinstance(room_id, str) or not isinstance(sender, str):
            return []
        out: list[AppService] = []
        rest: list[AppService] = []
        for s in services:
            if s.is_interested_in_user(sender) or (
                    isinstance(target, str) and s.is_interested_in_user(target)):
                out.append(s)
            else:
                rest.append(s)
        return out + await self.for_room(room_id, rest)

    async def for_room(self, room_id: str, candidates: Iterable[AppService]
                       ) -> list[AppService]:
        """Those of the candidates interested in everything in the room: by its ID, one of its
        aliases, or one of their users joined to it."""
        out: list[AppService] = []
        rest: list[AppService] = []
        for s in candidates:
            (out if s.is_interested_in_room_id(room_id) else rest).append(s)
        if rest and any(s.has_alias_namespaces for s in rest):
            aliases = await self.aliases_of(room_id)
            still = []
            for s in rest:
                (out if any(s.is_interested_in_alias(a) for a in aliases) else still).append(s)
            rest = still
        if rest:
            by_members = await self.by_members(room_id)
            out.extend(s for s in rest if s.id in by_members)
        return out

    async def for_presence(self, user_id: str, candidates: Iterable[AppService]
                           ) -> list[AppService]:
        """Those of the candidates whose namespace holds the user, or who have a user (or
        their sender) joined to a room the user is joined to."""
        out: list[AppService] = []
        rest: list[AppService] = []
        for s in candidates:
            (out if s.is_interested_in_user(user_id) else rest).append(s)
        if rest:
            rooms = (await userdata.joined_rooms_of([user_id])).get(user_id, [])
            for room_id in rooms:
                by_members = await self.by_members(room_id)
                still = []
                for s in rest:
                    (out if s.id in by_members else still).append(s)
                rest = still
                if not rest:
                    break
        return out

    async def aliases_of(self, room_id: str) -> list[str]:
        cached = self._room_aliases.get_item(room_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        aliases = set(await store.room_aliases(room_id))
        ev = await self.hs.state.current_state_event(room_id, "m.room.canonical_alias")
        content = ev.pdu.get("content") if ev is not None else None
        if isinstance(content, dict):
            if isinstance(content.get("alias"), str):
                aliases.add(content["alias"])
            alt = content.get("alt_aliases")
            if isinstance(alt, list):
                aliases.update(a for a in alt if isinstance(a, str))
        out = sorted(aliases)
        self._room_aliases.put(room_id, (time.monotonic() + ALIAS_TTL_S, out))
        return out

    async def by_members(self, room_id: str) -> frozenset[str]:
        """Services with a local user (or their sender) joined to the room."""
        cached = self._member_interest.get_item(room_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        ours = self.hs.server_name
        members = [m for m in await self.hs.state.joined_members(room_id)
                   if server_of(m) == ours]
        ids = frozenset(s.id for s in self.delivering()
                        if any(s.is_interested_in_user(m) for m in members))
        self._member_interest.put(room_id, (time.monotonic() + INTEREST_TTL_S, ids))
        return ids
