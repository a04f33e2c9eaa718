"""Delivery of events to each application service through a durable queue.

The sender is a DeliveryQueue (homeserver/handlers/delivery_queue.py), as the federation sender
is: one task per service, a batch of rows becomes a transaction stored with its ID and exact
body (in the same database transaction that removes the rows), PUT to
/_matrix/app/v1/transactions/{txnId} with the hs_token, and resent — same ID, same bytes — with
exponential backoff and jitter until the service answers 2xx. A restart resumes from the stored
transaction and rows. Queued ephemeral data (ephemeral.py) rides in the same transactions.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson

from homeserver.handlers.appservice.ephemeral import (
    MAX_EPHEMERAL_PER_TXN,
    UNSTABLE_EPHEMERAL,
    merge_ephemeral,
)
from homeserver.handlers.delivery_queue import RETRY, SENT, DeliveryQueue, Target, new_txn_id
from homeserver.handlers.visibility import format_events
from homeserver.storage import appservice as store
from homeserver.types import now_ms

if TYPE_CHECKING:
    from homeserver.handlers.appservice.handler import AppServiceHandler
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    txn_id: str
    body: bytes
    event_count: int


class AppServiceSender(DeliveryQueue[_Pending]):
    """One task per service with work; see the module docstring."""

    kind = "appservice sender"

    def __init__(self, hs: HomeServer, handler: AppServiceHandler) -> None:
        st = hs.config.appservice_sender
        super().__init__(hs, st.retry_base_ms, st.retry_max_ms)
        self.handler = handler
        self.timeout_s = st.request_timeout_s
        self.max_events = st.max_events_per_txn

    async def stop(self, timeout: float = 5.0) -> None:
        await super().stop(timeout)
        for t in self._targets.values():
            t.pending = None  # reloaded from appservice_txns: the stored bytes are the truth

    # --- DeliveryQueue -----------------------------------------------------------------------

    def _new_target(self, key: str) -> Target[_Pending] | None:
        service = self.handler.services.get(key)
        return Target(key) if service is not None and service.url else None

    async def _targets_with_work(self) -> list[str]:
        ids = await store.services_with_work()
        unknown = [i for i in ids if i not in self.handler.services]
        if unknown:
            log.warning("appservice sender: queued events for unconfigured service(s) %s kept",
                        ", ".join(unknown))
        return [i for i in ids if i in self.handler.services]

    async def _stored_backoff(self, key: str) -> tuple[int, int] | None:
        row = await store.get_state(key)
        return (int(row["retry_at_ts"] or 0), int(row["backoff_ms"] or 0)) if row else None

    async def _store_backoff(self, key: str, retry_at_ms: int, backoff_ms: int) -> None:
        await store.set_backoff(key, retry_at_ms, backoff_ms)

    async def _acknowledge(self, t: Target[_Pending], txn: _Pending, success: bool) -> None:
        await store.acknowledge(t.key, txn.txn_id, now_ms())

    def _describe(self, txn: _Pending) -> str:
        return f"{txn.txn_id} ({txn.event_count} events)"

    async def _next_batch(self, t: Target[_Pending]) -> _Pending | None:
        """The stored unacknowledged transaction, or a new one made from queued rows."""
        sid = t.key
        stored = await store.pending_txn(sid)
        if stored is not None:
            return _Pending(stored["txn_id"], stored["body_json"].encode(),
                            int(stored["event_count"]))
        while True:
            rows = await store.unsent_rows(sid, self.max_events)
            eph_rows = await store.unsent_ephemeral(sid, MAX_EPHEMERAL_PER_TXN)
            if not rows and not eph_rows:
                return None
            events = await self.hs.state.get_events(r["event_id"] for r in rows)
            found = [events[r["event_id"]] for r in rows if r["event_id"] in events]
            ephemeral = merge_ephemeral(_decoded(eph_rows))
            row_ids = [r["id"] for r in rows]
            eph_ids = [r["id"] for r in eph_rows]
            if not found and not ephemeral:
                log.info("appservice sender: %d queued item(s) for %s no longer exist",
                         len(rows) + len(eph_rows), sid)
                await store.delete_rows(sid, row_ids)
                await store.delete_ephemeral(sid, eph_ids)
                continue
            body: dict[str, Any] = {"events": await format_events(self.hs, found)}
            if ephemeral:
                body["ephemeral"] = ephemeral
                body[UNSTABLE_EPHEMERAL] = ephemeral  # bridges written against MSC2409
            txn_id = new_txn_id()
            raw = orjson.dumps(body)
            await store.create_txn(sid, txn_id, raw.decode(), len(found), row_ids, eph_ids)
            return _Pending(txn_id, raw, len(found))

    async def _deliver(self, t: Target[_Pending], txn: _Pending) -> tuple[str, str]:
        s = self.handler.services[t.key]
        url = f"{s.url}/_matrix/app/v1/transactions/{quote(txn.txn_id, safe='')}"
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with self.handler.http().put(url, data=txn.body, timeout=timeout, headers={
                    "Authorization": f"Bearer {s.hs_token}",
                    "Content-Type": "application/json"}) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as e:
            return RETRY, str(e) or type(e).__name__
        return (SENT, "") if 200 <= status < 300 else (RETRY, f"HTTP {status}")


def _decoded(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        try:
            edu = orjson.loads(r["edu_json"])
        except orjson.JSONDecodeError:
            continue
        if isinstance(edu, dict):
            out.append(edu)
    return out
