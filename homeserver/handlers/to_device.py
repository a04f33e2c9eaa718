"""Send-to-device messaging: PUT /sendToDevice and the m.direct_to_device EDU.

Each send takes one position on the to-device stream; its messages wait in `device_inbox`
until the recipient device syncs with a token past that position (so a lost /sync response
is simply delivered again). Sends are idempotent: (user, device, txnId) from clients and
(origin, sender, message_id) from other servers are recorded in the transaction that stores the
messages, and a repeat stores nothing.

Messages for devices that do not exist are dropped, as other servers do: the spec gives the
endpoint no way to report them, and failing the whole request would stop delivery to every
other recipient because one client had a stale device list. `*` means every device the user
has when the message is sent. Messages for other servers leave as m.direct_to_device EDUs
through the durable federation queue, queued before the local commit under message IDs
derived from the txnId, so a retried request is deduplicated by the receiver too.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

import orjson
from homeserver.storage.transactions import in_transaction

from homeserver.errors import MatrixError, bad_json, invalid_param
from homeserver.handlers.auth import Requester
from homeserver.handlers.lru import LRU
from homeserver.storage import e2e as store
from homeserver.types import is_valid_user_id, server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024  # one message's content, serialised
MAX_RECIPIENTS = 10_000  # (user, device) pairs named in one request
MAX_EDU_BYTES = 60 * 1024  # split outbound m.direct_to_device EDUs above this
SYNC_LIMIT = 100  # messages per /sync response


class ToDeviceHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        # (user, device) -> the highest position delivered to it and not yet deleted; 0 when
        # everything delivered has been deleted (then an acknowledgement deletes nothing and
        # is skipped); absent (a restart, an eviction) means unknown: delete to be sure.
        self._delivered: LRU = LRU(50_000)

    def current_position(self) -> int:
        return self.hs.ids.to_device.visible

    # --- validation ------------------------------------------------------------------------

    @staticmethod
    def _parse_messages(messages: Any, *, strict: bool) -> list[tuple[str, str, str]]:
        """[(user_id, device_id, content_json)]. strict (clients): any bad entry fails the
        request; otherwise (federation) bad entries are skipped."""
        out: list[tuple[str, str, str]] = []
        if not isinstance(messages, dict):
            if strict:
                raise bad_json("messages must be an object of user IDs to device maps")
            return out
        for user_id, by_device in messages.items():
            if not is_valid_user_id(user_id):
                if strict:
                    raise invalid_param(f"{user_id[:80]!r} is not a valid user ID")
                continue
            if not isinstance(by_device, dict):
                if strict:
                    raise bad_json(f"messages.{user_id} must map device IDs to contents")
                continue
            for device_id, content in by_device.items():
                problem = None
                if not device_id or len(device_id) > 255 or "\x00" in device_id:
                    problem = invalid_param(f"messages.{user_id}: invalid device ID")
                elif not isinstance(content, dict):
                    problem = bad_json(f"messages.{user_id}.{device_id[:80]} must be an object")
                else:
                    raw = orjson.dumps(content)
                    text = raw.decode()
                    if len(raw) > MAX_MESSAGE_BYTES:
                        problem = MatrixError(
                            413, "M_TOO_LARGE",
                            f"The message for {user_id} {device_id[:80]} is larger than "
                            f"{MAX_MESSAGE_BYTES} bytes")
                if problem is not None:
                    if strict:
                        raise problem
                    continue
                out.append((user_id, device_id, text))
                if len(out) > MAX_RECIPIENTS:
                    if strict:
                        raise MatrixError(413, "M_TOO_LARGE",
                                          f"At most {MAX_RECIPIENTS} recipients per request")
                    return out[:MAX_RECIPIENTS]
        return out

    # --- sending ---------------------------------------------------------------------------

    async def send(self, requester: Requester, event_type: str, txn_id: str,
                   messages: Any) -> None:
        if not event_type or len(event_type) > 255:
            raise invalid_param("The event type must be 1 to 255 characters")
        if not txn_id or len(txn_id) > 255:
            raise invalid_param("The transaction ID must be 1 to 255 characters")
        parsed = self._parse_messages(messages, strict=True)
        sender, device = requester.user_id, requester.device_id or ""
        if await store.get_to_device_txn("", sender, device, txn_id) is not None:
            return  # already done
        ours = self.hs.server_name
        remote: dict[str, list[tuple[str, str, str]]] = {}
        for item in parsed:
            if server_of(item[0]) != ours:
                remote.setdefault(server_of(item[0]), []).append(item)
        if remote:
            await self._queue_remote(sender, device, event_type, txn_id, remote)
        local = [item for item in parsed if server_of(item[0]) == ours]
        await self._deliver_local("", sender, device, txn_id, sender, event_type, local)

    async def _queue_remote(self, sender: str, device: str, event_type: str, txn_id: str,
                            remote: dict[str, list[tuple[str, str, str]]]) -> None:
        from homeserver.handlers.federation.transport import server_allowed

        fed = self.hs.config.federation
        fed_sender = getattr(self.hs, "federation_sender", None)
        if not fed.enabled or fed_sender is None:
            log.info("dropping to-device messages for other servers: federation is off")
            return
        for server, items in sorted(remote.items()):
            if not server_allowed(fed, server):
                continue
            chunks: list[dict[str, dict[str, Any]]] = [{}]
            size = 0
            for user_id, device_id, text in items:
                if size and size + len(text) > MAX_EDU_BYTES:
                    chunks.append({})
                    size = 0
                chunks[-1].setdefault(user_id, {})[device_id] = orjson.loads(text)
                size += len(text) + len(user_id) + len(device_id) + 8
            for i, chunk in enumerate(chunks):
                message_id = hashlib.sha256(
                    f"{sender}\n{device}\n{txn_id}\n{server}\n{i}".encode()).hexdigest()[:32]
                await fed_sender.queue_edu(server, {
                    "edu_type": "m.direct_to_device",
                    "content": {"sender": sender, "type": event_type,
                                "message_id": message_id, "messages": chunk}})

    async def _deliver_local(self, origin: str, txn_user: str, txn_device: str, txn_id: str,
                             sender: str, event_type: str,
                             items: list[tuple[str, str, str]]) -> None:
        """Store the messages for existing local devices and the transaction record, in one
        transaction; a repeat of the same transaction stores nothing."""
        users = sorted({u for u, _, _ in items})
        devices = await store.existing_devices(users) if users else {}
        rows: dict[tuple[str, str], str] = {}
        for user_id, device_id, text in items:
            have = devices.get(user_id, set())
            targets = sorted(have) if device_id == "*" else (
                [device_id] if device_id in have else [])
            for d in targets:
                rows[(user_id, d)] = text
        ids = self.hs.ids.to_device
        async with ids.lock:
            async with in_transaction() as conn:
                if await store.get_to_device_txn(origin, txn_user, txn_device, txn_id,
                                                 conn) is not None:
                    return
                pos = ids.next() if rows else ids.current
                await store.add_to_device_txn(origin, txn_user, txn_device, txn_id, pos, conn)
                if rows:
                    await store.add_inbox_messages(
                        [(pos, u, d, sender, event_type, text) for (u, d), text in rows.items()],
                        conn)
            if rows:
                ids.mark_visible(pos)
        if rows:
            self.hs.notifier.notify("to_device", pos, users=sorted({u for u, _ in rows}))

    async def on_edu(self, origin: str, content: dict) -> None:
        """An m.direct_to_device EDU: malformed parts are ignored, nothing raises."""
        sender = content.get("sender")
        event_type = content.get("type")
        message_id = content.get("message_id")
        if not is_valid_user_id(sender) or server_of(sender) != origin \
                or origin == self.hs.server_name:
            return
        if not isinstance(event_type, str) or not 0 < len(event_type) <= 255 \
                or "\x00" in event_type:
            return
        if not isinstance(message_id, str) or not 0 < len(message_id) <= 255 \
                or "\x00" in message_id:
            return
        ours = self.hs.server_name
        items = [i for i in self._parse_messages(content.get("messages"), strict=False)
                 if server_of(i[0]) == ours]
        await self._deliver_local(origin, sender, "", message_id, sender, event_type, items)

    # --- /sync -----------------------------------------------------------------------------

    async def acknowledge(self, user_id: str, device_id: str, upto: int) -> None:
        """The device synced with a token at `upto`: it has every message up to there."""
        key = (user_id, device_id)
        pending = self._delivered.get_item(key)
        if pending == 0:
            return
        await store.delete_inbox_messages(user_id, device_id, upto)
        if pending is None or upto >= pending:
            self._delivered.put(key, 0)

    async def get_for_sync(self, user_id: str, device_id: str, since: int | None,
                           upto: int) -> tuple[list[dict[str, Any]], int | None]:
        """Messages in (since, upto]; and the position reached when there were more than one
        response carries (else None: everything up to `upto` is in)."""
        after = since or 0
        if since is not None and upto <= since:
            return [], None
        rows = await store.get_inbox_messages(user_id, device_id, after, upto, SYNC_LIMIT + 1)
        reached = None
        if len(rows) > SYNC_LIMIT:
            # A position holds at most one message per device, so this cut is clean.
            rows = rows[:SYNC_LIMIT]
            reached = rows[-1]["stream_id"]
        if rows:
            key = (user_id, device_id)
            self._delivered.put(key, max(self._delivered.get_item(key) or 0,
                                         rows[-1]["stream_id"]))
        events = [{"type": r["type"], "sender": r["sender"],
                   "content": orjson.loads(r["content"])} for r in rows]
        return events, reached
