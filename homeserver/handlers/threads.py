"""Threads: the list of a room's threads (`/rooms/{roomId}/threads`), and the thread summary
bundled with a thread's root (`unsigned["m.relations"]["m.thread"]`: the latest reply, the
number of replies, whether the reader took part) there and on the read paths."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.errors import MatrixError
from homeserver.handlers.auth import Requester
from homeserver.handlers.visibility import filter_for_user, format_events
from homeserver.storage import events as event_store

if TYPE_CHECKING:
    from homeserver.server import HomeServer

MAX_LIMIT = 100


class ThreadsHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def list(self, requester: Requester, room_id: str, participated_only: bool,
                   from_token: str | None, limit: int) -> dict[str, Any]:
        user_id = requester.user_id
        bound = await self.hs.messages.read_bounds(user_id, room_id)
        before = _parse_token(from_token)
        chunk: list[dict[str, Any]] = []
        next_before: int | None = None
        for _ in range(5):  # pages whose roots the reader may not see are skipped
            want = min(limit - len(chunk), MAX_LIMIT)
            threads = await event_store.get_threads(
                room_id, user_id, before=before, bound=bound,
                participated_only=participated_only, limit=want + 1)
            more = len(threads) > want
            threads = threads[:want]
            chunk += await self._summaries(requester, threads)
            if not threads:
                break
            before = threads[-1]["latest"]
            if not more:
                next_before = None
                break
            next_before = before
            if len(chunk) >= limit:
                break
        out: dict[str, Any] = {"chunk": chunk}
        if next_before is not None:
            out["next_batch"] = str(next_before)
        return out

    async def _summaries(self, requester: Requester, threads: list[dict[str, Any]]
                         ) -> list[dict[str, Any]]:
        """The visible roots, formatted, each with its thread summary."""
        hs = self.hs
        rows = await hs.state.get_events(t["root"] for t in threads)
        roots = await filter_for_user(hs, requester.user_id,
                                      [rows[t["root"]] for t in threads if t["root"] in rows])
        events = await format_events(hs, roots, requester.user_id, requester.device_id)
        await _attach(hs, requester, events, threads)
        return events

    async def bundle(self, requester: Requester, events: list[dict[str, Any]],
                     bound: int | None) -> list[dict[str, Any]]:
        """Formatted events, those that are thread roots given their thread summary (the
        read paths: /messages, /context, /event). One query for all of them."""
        if events:
            threads = await event_store.get_thread_summaries(
                [e["event_id"] for e in events], requester.user_id, bound)
            if threads:
                await _attach(self.hs, requester, events, threads)
        return events


async def _attach(hs: HomeServer, requester: Requester, events: list[dict[str, Any]],
                  threads: list[dict[str, Any]]) -> None:
    """unsigned["m.relations"]["m.thread"] = {latest_event, count, current_user_participated}
    on each event that is one of these threads' root."""
    by_root = {t["root"]: t for t in threads}
    latest_ids = await event_store.event_ids_at([t["latest"] for t in threads])
    rows = await hs.state.get_events(latest_ids.values())
    visible = await filter_for_user(hs, requester.user_id, list(rows.values()))
    latest = dict(zip((r.event_id for r in visible), await format_events(
        hs, visible, requester.user_id, requester.device_id)))
    for event in events:
        t = by_root.get(event["event_id"])
        if t is None:
            continue
        summary: dict[str, Any] = {"count": t["count"],
                                   "current_user_participated": bool(t["mine"])}
        reply = latest.get(latest_ids.get(t["latest"], ""))
        if reply is not None:
            summary["latest_event"] = reply
        event.setdefault("unsigned", {}).setdefault("m.relations", {})["m.thread"] = summary


def _parse_token(token: str | None) -> int | None:
    if token is None:
        return None
    try:
        value = int(token)
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", "Unknown pagination token") from None
    if not 0 <= value < 2**63:  # a stream position (a 64-bit column)
        raise MatrixError(400, "M_INVALID_PARAM", "Unknown pagination token")
    return value
