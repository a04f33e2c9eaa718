"""EDUs between servers: typing, read receipts and presence; to-device messages and device
list updates are handed to the to-device and device list handlers.

Outbound: the local typing, receipts and presence handlers call `on_local_typing`,
`on_local_receipt` and `on_local_presence` after a change; the EDU is queued (through the
federation sender) for every other server with a user joined to the room (presence: to a room
the user shares with them). Typing is kept in memory by the sender; receipts and presence
become durable queue rows before the call returns.

Inbound: `on_edu(origin, edu)` applies an EDU from a transaction. A server may only speak for
its own users, and only about rooms those users are joined to here. Malformed EDUs are ignored;
nothing here raises.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable

from homeserver.storage import federation_queue as queue
from homeserver.events.server_acl import server_allowed_by_acl
from homeserver.types import is_valid_room_id, is_valid_user_id, now_ms, server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MAX_EDUS_PER_TXN = 100
MAX_ITEMS_PER_EDU = 1000  # receipts / presence entries looked at in one EDU
IGNORED_EDU_TYPES: tuple[str, ...] = ()


class FederationEduHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    # --- helpers -------------------------------------------------------------------------------

    def _sender(self):
        fed = getattr(self.hs.config, "federation", None)
        if fed is not None and not getattr(fed, "enabled", True):
            return None
        return getattr(self.hs, "federation_sender", None)

    def _is_local(self, user_id: Any) -> bool:
        return isinstance(user_id, str) and server_of(user_id) == self.hs.server_name

    def _allowed(self, servers: Iterable[str]) -> list[str]:
        from homeserver.handlers.federation.transport import server_allowed

        fed = self.hs.config.federation
        return sorted(s for s in set(servers)
                      if s and s != self.hs.server_name and server_allowed(fed, s))

    async def remote_servers_in_room(self, room_id: str) -> list[str]:
        """Other servers with a user joined to the room (current state)."""
        ours = self.hs.server_name
        ids = await self.hs.state.current_state_ids(room_id)
        members = {sk: eid for (t, sk), eid in ids.items()
                   if t == "m.room.member" and server_of(sk) != ours}
        if not members:
            return []
        rows = await self.hs.state.get_events(members.values())
        return self._allowed(
            server_of(sk) for sk, eid in members.items()
            if eid in rows and (rows[eid].pdu.get("content") or {}).get("membership") == "join")

    # --- outbound ------------------------------------------------------------------------------

    async def on_local_typing(self, room_id: str, user_id: str, typing: bool,
                              timeout_ms: int | None = None) -> None:
        """A local user started or stopped typing (after the typing handler applied it)."""
        sender = self._sender()
        if sender is None or not self._is_local(user_id):
            return
        try:
            servers = await self.remote_servers_in_room(room_id)
            if servers:
                await sender.queue_edus(servers, {
                    "edu_type": "m.typing",
                    "content": {"room_id": room_id, "user_id": user_id, "typing": bool(typing)},
                })
        except Exception:
            log.exception("queueing typing EDU for %s in %s failed", user_id, room_id)

    async def on_local_receipt(self, room_id: str, receipt_type: str, user_id: str,
                               event_id: str, thread_id: str | None = None,
                               ts: int | None = None) -> None:
        """A local user's receipt was stored. Only public read receipts (m.read) federate."""
        sender = self._sender()
        if sender is None or receipt_type != "m.read" or not self._is_local(user_id):
            return
        try:
            servers = await self.remote_servers_in_room(room_id)
            if not servers:
                return
            data: dict[str, Any] = {"ts": ts if ts is not None else now_ms()}
            if thread_id:
                data["thread_id"] = thread_id
            await sender.queue_edus(servers, {
                "edu_type": "m.receipt",
                "content": {room_id: {"m.read": {user_id: {"event_ids": [event_id],
                                                           "data": data}}}},
            })
        except Exception:
            log.exception("queueing receipt EDU for %s in %s failed", user_id, room_id)

    async def on_local_presence(self, rows: Iterable[tuple]) -> None:
        """Presence changed: rows of (user_id, state, status_msg, last_active_ts, ...) as the
        presence handler writes them. Each local user's update goes to every server sharing a
        room with them."""
        sender = self._sender()
        if sender is None:
            return
        from homeserver.handlers.presence import presence_content

        try:
            now = now_ms()
            by_server: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
                user_id, state, status_msg, last_active_ts = row[0], row[1], row[2], row[3]
                if not self._is_local(user_id):
                    continue
                others = await queue.users_sharing_rooms_with(user_id)
                servers = self._allowed(server_of(u) for u in others)
                if not servers:
                    continue
                item = {"user_id": user_id, **presence_content(
                    {"state": state, "status_msg": status_msg,
                     "last_active_ts": last_active_ts}, now)}
                for s in servers:
                    by_server.setdefault(s, []).append(item)
            for s, items in by_server.items():
                await sender.queue_edu(s, {"edu_type": "m.presence",
                                           "content": {"push": items}})
        except Exception:
            log.exception("queueing presence EDUs failed")

    # --- inbound -------------------------------------------------------------------------------

    async def on_edus(self, origin: str, edus: Any) -> None:
        """The `edus` of an inbound transaction (after its PDUs were processed)."""
        if not isinstance(edus, list):
            return
        for edu in edus[:MAX_EDUS_PER_TXN]:
            await self.on_edu(origin, edu)

    async def on_edu(self, origin: str, edu: Any) -> None:
        try:
            if not isinstance(edu, dict):
                return
            etype = edu.get("edu_type")
            content = edu.get("content")
            if etype in IGNORED_EDU_TYPES:
                log.debug("ignoring %s EDU from %s", etype, origin)
                return
            if not isinstance(content, dict):
                log.debug("ignoring EDU without object content from %s", origin)
                return
            if etype == "m.typing":
                await self._typing(origin, content)
            elif etype == "m.receipt":
                await self._receipts(origin, content)
            elif etype == "m.presence":
                await self._presence(origin, content)
            elif etype == "m.direct_to_device":
                await self.hs.to_device.on_edu(origin, content)
            elif etype == "m.device_list_update":
                await self.hs.device_lists.on_device_list_update(origin, content)
            elif etype == "m.signing_key_update":
                await self.hs.device_lists.on_signing_key_update(origin, content)
            else:
                log.debug("ignoring unknown EDU type %r from %s", etype, origin)
        except Exception:
            log.exception("EDU from %s could not be applied", origin)

    async def _joined(self, room_id: Any, user_id: Any, origin: str) -> bool:
        """The user is one of origin's and joined to a room this server knows."""
        if not (is_valid_room_id(room_id) and is_valid_user_id(user_id)):
            return False
        if server_of(user_id) != origin or origin == self.hs.server_name:
            return False
        if not await self.hs.state.is_room_known(room_id):
            return False
        acl = await self.hs.state.current_state_event(room_id, "m.room.server_acl")
        if acl is not None and not server_allowed_by_acl(acl.pdu.get("content"), origin):
            return False  # the room's ACL bans this server's EDUs too
        return await self.hs.state.membership_of(room_id, user_id) == "join"

    async def _typing(self, origin: str, content: dict) -> None:
        room_id, user_id, typing = (content.get("room_id"), content.get("user_id"),
                                    content.get("typing"))
        if not isinstance(typing, bool) or not await self._joined(room_id, user_id, origin):
            log.debug("ignoring m.typing from %s for %r in %r", origin, user_id, room_id)
            return
        if typing:
            self.hs.typing.started(room_id, user_id)
        else:
            self.hs.typing.stopped(room_id, user_id)

    async def _receipts(self, origin: str, content: dict) -> None:
        seen = 0
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict):
                continue
            reads = by_type.get("m.read")  # the only receipt type that federates
            if not isinstance(reads, dict):
                continue
            for user_id, receipt in reads.items():
                seen += 1
                if seen > MAX_ITEMS_PER_EDU:
                    return
                if not isinstance(receipt, dict):
                    continue
                event_ids = receipt.get("event_ids")
                data = receipt.get("data") if isinstance(receipt.get("data"), dict) else {}
                thread_id = data.get("thread_id")
                if not isinstance(event_ids, list) or not event_ids \
                        or not all(isinstance(e, str) for e in event_ids[:10]):
                    continue
                if thread_id is not None and (not isinstance(thread_id, str) or not thread_id
                                              or len(thread_id) > 255):
                    continue
                if not await self._joined(room_id, user_id, origin):
                    log.debug("ignoring receipt from %s for %r in %r", origin, user_id, room_id)
                    continue
                ids = [e for e in event_ids[:10] if e.startswith("$") and len(e) <= 255]
                rows = await self.hs.state.get_events(ids) if ids else {}
                row = next((rows[e] for e in ids if e in rows and rows[e].room_id == room_id),
                           None)
                if row is None:
                    log.debug("receipt from %s for unknown event(s) %s", origin, ids)
                    continue
                await self.hs.receipts._store_receipt(user_id, room_id, "m.read", row,
                                                      thread_id or "")

    async def _presence(self, origin: str, content: dict) -> None:
        from homeserver.handlers.presence import MAX_STATUS_LENGTH, STATES
        from homeserver.storage import userdata

        push = content.get("push")
        if not isinstance(push, list):
            return
        latest: dict[str, tuple[str, str | None]] = {}
        for item in push[:MAX_ITEMS_PER_EDU]:
            if not isinstance(item, dict):
                continue
            user_id, state, msg = item.get("user_id"), item.get("presence"), item.get("status_msg")
            if not is_valid_user_id(user_id) or server_of(user_id) != origin \
                    or origin == self.hs.server_name or state not in STATES:
                continue
            if msg is not None and (not isinstance(msg, str) or len(msg) > MAX_STATUS_LENGTH
                                    or "\x00" in msg):
                msg = None
            latest[user_id] = (state, msg)
        if not latest:
            return
        # Only users who share a room with this server: nobody here could see the others.
        known = await queue.users_with_joined_rooms(list(latest))
        changes = []
        for user_id in sorted(known):
            state, msg = latest[user_id]
            current = await userdata.get_presence(user_id)
            if current is not None and current["state"] == state \
                    and current["status_msg"] == msg:
                # Unchanged: only keep it fresh (no stream change).
                await userdata.touch_presence(user_id, now_ms())
                continue
            changes.append((user_id, state, msg))
        if changes:
            await self.hs.presence._set(changes)
