"""Delivery of notifications to push gateways (push gateway API, POST /_matrix/push/v1/notify).

A DeliveryQueue (delivery_queue.py) with one target per pusher. There is no queue table: the
notifications are rows written with their events, and each pusher remembers how far it has
been pushed (pushers.last_stream_ordering). The next batch is the user's first notification
after that position, one event per request as the gateway API has it; it is posted again with
backoff until the gateway answers 2xx, and only then does the position move on, in the
database, so a restart resends what was not acknowledged. A gateway that lists the pushkey as
`rejected` loses the pusher. Notifications already read (a read receipt at or after them) or
older than push.give_up_after_s are skipped, not pushed. The gateway API has no transaction
IDs, so each retry builds its request again: with the unread count of then, and nothing the
user has read meanwhile (on another device while the gateway was down).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from homeserver.handlers.delivery_queue import DROPPED, RETRY, SENT, DeliveryQueue, Target, \
    new_txn_id
from homeserver.storage import notifications as notes
from homeserver.storage import pushers as store
from homeserver.storage.events import EventRow
from homeserver.types import now_ms

if TYPE_CHECKING:
    from homeserver.handlers.pushers import PusherHandler
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

LOOKAHEAD = 20  # notifications read at once while skipping those not worth pushing
MAX_ANSWER_BYTES = 65_536


@dataclass
class _Push:
    txn_id: str  # for log lines only
    pusher_id: int
    stream_ordering: int
    url: str
    pushkey: str
    body: bytes
    rejected: bool = False


def tweaks_of(actions: Any) -> dict[str, Any]:
    """The set_tweak actions as the gateway's `tweaks` (highlight without a value is true)."""
    out: dict[str, Any] = {}
    for a in actions if isinstance(actions, list) else ():
        if isinstance(a, dict) and isinstance(a.get("set_tweak"), str):
            out[a["set_tweak"]] = a.get("value", True) if a["set_tweak"] == "highlight" \
                else a.get("value")
    return out


class PushSender(DeliveryQueue[_Push]):
    kind = "push sender"

    def __init__(self, hs: HomeServer, handler: PusherHandler) -> None:
        cfg = hs.config.push
        super().__init__(hs, cfg.retry_base_ms, cfg.retry_max_ms)
        self.handler = handler
        self.timeout_s = cfg.request_timeout_s
        self.give_up_ms = cfg.give_up_after_s * 1000

    # --- DeliveryQueue -----------------------------------------------------------------------

    def _new_target(self, key: str) -> Target[_Push] | None:
        return Target(key) if self.handler.exists(int(key)) else None

    async def _targets_with_work(self) -> list[str]:
        return [str(i) for i in await store.pushers_with_work()]

    async def _stored_backoff(self, key: str) -> tuple[int, int] | None:
        row = await store.get_pusher(int(key))
        return (int(row["retry_at_ts"] or 0), int(row["backoff_ms"] or 0)) if row else None

    async def _store_backoff(self, key: str, retry_at_ms: int, backoff_ms: int) -> None:
        await store.set_backoff(int(key), retry_at_ms, backoff_ms)

    def _is_stale(self, push: _Push) -> bool:
        return True  # a retry is built again (see the module docstring)

    def forget(self, key: str) -> None:
        """The pusher is gone: its state goes too, unless its task still runs (it ends by
        itself, finding no pusher)."""
        t = self._targets.get(key)
        if t is not None and (t.task is None or t.task.done()):
            del self._targets[key]

    def _describe(self, push: _Push) -> str:
        return f"{push.txn_id} (position {push.stream_ordering})"

    async def _acknowledge(self, t: Target[_Push], push: _Push, success: bool) -> None:
        if push.rejected:
            log.info("push sender: gateway rejected the pushkey of pusher %s; removed", t.key)
            await self.handler.rejected(push.pusher_id)
        else:
            await store.advance(push.pusher_id, push.stream_ordering, answered=True)

    async def _next_batch(self, t: Target[_Push]) -> _Push | None:
        pid = int(t.key)
        p = await store.get_pusher(pid)
        if p is None:
            return None
        user_id, position = p["user_id"], p["last_stream_ordering"]
        while True:
            rows = await notes.notifications_after(user_id, position, LOOKAHEAD)
            if not rows:
                return None
            read = await notes.read_up_to(user_id, [r["room_id"] for r in rows])
            events = await self.hs.state.get_events(r["event_id"] for r in rows)
            too_old = now_ms() - self.give_up_ms
            for n in rows:
                ev = events.get(n["event_id"])
                if (ev is None or ev.redacted_by or n["ts"] < too_old
                        or read.get(n["room_id"], -1) >= n["stream_ordering"]):
                    position = n["stream_ordering"]  # not worth a push
                    continue
                if position != p["last_stream_ordering"]:
                    await store.advance(pid, position, answered=False)
                body = await self._notification(p, n, ev)
                return _Push(new_txn_id(), pid, n["stream_ordering"],
                             orjson.loads(p["data"])["url"], p["pushkey"], body)
            await store.advance(pid, position, answered=False)
            p["last_stream_ordering"] = position

    async def _deliver(self, t: Target[_Push], push: _Push) -> tuple[str, str]:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with self.handler.http().post(
                    push.url, data=push.body, timeout=timeout, allow_redirects=False,
                    headers={"Content-Type": "application/json"}) as r:
                answer = await r.content.read(MAX_ANSWER_BYTES)
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as e:
            return RETRY, str(e) or type(e).__name__
        if not 200 <= status < 300:
            return RETRY, f"HTTP {status}"
        try:
            rejected = orjson.loads(answer).get("rejected")
        except (orjson.JSONDecodeError, AttributeError):
            rejected = None
        if isinstance(rejected, list) and push.pushkey in rejected:
            push.rejected = True
            return DROPPED, "pushkey rejected"
        return SENT, ""

    # --- the request body --------------------------------------------------------------------

    async def _notification(self, p: dict[str, Any], n: dict[str, Any], ev: EventRow) -> bytes:
        data = orjson.loads(p["data"])
        tweaks = tweaks_of(orjson.loads(n["actions"]))
        user_id = p["user_id"]
        counts = await notes.nonzero_counts(user_id)
        note: dict[str, Any] = {
            "event_id": ev.event_id,
            "room_id": ev.room_id,
            "counts": {"unread": sum(c for c, _ in counts.values())},
            # Sound and highlights wake the device; encrypted events might be either.
            "prio": "high" if tweaks.get("highlight") is True or tweaks.get("sound")
            or ev.type == "m.room.encrypted" else "low",
            "devices": [{
                "app_id": p["app_id"],
                "pushkey": p["pushkey"],
                "pushkey_ts": p["created_ts"] // 1000,
                "data": {k: v for k, v in data.items() if k != "url"},
                "tweaks": tweaks,
            }],
        }
        if data.get("format") != "event_id_only":
            note.update(type=ev.type, sender=ev.sender, content=ev.pdu.get("content") or {})
            await self._add_names(note, ev)
            if ev.type == "m.room.member":
                note["user_is_target"] = ev.state_key == user_id
        return orjson.dumps({"notification": note})

    async def _add_names(self, note: dict[str, Any], ev: EventRow) -> None:
        """The sender's display name, the room's name and alias, as of the event."""
        member, name, alias = ("m.room.member", ev.sender), ("m.room.name", ""), \
            ("m.room.canonical_alias", "")
        state = await self.hs.state.state_at(ev, [member, name, alias])
        for key, field, out in ((member, "displayname", "sender_display_name"),
                                (name, "name", "room_name"), (alias, "alias", "room_alias")):
            row = state.get(key)
            value = (row.pdu.get("content") or {}).get(field) if row is not None else None
            if isinstance(value, str) and value:
                note[out] = value
