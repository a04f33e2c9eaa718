"""Presence: online / unavailable / offline with an optional status message.

Rows carry a position on the presence stream. /sync calls `touch` to keep a user online; that
writes at most once a minute per user. A background sweep (started on first use) turns users
offline when nothing has touched them for OFFLINE_AFTER_MS, so clients that vanish go offline.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from homeserver.storage.transactions import in_transaction

from homeserver.errors import forbidden, invalid_param
from homeserver.handlers.lru import LRU
from homeserver.storage import state as state_store
from homeserver.storage import userdata as store
from homeserver.types import is_valid_user_id, now_ms

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

STATES = ("online", "unavailable", "offline")
MAX_STATUS_LENGTH = 1024
TOUCH_INTERVAL_MS = 60_000
OFFLINE_AFTER_MS = 3 * 60_000
CURRENTLY_ACTIVE_MS = 5 * 60_000
SWEEP_INTERVAL_S = 60.0


def presence_content(row: dict[str, Any], now: int) -> dict[str, Any]:
    ago = max(0, now - int(row["last_active_ts"]))
    content: dict[str, Any] = {"presence": row["state"], "last_active_ago": ago,
                               "currently_active": row["state"] == "online"
                               and ago < CURRENTLY_ACTIVE_MS}
    if row.get("status_msg") is not None:
        content["status_msg"] = row["status_msg"]
    return content


class PresenceHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        # user_id -> (state, time of our last write): lets `touch` skip the database.
        self._recent: LRU = LRU(100_000)
        self._sweeper: asyncio.Task | None = None

    def current_position(self) -> int:
        return self.hs.ids.presence.visible

    # --- the client API --------------------------------------------------------------------

    async def get_status(self, requester: str, user_id: str) -> dict[str, Any]:
        if not is_valid_user_id(user_id):
            raise invalid_param("Not a valid user ID")
        if user_id != requester and not await state_store.users_sharing_rooms(requester, [user_id]):
            raise forbidden("You are not allowed to see their presence")
        row = await store.get_presence(user_id)
        if row is None:
            return {"presence": "offline"}
        return presence_content(row, now_ms())

    async def set_status(self, requester: str, user_id: str, presence: Any,
                         status_msg: Any = None) -> None:
        if user_id != requester:
            raise forbidden("You cannot set the presence state of another user")
        if presence not in STATES:
            raise invalid_param("presence must be one of " + ", ".join(STATES))
        if status_msg is not None and not isinstance(status_msg, str):
            raise invalid_param("status_msg must be a string")
        if status_msg is not None and len(status_msg) > MAX_STATUS_LENGTH:
            raise invalid_param(f"status_msg may be at most {MAX_STATUS_LENGTH} characters")
        await self._set([(user_id, presence, status_msg)])
        self._ensure_sweeper()

    # --- for /sync -------------------------------------------------------------------------

    async def touch(self, user_id: str) -> None:
        """Mark the user online because they are syncing; cheap when they already are."""
        now = now_ms()
        recent = self._recent.get_item(user_id)
        if recent is not None and recent[0] != "offline" and now - recent[1] < TOUCH_INTERVAL_MS:
            return
        self._ensure_sweeper()
        row = await store.get_presence(user_id)
        if row is None or row["state"] == "offline":
            await self._set([(user_id, "online", row["status_msg"] if row else None)])
        else:
            # Still online (or explicitly unavailable): refresh activity, no stream change.
            await store.touch_presence(user_id, now)
            self._recent.put(user_id, (row["state"], now))

    async def get_presence_for_sync(self, user_id: str, since: int | None,
                                    upto: int) -> list[dict[str, Any]]:
        """m.presence events of the user and everyone sharing a room with them, changed in
        (since, upto]; on an initial sync (since None) everyone who is not offline."""
        if since is not None and since >= upto:
            return []
        rows = await store.presence_for_sync(user_id, since, upto, include_offline=since is not None)
        now = now_ms()
        return [{"type": "m.presence", "sender": r["user_id"], "content": presence_content(r, now)}
                for r in rows]

    # --- writes ----------------------------------------------------------------------------

    async def _set(self, changes: list[tuple[str, str, str | None]]) -> None:
        """(user_id, state, status_msg) each at a new position; one transaction."""
        if not changes:
            return
        ids = self.hs.ids.presence
        now = now_ms()
        async with ids.lock:
            rows = [(u, st, msg, now, ids.next()) for u, st, msg in changes]
            async with in_transaction() as conn:
                await store.upsert_presence(rows, conn)
            ids.mark_visible(rows[-1][4])
        for u, st, _msg, _ts, _sid in rows:
            self._recent.put(u, (st, now))
        rooms = await store.joined_rooms_of([u for u, *_ in changes])
        for u, _st, _msg, _ts, sid in rows:
            self.hs.notifier.notify("presence", sid, rooms=rooms.get(u, []), users=[u])
        self.hs.appservices.ephemeral.on_presence(rows)  # receive_ephemeral services
        await self.hs.federation_edus.on_local_presence(rows)

    # --- going offline ---------------------------------------------------------------------

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("presence sweep failed")

    async def sweep(self) -> int:
        """Turn users offline whom nothing has touched lately; returns how many."""
        stale = await store.stale_presence(now_ms() - OFFLINE_AFTER_MS, self.hs.server_name)
        await self._set([(r["user_id"], "offline", r["status_msg"]) for r in stale])
        return len(stale)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except (asyncio.CancelledError, Exception):
                pass
            self._sweeper = None
