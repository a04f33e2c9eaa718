"""Typing notifications: in memory, with expiry, on a stream of their own.

The stream position starts at the wall-clock time in ms when the process starts, so positions
keep increasing across restarts; a /sync token from before a restart (position below the
start) reports every room as changed once, which clears typing state clients still show.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from homeserver.errors import forbidden, invalid_param
from homeserver.types import now_ms

if TYPE_CHECKING:
    from homeserver.server import HomeServer

DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 120_000


class TypingHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._base = now_ms()
        self._pos = self._base
        self._typing: dict[str, dict[str, int]] = {}  # room_id -> user_id -> expiry (ms)
        self._room_pos: dict[str, int] = {}  # room_id -> position of its last change
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}

    # --- for /sync -------------------------------------------------------------------------

    def current_position(self) -> int:
        return self._pos

    def get_typing(self, room_id: str) -> list[str]:
        users = self._typing.get(room_id)
        if not users:
            return []
        now = now_ms()
        return sorted(u for u, expiry in users.items() if expiry > now)

    def rooms_changed_since(self, pos: int, room_ids: set[str]) -> set[str]:
        if pos < self._base:
            return set(room_ids)
        if pos >= self._pos:
            return set()
        return {r for r in room_ids if self._room_pos.get(r, 0) > pos}

    # --- the client API --------------------------------------------------------------------

    async def set_typing(self, requester: str, user_id: str, room_id: str, typing: bool,
                         timeout_ms: int | None = None) -> None:
        if user_id != requester:
            raise forbidden("Cannot set typing state for other users")
        if timeout_ms is not None and timeout_ms < 0:
            raise invalid_param("timeout must not be negative")
        if await self.hs.state.membership_of(room_id, user_id) != "join":
            raise forbidden("You are not joined to this room")
        if typing:
            self.started(room_id, user_id, timeout_ms)
        else:
            self.stopped(room_id, user_id)
        await self.hs.federation_edus.on_local_typing(room_id, user_id, typing, timeout_ms)

    # --- for other handlers (leaving a room, federation EDUs) ------------------------------

    def started(self, room_id: str, user_id: str, timeout_ms: int | None = None) -> None:
        timeout = min(DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms, MAX_TIMEOUT_MS)
        expiry = now_ms() + timeout
        users = self._typing.setdefault(room_id, {})
        was_typing = users.get(user_id, 0) > now_ms()
        users[user_id] = expiry
        old = self._timers.pop((room_id, user_id), None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[(room_id, user_id)] = loop.call_later(
            timeout / 1000, self._expire, room_id, user_id, expiry
        )
        if not was_typing:
            self._changed(room_id)

    def stopped(self, room_id: str, user_id: str) -> None:
        timer = self._timers.pop((room_id, user_id), None)
        if timer is not None:
            timer.cancel()
        users = self._typing.get(room_id)
        if users is None or user_id not in users:
            return
        was_typing = users.pop(user_id) > now_ms()
        if not users:
            del self._typing[room_id]
        if was_typing:
            self._changed(room_id)

    def _expire(self, room_id: str, user_id: str, expiry: int) -> None:
        users = self._typing.get(room_id)
        if users is None or users.get(user_id) != expiry:
            return  # renewed or stopped since
        self._timers.pop((room_id, user_id), None)
        del users[user_id]
        if not users:
            del self._typing[room_id]
        self._changed(room_id)

    def _changed(self, room_id: str) -> None:
        self._pos += 1
        self._room_pos[room_id] = self._pos
        self.hs.notifier.notify("typing", self._pos, rooms=[room_id])
        self.hs.appservices.ephemeral.on_typing(room_id)  # receive_ephemeral services

    def stop(self) -> None:
        """Cancel pending expiry timers (server shutdown)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
