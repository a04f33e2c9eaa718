"""Outbound federation: one queue per destination, drained into transactions with retries.

PDU rows are written to `federation_outbox` by the event pipeline in the event's own
transaction; durable EDUs (receipts, presence) by `queue_edu`. Typing notifications are kept in
memory only: they are worthless a few seconds later and would only pile up in the database
while a destination is down.

At most one task per destination. It loads up to 50 PDU rows and 100 EDU rows (oldest first),
gives that batch a transaction ID stored on the rows, and PUTs it. On a 2xx the rows are deleted;
on a network failure, a 5xx or a 429 the destination backs off (exponential, capped, full
jitter; persisted in `federation_destinations` so a restart honours it) and the SAME transaction
(same ID, same content) is sent again later; on any other 4xx the batch is dropped (it is
malformed and would never succeed). The task ends when the queue is empty; `wake()` starts it
again. A restart resumes from the rows: a transaction already given an ID is resent under it.
The per-destination task, wake-ups, backoff and stop/resume are DeliveryQueue's
(homeserver/handlers/delivery_queue.py); this module says how a batch is built and sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from homeserver.handlers.delivery_queue import (  # noqa: F401  (re-exported: older importers)
    DEFAULT_RETRY_BASE_MS,
    DEFAULT_RETRY_MAX_MS,
    DROPPED,
    ERROR_RETRY_MS,
    RETRY,
    SENT,
    DeliveryQueue,
    Target,
    backoff_after_failures,
    backoff_delay_ms,
    new_txn_id,
    next_backoff_ceiling,
)
from homeserver.storage import federation_queue as queue
from homeserver.types import is_valid_server_name, now_ms

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MAX_PDUS_PER_TXN = 50  # the spec's limits for one transaction
MAX_EDUS_PER_TXN = 100
MAX_TYPING_PER_TXN = 50  # typing EDUs taken first; durable EDU rows fill the rest
TYPING_TTL_MS = 30_000  # a queued typing notification older than this is not worth sending


# --- per-destination state -----------------------------------------------------------------

@dataclass
class _Batch:
    txn_id: str
    row_ids: list[int]
    body: dict[str, Any]
    # Latest expiry of the in-memory typing EDUs it carries (0: none).
    typing_expires_ms: int = 0

    def is_stale(self, now: int) -> bool:
        """Only expired typing notifications in it: not worth sending (its ID is abandoned,
        never reused)."""
        return not self.row_ids and self.typing_expires_ms <= now


@dataclass
class _Destination(Target[_Batch]):
    # (room_id, user_id) -> (m.typing EDU, expiry ms); the latest per user and room.
    typing: dict[tuple[str, str], tuple[dict, int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.key


class FederationSender(DeliveryQueue[_Batch]):
    """One queue per destination server (the shared machinery: DeliveryQueue)."""

    kind = "federation sender"

    def __init__(self, hs: HomeServer) -> None:
        fed = getattr(hs.config, "federation", None)
        super().__init__(hs, int(getattr(fed, "retry_base_ms", DEFAULT_RETRY_BASE_MS)),
                         int(getattr(fed, "retry_max_ms", DEFAULT_RETRY_MAX_MS)))
        self.max_pdus = int(getattr(fed, "max_pdus_per_txn", MAX_PDUS_PER_TXN))
        self.max_edus = int(getattr(fed, "max_edus_per_txn", MAX_EDUS_PER_TXN))

    # --- queueing ----------------------------------------------------------------------------

    def retry_now(self, destination: str) -> None:
        """The destination just talked to us: it is up, so forget its backoff."""
        # Called for every inbound request: no state for names that cannot be destinations.
        if destination in self._targets or is_valid_server_name(destination):
            super().retry_now(destination)

    async def queue_edu(self, destination: str, edu: dict[str, Any]) -> None:
        """Queue one EDU. m.typing stays in memory (ephemeral); others become durable rows."""
        await self.queue_edus([destination], edu)

    async def queue_edus(self, destinations: list[str], edu: dict[str, Any]) -> None:
        dests = [d for d in dict.fromkeys(destinations) if d != self.hs.server_name]
        if not dests:
            return
        if edu.get("edu_type") == "m.typing":
            content = edu.get("content") or {}
            key = (str(content.get("room_id")), str(content.get("user_id")))
            expires = now_ms() + TYPING_TTL_MS
            for name in dests:
                d = self._target(name)
                d.typing[key] = (edu, expires)
                d.event.set()
                self._ensure_task(d)
            return
        edu_json = orjson.dumps(edu).decode()
        await queue.queue_edus((name, edu_json) for name in dests)
        self.wake(dests)

    def destination_status(self, destination: str) -> dict[str, Any]:
        out = self.status(destination)
        if out["known"]:
            out["typing_queued"] = len(self._targets[destination].typing)
        return out

    # --- DeliveryQueue -----------------------------------------------------------------------

    def _new_target(self, key: str) -> _Destination | None:
        return None if key == self.hs.server_name else _Destination(key)

    async def _targets_with_work(self) -> list[str]:
        return await queue.destinations_with_rows()

    def _is_stale(self, batch: _Batch) -> bool:
        return batch.is_stale(now_ms())

    def _has_more(self, d: _Destination) -> bool:
        return bool(d.typing)

    async def _stored_backoff(self, key: str) -> tuple[int, int] | None:
        row = await queue.get_destination(key)
        return (int(row["retry_at_ts"] or 0), int(row["backoff_ms"] or 0)) if row else None

    async def _store_backoff(self, key: str, retry_at_ms: int, backoff_ms: int) -> None:
        await queue.set_backoff(key, retry_at_ms, backoff_ms)

    async def _acknowledge(self, d: _Destination, batch: _Batch, success: bool) -> None:
        await queue.acknowledge(d.name, batch.row_ids, now_ms() if success else None)

    async def _next_batch(self, d: _Destination) -> _Batch | None:
        """The in-flight transaction from the database (after a restart), or a new one."""
        rows = await queue.in_flight_rows(d.name)
        typing_edus: list[dict] = []
        typing_expires = 0
        if rows:
            txn_id = rows[0]["txn_id"]
        else:
            now = now_ms()
            live = [(k, v) for k, v in d.typing.items() if v[1] > now]
            taken = live[:min(MAX_TYPING_PER_TXN, self.max_edus)]
            for k, (edu, expires) in taken:
                typing_edus.append(edu)
                typing_expires = max(typing_expires, expires)
            # What was taken (and what expired) leaves the memory queue; newer updates for the
            # same user and room queue up behind this transaction.
            taken_keys = {k for k, _ in taken}
            d.typing = {k: v for k, v in d.typing.items() if v[1] > now and k not in taken_keys}
            rows = await queue.unsent_rows(d.name, self.max_pdus,
                                           self.max_edus - len(typing_edus))
            if not rows and not typing_edus:
                return None
            txn_id = new_txn_id()
            await queue.assign_txn(d.name, [r["id"] for r in rows], txn_id)
        pdus, edus, unusable = await self._load_contents(rows)
        edus = _merge_edus(edus) + typing_edus
        if not pdus and not edus:
            # Every row points at something gone (e.g. a purged event): nothing to send.
            if rows:
                log.info("federation sender: %d unusable row(s) for %s dropped",
                         len(rows), d.name)
                await queue.delete_rows(d.name, [r["id"] for r in rows])
                d.dirty = True  # look again: more rows may be queued behind these
            return None
        if unusable:
            log.info("federation sender: %d unusable row(s) in %s for %s", unusable, txn_id,
                     d.name)
        body: dict[str, Any] = {"origin": self.hs.server_name, "origin_server_ts": now_ms(),
                                "pdus": pdus}
        if edus:
            body["edus"] = edus
        return _Batch(txn_id, [r["id"] for r in rows], body, typing_expires)

    async def _load_contents(self, rows: list[dict]) -> tuple[list[dict], list[dict], int]:
        event_ids = [r["event_id"] for r in rows if r["event_id"] is not None]
        events = await self.hs.state.get_events(event_ids) if event_ids else {}
        pdus: list[dict] = []
        edus: list[dict] = []
        unusable = 0
        for r in rows:
            if r["event_id"] is not None:
                ev = events.get(r["event_id"])
                if ev is None:
                    unusable += 1
                    continue
                pdus.append(ev.pdu_for_federation())
            else:
                try:
                    edu = orjson.loads(r["edu_json"] or "null")
                except orjson.JSONDecodeError:
                    edu = None
                if not isinstance(edu, dict) or not isinstance(edu.get("edu_type"), str):
                    unusable += 1
                    continue
                edus.append(edu)
        return pdus, edus, unusable

    async def _deliver(self, d: _Destination, batch: _Batch) -> tuple[str, str]:
        from homeserver.handlers.federation.transport import (
            DestinationUnreachable,
            FederationError,
        )

        client = getattr(self.hs, "federation_client", None)
        try:
            if not is_valid_server_name(d.name):
                raise ValueError("not a valid server name")
            if client is None:
                raise DestinationUnreachable(d.name, "no federation client configured")
            response = await client.send_transaction(d.name, batch.txn_id, batch.body)
        except DestinationUnreachable as e:
            return RETRY, str(e)
        except FederationError as e:
            if e.status == 429 or e.status >= 500:
                return RETRY, str(e)
            log.warning("federation sender: %s rejected transaction %s (%d PDUs, %d EDUs) "
                        "with %s; dropping it", d.name, batch.txn_id,
                        len(batch.body["pdus"]), len(batch.body.get("edus", [])), e)
            return DROPPED, str(e)
        except ValueError as e:  # refused locally (e.g. a transaction to ourselves)
            log.warning("federation sender: cannot send to %s (%s); dropping %s", d.name, e,
                        batch.txn_id)
            return DROPPED, str(e)
        _log_pdu_errors(d.name, batch.txn_id, response)
        return SENT, ""


# --- helpers -------------------------------------------------------------------------------

def _log_pdu_errors(destination: str, txn_id: str, response: Any) -> None:
    results = response.get("pdus") if isinstance(response, dict) else None
    if not isinstance(results, dict):
        return
    for event_id, result in results.items():
        if isinstance(result, dict) and result.get("error"):
            log.warning("federation sender: %s rejected %s in transaction %s: %s",
                        destination, event_id, txn_id, str(result["error"])[:500])


def _merge_edus(edus: list[dict]) -> list[dict]:
    """Fold several m.presence / m.receipt EDUs of one transaction into one each (latest
    value wins per user); others pass unchanged. Deterministic, so a rebuilt transaction
    (after a restart) has the same content."""
    presence: dict[str, dict] = {}
    receipts: dict[str, dict] = {}
    out: list[dict] = []
    presence_at = receipts_at = -1
    for edu in edus:
        etype = edu.get("edu_type")
        content = edu.get("content")
        if etype == "m.presence" and isinstance(content, dict) \
                and isinstance(content.get("push"), list):
            for item in content["push"]:
                if isinstance(item, dict) and isinstance(item.get("user_id"), str):
                    presence.pop(item["user_id"], None)
                    presence[item["user_id"]] = item
            if presence_at < 0:
                presence_at = len(out)
                out.append({})
        elif etype == "m.receipt" and isinstance(content, dict):
            for room_id, by_type in content.items():
                if not isinstance(by_type, dict):
                    continue
                room = receipts.setdefault(room_id, {})
                for rtype, by_user in by_type.items():
                    if isinstance(by_user, dict):
                        room.setdefault(rtype, {}).update(by_user)
            if receipts_at < 0:
                receipts_at = len(out)
                out.append({})
        else:
            out.append(edu)
    if presence_at >= 0:
        out[presence_at] = {"edu_type": "m.presence", "content": {"push": list(presence.values())}}
    if receipts_at >= 0:
        out[receipts_at] = {"edu_type": "m.receipt", "content": receipts}
    return [e for e in out if e]
