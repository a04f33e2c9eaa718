"""Being in MUCs: the bridge's own occupant (the listener) and one occupant per Nexa user.

The listener (`<bot>@<component>/bridge`, nick `bot_nick`) is in every bridged MUC and is the
only occupant whose copy of the room's traffic is bridged; the Nexa users' occupants
(`<localpart>@<component>/<resource>`) only speak. Each remembers, per connection, which nicks
are the bridge's own, so their messages and presences are never bridged back. On (re)joining,
the listener asks for the room's history since the newest message it saw (duplicates are
dropped by the caller) and, once the room told it who is there, the Matrix room's puppets are
reconciled with that list.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING

from bridges.xmpp.connection import NotConnected
from bridges.xmpp.ids import bare_jid, jid_matrix_user, occupant_puppet_localpart, \
    puppet_localpart
from bridges.xmpp.stanzas import Error, Presence, instant_room_config, join_presence, \
    leave_presence

if TYPE_CHECKING:
    from bridges.xmpp.bridge import XmppBridge

log = logging.getLogger(__name__)

# Errors after which a join is not worth retrying soon.
PERMANENT_JOIN_ERRORS = {"forbidden", "registration-required", "not-allowed", "not-authorized",
                         "item-not-found", "service-unavailable", "jid-malformed"}
HISTORY_OVERLAP_MS = 60_000  # history is asked from a bit before the newest message seen


class JoinFailed(Exception):
    def __init__(self, condition: str) -> None:
        super().__init__(condition)
        self.condition = condition
        self.permanent = condition in PERMANENT_JOIN_ERRORS


class MucRoom:
    def __init__(self, muc: str, room_id: str) -> None:
        self.muc = muc
        self.room_id = room_id
        self.rejoin_task: asyncio.Task | None = None
        self.reset()

    def reset(self) -> None:
        self.listener_joined = False
        self.listener_nick: str | None = None
        self.listener_waiter: asyncio.Future | None = None
        self.remote: dict[str, tuple[str, str | None]] = {}  # nick -> (puppet, bare JID|None)
        self.ours: dict[str, str] = {}  # nick -> Nexa user (joined or joining)
        self.joined: dict[str, str] = {}  # Nexa user -> nick
        self.waiters: dict[str, asyncio.Future] = {}  # Nexa user -> pending join
        self.locks: dict[str, asyncio.Lock] = {}


class MucManager:
    def __init__(self, bridge: "XmppBridge") -> None:
        self.b = bridge
        self.rooms: dict[str, MucRoom] = {}
        self.by_room: dict[str, str] = {}

    @property
    def listener_jid(self) -> str:
        return f"{self.b.registration.sender_localpart}@{self.b.component}/bridge"

    def add(self, muc: str, room_id: str) -> MucRoom:
        room = self.rooms.get(muc)
        if room is None or room.room_id != room_id:
            room = MucRoom(muc, room_id)
            self.rooms[muc] = room
        self.by_room[room_id] = muc
        return room

    def reset_all(self) -> None:
        for room in self.rooms.values():
            if room.rejoin_task is not None:
                room.rejoin_task.cancel()
                room.rejoin_task = None
            for fut in [room.listener_waiter, *room.waiters.values()]:
                if fut is not None and not fut.done():
                    fut.set_exception(NotConnected("connection lost"))
            room.reset()

    def puppet_for(self, muc: str, nick: str, real_jid: str | None,
                   occupant_id: str | None) -> tuple[str, str | None]:
        """(puppet user ID, bare JID or None) for an occupant of muc."""
        bare = bare_jid(real_jid) if real_jid else None
        prefix = self.b.settings.puppet_prefix
        if bare and bare.split("@", 1)[1] != self.b.component:
            return self.b.client.user_id(puppet_localpart(prefix, bare)), bare
        key = f"id:{occupant_id}" if occupant_id else f"nick:{nick}"
        return self.b.client.user_id(occupant_puppet_localpart(prefix, muc, key)), None

    async def known_occupant(self, muc: str, occupant_id: str | None
                             ) -> tuple[str, str | None] | None:
        """The puppet of a (possibly departed) occupant whose real JID a presence showed."""
        if not occupant_id:
            return None
        found = await self.b.store.get_json("xmpp_occupant_ids", f"{muc}|{occupant_id}")
        return (found[0], found[1]) if isinstance(found, list) and len(found) == 2 else None

    # --- the listener ------------------------------------------------------------------------

    async def join_listener(self, room: MucRoom) -> None:
        state = await self.b.xstore.muc_state(room.muc)
        last = state.get("last_ms")
        if last:
            since, maxstanzas = last - HISTORY_OVERLAP_MS, self.b.settings.history_max_stanzas
        else:
            since, maxstanzas = None, 0  # first join: the past stays where it is
        base = self.b.settings.bot_nick
        for attempt in range(5):
            nick = base if attempt == 0 else f"{base} ({attempt + 1})"
            fut = asyncio.get_running_loop().create_future()
            room.listener_waiter = fut
            room.listener_nick = nick
            self.b.conn.send(join_presence(frm=self.listener_jid, to=f"{room.muc}/{nick}",
                                           id="join-" + secrets.token_hex(6),
                                           maxstanzas=maxstanzas, since_ms=since))
            try:
                err = await asyncio.wait_for(fut, self.b.settings.response_timeout_s)
            finally:
                room.listener_waiter = None
            if err is None:
                log.info("joined %s as %r", room.muc, nick)
                return
            if err.condition != "conflict":
                raise JoinFailed(err.condition)
        raise JoinFailed("conflict")

    def schedule_rejoin(self, room: MucRoom, delay: float = 2.0) -> None:
        if room.rejoin_task is not None and not room.rejoin_task.done():
            return

        async def rejoin() -> None:
            wait = delay
            while self.b.conn.is_connected and not room.listener_joined:
                await asyncio.sleep(wait)
                try:
                    await self.join_listener(room)
                    return
                except JoinFailed as e:
                    log.warning("cannot rejoin %s: %s", room.muc, e.condition)
                except (NotConnected, asyncio.TimeoutError):
                    pass
                wait = min(wait * 2, 120)

        room.rejoin_task = asyncio.get_running_loop().create_task(rejoin())

    # --- Nexa users' occupants ---------------------------------------------------------------

    def user_jid(self, user_id: str) -> str:
        return self.b.user_jid(user_id) + "/" + self.b.settings.resource

    async def ensure_occupant(self, muc: str, user_id: str, nick: str) -> str:
        """Join (or change nick) so user_id is in muc as nick, or as close to it as the room
        allows; returns the nick. JoinFailed, NotConnected or TimeoutError otherwise."""
        room = self.rooms[muc]
        lock = room.locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            current = room.joined.get(user_id)
            if current is not None and (current == nick or current.startswith(nick + " [")):
                return current
            changing = current is not None
            for attempt in range(5):
                want = nick if attempt == 0 else f"{nick} [m{'' if attempt == 1 else attempt}]"
                if room.remote.get(want):
                    continue  # taken by someone on XMPP
                fut = asyncio.get_running_loop().create_future()
                room.waiters[user_id] = fut
                room.ours[want] = user_id
                if changing:  # a nick change is a plain presence to the new nick
                    el = leave_presence(frm=self.user_jid(user_id), to=f"{muc}/{want}",
                                        id="nick-" + secrets.token_hex(6))
                    del el.attrib["type"]
                else:
                    el = join_presence(frm=self.user_jid(user_id), to=f"{muc}/{want}",
                                       id="join-" + secrets.token_hex(6), maxstanzas=0)
                self.b.conn.send(el)
                try:
                    err = await asyncio.wait_for(fut, self.b.settings.response_timeout_s)
                finally:
                    room.waiters.pop(user_id, None)
                if err is None:
                    return room.joined.get(user_id, want)
                if room.ours.get(want) == user_id:
                    del room.ours[want]
                if err.condition != "conflict":
                    raise JoinFailed(err.condition)
            raise JoinFailed("conflict")

    def leave_occupant(self, muc: str, user_id: str, nick: str | None = None) -> None:
        """Leave (also when this connection never joined: after a restart the room may still
        count the occupant from before, since stanzas to it are delivered, not bounced)."""
        room = self.rooms.get(muc)
        if room is None:
            return
        nick = room.joined.get(user_id) or nick
        if nick is None:
            return
        self.b.conn.send(leave_presence(frm=self.user_jid(user_id), to=f"{muc}/{nick}",
                                        id="leave-" + secrets.token_hex(6)))
        room.joined.pop(user_id, None)

    def is_ours(self, room: MucRoom, nick: str, real_jid: str | None) -> bool:
        if nick == room.listener_nick or nick in room.ours:
            return True
        bare = bare_jid(real_jid) if real_jid else None
        return bool(bare) and bare.split("@", 1)[1] == self.b.component

    # --- presences from MUCs -----------------------------------------------------------------

    async def on_presence(self, p: Presence) -> None:
        room_jid, _, nick = p.frm.partition("/")
        room = self.rooms.get(room_jid.lower())
        if room is None or not nick:
            return
        if p.to == self.listener_jid:
            await self._to_listener(room, nick, p)
            return
        user_id = jid_matrix_user(p.to.split("/", 1)[0], self.b.client.server_name or "",
                                  self.b.component)
        if user_id is not None:
            self._to_occupant(room, user_id, nick, p)

    def _to_occupant(self, room: MucRoom, user_id: str, nick: str, p: Presence) -> None:
        fut = room.waiters.get(user_id)
        if p.type == "error":
            if fut is not None and not fut.done():
                fut.set_result(p.error or Error(condition="undefined-condition"))
            return
        if "110" not in p.status_codes:
            return
        if p.type == "unavailable":
            if "303" in p.status_codes:
                return  # a nick change: the new nick's presence follows
            if room.joined.get(user_id) == nick:
                del room.joined[user_id]
            if room.ours.get(nick) == user_id:
                del room.ours[nick]
            if p.status_codes & {"301", "307", "321", "322", "332"}:
                log.warning("%s was removed from %s (status %s)", user_id, room.muc,
                            ",".join(sorted(p.status_codes)))
            return
        old = room.joined.get(user_id)
        if old is not None and old != nick and room.ours.get(old) == user_id:
            del room.ours[old]
        room.joined[user_id] = nick
        room.ours[nick] = user_id
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _to_listener(self, room: MucRoom, nick: str, p: Presence) -> None:
        if nick == room.listener_nick or "110" in p.status_codes:
            await self._listener_self(room, nick, p)
            return
        if p.type == "error" or self.is_ours(room, nick, p.real_jid):
            return
        inbound = self.b.inbound
        if p.type == "available":
            known = room.remote.get(nick)
            puppet, bare = self.puppet_for(room.muc, nick, p.real_jid, p.occupant_id)
            if known is not None and known[0] == puppet:
                return  # a status update
            room.remote[nick] = (puppet, bare)
            if p.occupant_id and bare:  # so their messages in history find them after they left
                await self.b.store.put_json("xmpp_occupant_ids", f"{room.muc}|{p.occupant_id}",
                                            [puppet, bare])
            await inbound.queue_membership(room, "join", puppet, nick, bare)
        elif p.type == "unavailable":
            known = room.remote.pop(nick, None)
            puppet = known[0] if known else self.puppet_for(room.muc, nick, p.real_jid,
                                                            p.occupant_id)[0]
            bare = known[1] if known else None
            if "303" in p.status_codes and p.new_nick:
                new_puppet, new_bare = self.puppet_for(room.muc, p.new_nick, p.real_jid,
                                                       p.occupant_id)
                room.remote[p.new_nick] = (new_puppet, new_bare)
                if new_puppet == puppet:
                    await inbound.queue_membership(room, "nick", puppet, p.new_nick, bare)
                    return
                await inbound.queue_membership(room, "leave", puppet, nick, bare)
                await inbound.queue_membership(room, "join", new_puppet, p.new_nick, new_bare)
                return
            if puppet not in (v[0] for v in room.remote.values()):
                await inbound.queue_membership(room, "leave", puppet, nick, bare)

    async def _listener_self(self, room: MucRoom, nick: str, p: Presence) -> None:
        fut = room.listener_waiter
        if p.type == "error":
            if fut is not None and not fut.done():
                fut.set_result(p.error or Error(condition="undefined-condition"))
            return
        if p.type == "unavailable":
            if "303" in p.status_codes and p.new_nick:
                room.listener_nick = p.new_nick
                return
            room.listener_joined = False
            log.warning("the bridge left %s (status %s); rejoining", room.muc,
                        ",".join(sorted(p.status_codes)) or "none")
            if "301" not in p.status_codes:
                self.schedule_rejoin(room)
            return
        if "201" in p.status_codes:
            # We created the room: accept the default configuration (persistent), in a task,
            # since the answer arrives through this same stanza loop.
            asyncio.get_running_loop().create_task(self._configure(room))
        was = room.listener_joined
        room.listener_joined = True
        room.listener_nick = nick
        if not was:
            # From now on the room's history covers a gap (a first join asks for none).
            async with self.b.store.transaction() as db:
                await self.b.xstore.touch_muc_in(db, room.muc, int(time.time() * 1000))
            # The room listed its occupants before this self-presence: puppets of people who
            # left while the bridge was away leave the Matrix room too.
            await self.b.inbound.queue_reconcile(room, [v[0] for v in room.remote.values()])
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _configure(self, room: MucRoom) -> None:
        try:
            await self.b.conn.iq(instant_room_config(frm=self.listener_jid, to=room.muc,
                                                     id="cfg-" + secrets.token_hex(6)))
            log.info("created the MUC %s", room.muc)
        except Exception as e:
            log.warning("configuring the new room %s failed: %r", room.muc, e)

    async def join_all_occupants(self) -> None:
        """After (re)connecting: every Nexa user who should be in a MUC joins it."""
        for muc, room in list(self.rooms.items()):
            for user_id, nick in await self.b.xstore.occupants(muc):
                try:
                    await self.ensure_occupant(muc, user_id, nick)
                except JoinFailed as e:
                    log.warning("%s cannot join %s: %s", user_id, muc, e.condition)
