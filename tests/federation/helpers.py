"""Waiting for federated events through the real /sync of each server."""

from __future__ import annotations

import time

from tests.client import User


class Timeline:
    """Follows one user's /sync and collects room timeline events."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.since: str | None = None
        self.events: dict[str, list[dict]] = {}
        self.ephemeral: dict[str, list[dict]] = {}

    async def poll(self, timeout_ms: int = 2000) -> None:
        res = await self.user.sync(self.since, timeout=timeout_ms if self.since else 0)
        self.since = res["next_batch"]
        for room_id, room in res["rooms"]["join"].items():
            self.events.setdefault(room_id, []).extend(room["timeline"]["events"])
            self.ephemeral.setdefault(room_id, []).extend(room.get("ephemeral", {}).get("events", []))

    def bodies(self, room_id: str) -> list[str]:
        return [e["content"].get("body") for e in self.events.get(room_id, [])
                if e["type"] == "m.room.message" and "body" in e["content"]]

    async def wait_for(self, pred, what: str, limit_s: float = 30) -> None:
        """Long-poll /sync until pred(self) holds (bounded)."""
        deadline = time.monotonic() + limit_s
        while not pred(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user.user_id} never saw {what}")
            await self.poll()


async def state_ids(user: User, room_id: str) -> dict:
    r = await user.get(f"/rooms/{room_id}/state")
    assert r.status == 200, r
    return {(e["type"], e["state_key"]): e["event_id"] for e in r.json}
