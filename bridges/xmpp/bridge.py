"""The XMPP bridge: MUCs <-> rooms and direct chats, as an XMPP component (XEP-0114).

Nexa users appear on XMPP as `<localpart>@<component>` (joining MUCs under their display name),
XMPP users on Nexa as puppets in the registration's namespace. `to_xmpp.py` carries Matrix
events out through a durable outbox, `to_matrix.py` brings XMPP traffic in through a durable
inbox, `muc.py` keeps the bridge's occupants in the MUCs, `connection.py` keeps the component
connected, `thirdparty.py` answers the homeserver's third-party lookups.

Mappings live in the bridge database: MUC JID <-> room (kind "muc"), XMPP JID <-> puppet
("puppet"), "<jid>|<Matrix user>" <-> direct chat room ("dm").
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from typing import Any

from bridges.appservice.bridge import Bridge
from bridges.appservice.config import BridgeConfig, BridgeConfigError
from bridges.appservice.intent import MatrixRequestError, q
from bridges.appservice.tasks import cancel_tasks
from bridges.xmpp.config import RoomSection, XmppSection
from bridges.xmpp.connection import ComponentConnection, NotConnected
from bridges.xmpp.ids import (jid_of_puppet, localpart_of, matrix_user_jid, muc_of_portal_alias,
                              portal_alias, sanitize_nick)
from bridges.xmpp.muc import JoinFailed, MucManager, MucRoom
from bridges.xmpp.store import SCHEMA, XmppStore
from bridges.xmpp.thirdparty import register_thirdparty
from bridges.xmpp.to_matrix import Inbound
from bridges.xmpp.to_xmpp import Outbound

log = logging.getLogger(__name__)


class XmppBridge(Bridge):
    name = "xmpp"
    SCHEMA = SCHEMA

    def __init__(self, config: BridgeConfig) -> None:
        super().__init__(config)
        self.settings: XmppSection = config.section("xmpp", XmppSection)
        if logging.getLogger("aiosqlite").level == logging.NOTSET:
            logging.getLogger("aiosqlite").setLevel(logging.INFO)  # one line per query is noise
        if "xmpp" not in (self.registration.protocols or []):
            log.warning("the registration does not list 'xmpp' in protocols: the homeserver "
                        "will not ask this bridge about XMPP users and rooms")
        c = self.settings.component
        self.component = c.jid
        self.media_base = self.settings.media_url or config.homeserver.url
        self.xstore = XmppStore(self.store)
        self.mucs = MucManager(self)
        self.inbound = Inbound(self)
        self.outbound = Outbound(self)
        self.dm_by_room: dict[str, str] = {}
        self.ready = asyncio.Event()  # connected, and the listener is in the MUCs
        self.conn = ComponentConnection(
            jid=c.jid, secret=c.secret, host=c.host, port=c.port,
            server_domain=c.server_domain or c.jid, on_stanza=self.inbound.on_stanza,
            on_connected=self._on_connected, on_disconnected=self._on_disconnected,
            base_ms=self.settings.reconnect.base_ms, max_ms=self.settings.reconnect.max_ms,
            ping_interval_s=self.settings.ping_interval_s,
            response_timeout_s=self.settings.response_timeout_s)
        self.server.user_query = self._query_user
        self.server.alias_query = self._query_alias
        register_thirdparty(self)
        self._tasks: list[asyncio.Task] = []
        self._portal_lock = asyncio.Lock()
        if self.client.server_name:  # known now: refuse a bad config before starting anything
            self._check_namespaces()

    def user_jid(self, user_id: str) -> str:
        return matrix_user_jid(user_id, self.client.server_name or "", self.component)

    # --- lifecycle ---------------------------------------------------------------------------

    def _check_namespaces(self) -> None:
        self.require_puppet_prefix("xmpp.puppet_prefix", self.settings.puppet_prefix)
        if self.settings.portal_domains or any(r.room is None for r in self.settings.rooms):
            alias = f"#{self.settings.alias_prefix}probe:{self.client.server_name}"
            if not any(re.match(n.regex, alias) for n in self.registration.namespaces.aliases):
                raise BridgeConfigError(f"xmpp.alias_prefix: {alias} is not in the "
                                        "registration's aliases namespace (needed for portal "
                                        "rooms)")

    async def on_start(self) -> None:
        self._check_namespaces()
        await self.xstore.prune()
        for key, room_id in await self.store.mappings("dm"):
            self.dm_by_room[room_id] = key
        for muc, room_id in await self.store.mappings("muc"):
            self.mucs.add(muc, room_id)

    async def on_listening(self) -> None:
        # Joining rooms makes the homeserver send transactions, so only once they are heard.
        for section in self.settings.rooms:
            try:
                await self._setup_room(section)
            except (MatrixRequestError, BridgeConfigError) as e:
                log.error("cannot bridge %s to %s: %s", section.muc, section.room or "a portal",
                          e)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.inbound.run(), name="xmpp-inbox"),
                       loop.create_task(self.outbound.run(), name="xmpp-outbox")]
        self.conn.start()

    async def on_stop(self) -> None:
        # Let a row in flight finish (its stanza acknowledged by the server, its event posted)
        # before the stream closes, so a clean restart repeats nothing.
        for worker in (self.outbound, self.inbound):
            worker.stopping = True
            worker.wake.set()
        try:
            await asyncio.wait_for(asyncio.gather(self.outbound.idle.wait(),
                                                  self.inbound.idle.wait()),
                                   self.settings.response_timeout_s)
        except asyncio.TimeoutError:
            pass
        await cancel_tasks(self._tasks)
        self._tasks = []
        await self.conn.stop()
        for room in self.mucs.rooms.values():
            if room.rejoin_task is not None:
                room.rejoin_task.cancel()

    async def handle_event(self, event: dict[str, Any]) -> None:
        await self.outbound.handle_event(event)

    # --- the XMPP connection -----------------------------------------------------------------

    async def _on_connected(self) -> None:
        async def join(room: MucRoom) -> None:
            try:
                await self.mucs.join_listener(room)
            except JoinFailed as e:
                log.error("the bridge cannot join %s: %s", room.muc, e.condition)
            except asyncio.TimeoutError:
                log.warning("no answer joining %s; trying again later", room.muc)
                self.mucs.schedule_rejoin(room)

        await asyncio.gather(*(join(r) for r in list(self.mucs.rooms.values())))
        self.ready.set()
        self.outbound.wake.set()
        await self.mucs.join_all_occupants()

    def _on_disconnected(self) -> None:
        self.ready.clear()
        self.mucs.reset_all()

    # --- rooms -------------------------------------------------------------------------------

    async def _setup_room(self, section: RoomSection) -> None:
        existing = await self.store.matrix_id("muc", section.muc)
        if section.room is None:
            room_id = existing or await self.create_portal(section.muc)
        else:
            room_id = section.room
            if room_id.startswith("#"):
                res = await self.client.request("GET", f"/directory/room/{q(room_id)}")
                room_id = res["room_id"]
            await self.bot.ensure_joined(room_id)
        await self.bridge_muc(section.muc, room_id)

    async def create_portal(self, muc: str, *, lookup: bool = True) -> str:
        alias = portal_alias(self.settings.alias_prefix, muc, self.client.server_name or "")
        if lookup:  # not while answering the homeserver's query for this very alias
            try:
                res = await self.client.request("GET", f"/directory/room/{q(alias)}")
                room_id = res["room_id"]
                await self.bot.ensure_joined(room_id)
                return room_id
            except MatrixRequestError as e:
                if e.status != 404:
                    raise
        return await self.bot.create_room(
            room_alias_name=alias[1:].split(":", 1)[0], name=muc.split("@", 1)[0],
            topic=f"Bridged to the XMPP room {muc}", preset="public_chat",
            visibility="public")

    async def bridge_muc(self, muc: str, room_id: str) -> MucRoom:
        other = self.mucs.by_room.get(room_id)
        if other is not None and other != muc:
            raise BridgeConfigError(f"{room_id} is already bridged to {other}")
        await self.store.set_mapping("muc", muc, room_id)
        room = self.mucs.add(muc, room_id)
        await self._sync_members(muc, room_id)
        if self.conn.is_connected and not room.listener_joined:
            asyncio.get_running_loop().create_task(self._join_later(room))
        return room

    async def _join_later(self, room: MucRoom) -> None:
        try:
            await self.mucs.join_listener(room)
            for user_id, nick in await self.xstore.occupants(room.muc):
                await self.mucs.ensure_occupant(room.muc, user_id, nick)
        except (JoinFailed, NotConnected, asyncio.TimeoutError) as e:
            log.warning("joining %s failed: %r", room.muc, e)
            self.mucs.schedule_rejoin(room)

    async def _sync_members(self, muc: str, room_id: str) -> None:
        """Nexa members of the room (those who joined before the bridge saw it) get occupants."""
        res = await self.client.request("GET", f"/rooms/{q(room_id)}/joined_members")
        joined = res.get("joined") or {}
        wanted = {}
        for user_id, info in joined.items():
            if self.is_ours(user_id):
                continue
            name = info.get("display_name") if isinstance(info, dict) else None
            wanted[user_id] = sanitize_nick(name, localpart_of(user_id))
        for user_id, nick in await self.xstore.occupants(muc):
            if user_id not in wanted:
                # Left while the bridge was away: the MUC may still count them.
                await self.xstore.remove_occupant(muc, user_id)
                await self.outbound.queue.add("sync:" + secrets.token_hex(12), "leave",
                                              {"muc": muc, "user_id": user_id, "nick": nick})
        for user_id, nick in wanted.items():
            await self.xstore.set_occupant(muc, user_id, nick)

    async def set_dm(self, key: str, room_id: str) -> None:
        old = await self.store.matrix_id("dm", key)
        if old is not None:
            self.dm_by_room.pop(old, None)
        await self.store.set_mapping("dm", key, room_id)
        self.dm_by_room[room_id] = key

    async def drop_dm(self, key: str, room_id: str) -> None:
        if await self.store.matrix_id("dm", key) == room_id:
            await self.store.delete_mapping("dm", key)
        self.dm_by_room.pop(room_id, None)

    # --- queries from the homeserver ---------------------------------------------------------

    async def _query_user(self, user_id: str) -> bool:
        jid = jid_of_puppet(self.settings.puppet_prefix, user_id, self.client.server_name or "")
        if jid is None:
            return False
        try:
            await self.inbound.puppet(user_id, None, jid)
        except MatrixRequestError as e:
            log.warning("cannot create the puppet %s: %s", user_id, e)
            return False
        return True

    async def _query_alias(self, alias: str) -> bool:
        muc = muc_of_portal_alias(self.settings.alias_prefix, alias,
                                  self.client.server_name or "")
        if muc is None:
            return False
        async with self._portal_lock:  # two joins at once make one room
            try:
                if muc in self.mucs.rooms:  # bridged already: the alias leads to that room
                    try:
                        await self.client.request("PUT", f"/directory/room/{q(alias)}",
                                                  {"room_id": self.mucs.rooms[muc].room_id})
                    except MatrixRequestError as e:
                        if e.status != 409:  # 409: made by a query just before this one
                            raise
                    return True
                if muc.split("@", 1)[1] not in self.settings.portal_domains:
                    return False
                room_id = await self.create_portal(muc, lookup=False)
                await self.bridge_muc(muc, room_id)
            except (MatrixRequestError, BridgeConfigError) as e:
                log.warning("cannot open a portal to %s: %s", muc, e)
                return False
        return True

    async def location_alias(self, muc: str) -> str | None:
        """An alias a client can join to reach muc: the configured one, the bridged room's
        canonical alias, or the portal alias (made on demand when the homeserver asks)."""
        for r in self.settings.rooms:
            if r.muc == muc and r.room and r.room.startswith("#"):
                return r.room
        portal = portal_alias(self.settings.alias_prefix, muc, self.client.server_name or "")
        room = self.mucs.rooms.get(muc)
        if room is not None:
            try:
                state = await self.bot.get_state(room.room_id, "m.room.canonical_alias") or {}
            except MatrixRequestError:
                state = {}
            if isinstance(state.get("alias"), str):
                return state["alias"]
            return portal if self._portal_aliases_ok() else None
        if muc.split("@", 1)[1] in self.settings.portal_domains:
            return portal
        return None

    def _portal_aliases_ok(self) -> bool:
        alias = f"#{self.settings.alias_prefix}probe:{self.client.server_name}"
        return any(re.match(n.regex, alias) for n in self.registration.namespaces.aliases)
