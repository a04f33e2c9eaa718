"""Ephemeral data for application services that asked for it (`receive_ephemeral`, MSC2409).

The typing, receipts and presence handlers tell this queue what changed (`on_typing`,
`on_receipt`, `on_presence`: synchronous, and free when no service opted in). The changes wait
in memory only until one writer task has worked out which services care and written one
`appservice_ephemeral` row per (service, key) — typing per room, a receipt per room, user and
thread, presence per user — replacing any row still queued under that key, so a service that is
down costs one row per key, not one per change. The sender then puts the rows in the next
transaction (`ephemeral`, and `de.sorunome.msc2409.ephemeral` for bridges written against the
MSC), stored with it like its events, and resent as stored until acknowledged.

Typing is read when the row is written, so a burst of changes in a room becomes one row with
the latest state. Private receipts never leave the server.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
from typing import TYPE_CHECKING, Any, Iterable

import orjson

from homeserver.handlers.appservice.registration import AppService
from homeserver.storage import appservice as store
from homeserver.types import now_ms

if TYPE_CHECKING:
    from homeserver.handlers.appservice.handler import AppServiceHandler
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

UNSTABLE_EPHEMERAL = "de.sorunome.msc2409.ephemeral"
MAX_EPHEMERAL_PER_TXN = 200  # rows per transaction (the spec sets no limit)
ERROR_RETRY_S = 1.0


def coalesce_key(*parts: str) -> str:
    """What a newer value replaces, as a fixed-length key (room and user IDs can be long)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def merge_ephemeral(edus: Iterable[dict]) -> list[dict]:
    """The EDUs of one transaction: receipts of one room folded into one m.receipt; typing
    and presence pass as they are (already one per room / user)."""
    out: list[dict] = []
    receipts: dict[str, dict] = {}
    for edu in edus:
        if edu.get("type") != "m.receipt":
            out.append(edu)
            continue
        room_id = edu.get("room_id")
        merged = receipts.get(room_id)
        if merged is None:
            merged = receipts[room_id] = {"type": "m.receipt", "room_id": room_id,
                                          "content": {}}
            out.append(merged)
        for event_id, by_type in (edu.get("content") or {}).items():
            target = merged["content"].setdefault(event_id, {})
            for rtype, by_user in by_type.items():
                target.setdefault(rtype, {}).update(by_user)
    return out


class EphemeralQueue:
    def __init__(self, hs: HomeServer, handler: AppServiceHandler) -> None:
        self.hs = hs
        self.handler = handler
        self._typing: dict[str, None] = {}  # rooms whose typing changed (ordered set)
        # (room_id, user_id, thread_id) -> (event_id, ts)
        self._receipts: dict[tuple[str, str, str], tuple[str, int]] = {}
        self._presence: dict[str, dict[str, Any]] = {}  # user_id -> presence row
        self._task: asyncio.Task | None = None

    def _opted_in(self) -> list[AppService]:
        return [s for s in self.handler.services.values() if s.receive_ephemeral and s.url]

    @property
    def enabled(self) -> bool:
        return any(s.receive_ephemeral and s.url for s in self.handler.services.values())

    # --- hooks (called by the typing, receipts and presence handlers) ------------------------

    def on_typing(self, room_id: str) -> None:
        if self.enabled:
            self._typing[room_id] = None
            self._kick()

    def on_receipt(self, room_id: str, receipt_type: str, user_id: str, event_id: str,
                   thread_id: str) -> None:
        if receipt_type == "m.read" and self.enabled:
            self._receipts[(room_id, user_id, thread_id)] = (event_id, now_ms())
            self._kick()

    def on_presence(self, rows: Iterable[tuple]) -> None:
        """rows: (user_id, state, status_msg, last_active_ts, stream_id), as stored."""
        if not self.enabled:
            return
        for user_id, state, msg, ts, *_ in rows:
            self._presence[user_id] = {"state": state, "status_msg": msg, "last_active_ts": ts}
        self._kick()

    # --- the writer task ---------------------------------------------------------------------

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._write_all(), name="appservice-ephemeral",
                context=contextvars.Context())  # never a request's context variables

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what is still in memory (the database is open until after this)."""
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except (asyncio.TimeoutError, Exception):
                task.cancel()
        self._task = None

    async def _write_all(self) -> None:
        token = self.hs.db.activate()
        try:
            while self._typing or self._receipts or self._presence:
                typing, self._typing = self._typing, {}
                receipts, self._receipts = self._receipts, {}
                presence, self._presence = self._presence, {}
                try:
                    await self._write(typing, receipts, presence)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("appservice: cannot queue ephemeral data; trying again")
                    # Put back what is not superseded by a newer change meanwhile.
                    for k in typing:
                        self._typing.setdefault(k, None)
                    for k, v in receipts.items():
                        self._receipts.setdefault(k, v)
                    for k, v in presence.items():
                        self._presence.setdefault(k, v)
                    await asyncio.sleep(ERROR_RETRY_S)
        finally:
            self.hs.db.deactivate(token)

    async def _write(self, typing: dict[str, None],
                     receipts: dict[tuple[str, str, str], tuple[str, int]],
                     presence: dict[str, dict[str, Any]]) -> None:
        from homeserver.handlers.presence import presence_content

        services = self._opted_in()
        if not services:
            return
        interest = self.handler.interest
        rows: list[tuple[str, str, str]] = []

        def add(targets: list[AppService], key: str, edu: dict) -> None:
            if targets:
                raw = orjson.dumps(edu).decode()
                rows.extend((s.id, key, raw) for s in targets)

        for room_id in typing:
            edu = {"type": "m.typing", "room_id": room_id,
                   "content": {"user_ids": self.hs.typing.get_typing(room_id)}}
            add(await interest.for_room(room_id, services), coalesce_key("typing", room_id),
                edu)
        for (room_id, user_id, thread_id), (event_id, ts) in receipts.items():
            data: dict[str, Any] = {"ts": ts}
            if thread_id:
                data["thread_id"] = thread_id
            edu = {"type": "m.receipt", "room_id": room_id,
                   "content": {event_id: {"m.read": {user_id: data}}}}
            add(await interest.for_room(room_id, services),
                coalesce_key("receipt", room_id, user_id, thread_id), edu)
        now = now_ms()
        for user_id, row in presence.items():
            edu = {"type": "m.presence", "sender": user_id,
                   "content": presence_content(row, now)}
            add(await interest.for_presence(user_id, services),
                coalesce_key("presence", user_id), edu)
        if rows:
            await store.queue_ephemeral(rows)
            self.handler.sender.wake(list(dict.fromkeys(r[0] for r in rows)))
