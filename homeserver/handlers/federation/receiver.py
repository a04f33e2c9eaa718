"""Inbound PDUs: every event from another server is checked before it is applied.

Checks, in the spec's order: format and size, signatures (the sender's server must have signed),
content hash (a mismatch means the event is redacted), auth against its own auth events, auth
against the state before it (resolved over its prev events), and finally against the current
state — failing only the last makes it soft-failed: stored, never served, never current state.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from homeserver.events.auth import (
    AuthError, auth_types_for_event, check_auth, check_auth_events_selection,
)
from homeserver.events.canonical import canonical_json
from homeserver.events.hashing import check_content_hash, compute_event_id
from homeserver.events.redaction import redact_event
from homeserver.events.room_versions import RoomVersion
from homeserver.events.server_acl import server_allowed_by_acl
from homeserver.events.signing import SignatureError
from homeserver.handlers.federation.keyring import KeyNotFound
from homeserver.handlers.federation.resolution import StateMap, StateResolver
from homeserver.handlers.federation.transport import DestinationUnreachable, FederationError
from homeserver.storage import events as event_store
from homeserver.storage import sql
from homeserver.storage.events import EventRow
from homeserver.types import is_valid_room_id, is_valid_user_id, now_ms, server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100
MAX_DEPTH = 2**63 - 1
MISSING_EVENTS_LIMIT = 50
MISSING_EVENTS_ROUNDS = 20


class PduRejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_pdu_format(pdu: Any) -> None:
    """Shape of a v10/v11 PDU; anything else is rejected before any work is done."""
    if not isinstance(pdu, dict):
        raise PduRejected("PDU is not an object")
    checks = [
        ("room_id", is_valid_room_id(pdu.get("room_id"))),
        ("sender", is_valid_user_id(pdu.get("sender"))),
        ("type", isinstance(pdu.get("type"), str) and 0 < len(pdu["type"]) <= 255),
        ("content", isinstance(pdu.get("content"), dict)),
        ("depth", isinstance(pdu.get("depth"), int) and not isinstance(pdu.get("depth"), bool)
         and 0 <= pdu["depth"] <= MAX_DEPTH),
        ("origin_server_ts", isinstance(pdu.get("origin_server_ts"), int)
         and not isinstance(pdu.get("origin_server_ts"), bool)),
        ("prev_events", isinstance(pdu.get("prev_events"), list)
         and all(isinstance(e, str) for e in pdu["prev_events"]) and len(pdu["prev_events"]) <= 20),
        ("auth_events", isinstance(pdu.get("auth_events"), list)
         and all(isinstance(e, str) for e in pdu["auth_events"]) and len(pdu["auth_events"]) <= 10),
        ("hashes", isinstance(pdu.get("hashes"), dict)
         and isinstance(pdu["hashes"].get("sha256"), str)),
        ("signatures", isinstance(pdu.get("signatures"), dict)),
        ("state_key", "state_key" not in pdu or isinstance(pdu["state_key"], str)),
    ]
    for name, ok in checks:
        if not ok:
            raise PduRejected(f"invalid or missing {name}")
    try:
        size = len(canonical_json(pdu))
    except (ValueError, TypeError) as e:
        raise PduRejected(f"not canonical JSON: {e}") from None
    if size > 65536:
        raise PduRejected("PDU larger than 65536 bytes")


class FederationReceiver:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.resolver = StateResolver(hs)

    # --- transactions ----------------------------------------------------------------------

    async def on_transaction(self, origin: str, txn_id: str, body: dict) -> dict[str, Any]:
        """PUT /send/{txnId}: idempotent; a replay returns the stored answer."""
        sender = getattr(self.hs, "federation_sender", None)
        if sender is not None:
            sender.retry_now(origin)
        rows = await sql.fetch(
            "SELECT response_json FROM federation_inbound_txns WHERE origin = ? AND txn_id = ?",
            [origin, txn_id])
        if rows:
            return orjson.loads(rows[0]["response_json"])
        pdus = body.get("pdus", [])
        edus = body.get("edus", [])
        results: dict[str, dict] = {}
        for pdu in pdus:
            try:
                version = await self._room_version_for(pdu)
                check_pdu_format(pdu)
                event_id = compute_event_id(pdu, version)
            except PduRejected as e:
                log.info("rejected PDU from %s: %s", origin, e.reason)
                continue
            try:
                async with self.hs.events.room_lock(pdu["room_id"]):
                    await self.handle_pdu(origin, pdu, version, event_id)
                results[event_id] = {}
            except PduRejected as e:
                log.info("rejected %s from %s: %s", event_id, origin, e.reason)
                results[event_id] = {"error": e.reason}
        edu_handler = getattr(self.hs, "federation_edus", None)
        for edu in edus:
            if edu_handler is not None and isinstance(edu, dict):
                try:
                    await edu_handler.on_edu(origin, edu)
                except Exception:  # an EDU must never fail the transaction
                    log.exception("EDU from %s failed", origin)
        response = {"pdus": results}
        await sql.execute(
            "INSERT INTO federation_inbound_txns (origin, txn_id, response_json, received_ts) "
            "VALUES (?,?,?,?) ON CONFLICT (origin, txn_id) DO NOTHING",
            [origin, txn_id, orjson.dumps(response).decode(), now_ms()])
        return response

    async def _room_version_for(self, pdu: Any) -> RoomVersion:
        room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
        if not isinstance(room_id, str):
            raise PduRejected("PDU without room_id")
        version = await self.hs.state.room_version(room_id)
        if version is None:
            raise PduRejected("unknown room")
        return version

    # --- one PDU ---------------------------------------------------------------------------

    async def handle_pdu(self, origin: str, pdu: dict, version: RoomVersion, event_id: str, *,
                         fetch_missing: bool = True, destinations: list[str] | None = None
                         ) -> EventRow | None:
        """Check and apply a timeline PDU. The caller holds the room lock."""
        hs = self.hs
        if await hs.state.get_event(event_id) is not None:
            return None
        await self._check_not_rejected(event_id)
        pdu = await self._verified(pdu, version, event_id)
        await self._check_acl(pdu, origin)
        await self._ensure_auth_events(origin, pdu, version)
        await self._check_own_auth(pdu, version, event_id)

        prevs = pdu["prev_events"]
        known = await event_store.known_event_ids(prevs)
        if len(known) < len(prevs) and fetch_missing:
            await self._fetch_missing(origin, pdu, version)
            known = await event_store.known_event_ids(prevs)
        prev_rows = [r for r in (await hs.state.get_events(known)).values() if not r.outlier]
        extra_states: list[StateMap] = []
        for missing in [p for p in prevs if p not in {r.event_id for r in prev_rows}]:
            extra_states.append(await self._remote_state_after(origin, pdu["room_id"], missing, version))
        state_before, base_group = await self.resolver.state_before(version, prev_rows)
        if extra_states:
            state_before = await self.resolver.resolve(version, [state_before, *extra_states]
                                                       if prev_rows else extra_states)
            base_group = None
        try:
            check_auth(pdu, await self._auth_map(pdu, state_before), version)
        except AuthError as e:
            await self._reject(pdu, event_id, f"fails auth at its position: {e.reason}")
        state_after = dict(state_before)
        if pdu.get("state_key") is not None:
            state_after[(pdu["type"], pdu["state_key"])] = event_id

        current = await hs.state.current_state_ids(pdu["room_id"])
        soft_failed = False
        try:
            check_auth(pdu, await self._auth_map(pdu, current), version)
        except AuthError as e:
            log.info("soft-failing %s: %s", event_id, e.reason)
            soft_failed = True
        new_current = None
        if not soft_failed:
            extremities = set(await hs.events.extremities(pdu["room_id"]))
            if extremities <= set(prevs):
                new_current = state_after
            else:
                # The event itself is not stored yet: hand it to the resolver directly.
                new_current = await self.resolver.resolve(
                    version, [current, state_after], extra={event_id: {**pdu, "event_id": event_id}})
        return await hs.events.persist_event(
            pdu, event_id, state_before=state_before, base_group=base_group,
            new_current=new_current, soft_failed=soft_failed, destinations=destinations)

    async def _verified(self, pdu: dict, version: RoomVersion, event_id: str) -> dict:
        try:
            await self.hs.keyring.verify_event(pdu, version)
        except (SignatureError, KeyNotFound) as e:
            # Refused but not recorded: signatures are not part of the event ID, so a forged
            # copy (or a key fetch that failed for a moment) must not doom the genuine event.
            raise PduRejected(f"bad signature: {e}") from None
        if not check_content_hash(pdu):
            # The spec's answer to a wrong hash: keep the event, but only its redacted form.
            log.info("content hash mismatch on %s: redacting", event_id)
            pdu = redact_event(pdu, version)
        return pdu

    async def _check_acl(self, pdu: dict, origin: str) -> None:
        acl = await self.hs.state.current_state_event(pdu["room_id"], "m.room.server_acl")
        if acl is None:
            return
        for server in {origin, server_of(pdu["sender"])}:
            if not server_allowed_by_acl(acl.pdu.get("content", {}), server):
                raise PduRejected(f"server {server} is denied by the room's ACL")

    async def _check_not_rejected(self, event_id: str) -> None:
        rows = await sql.fetch("SELECT reason FROM rejected_events WHERE event_id = ?", [event_id])
        if rows:
            raise PduRejected(f"previously rejected: {rows[0]['reason']}")

    async def _reject(self, pdu: dict, event_id: str, reason: str):
        await sql.execute(
            "INSERT INTO rejected_events (event_id, room_id, reason, ts) VALUES (?,?,?,?) "
            "ON CONFLICT (event_id) DO NOTHING", [event_id, pdu["room_id"], reason[:1000], now_ms()])
        raise PduRejected(reason)

    async def _auth_map(self, pdu: dict, state: StateMap) -> dict:
        keys = [k for k in auth_types_for_event(pdu) if k in state]
        rows = await self.hs.state.get_events(state[k] for k in keys)
        return {k: rows[state[k]].pdu for k in keys if state[k] in rows}

    async def _check_own_auth(self, pdu: dict, version: RoomVersion, event_id: str) -> None:
        """Auth against the event's own auth events (which are all known by now)."""
        rows = await self.hs.state.get_events(pdu["auth_events"])
        rejected = await sql.fetch(
            f"SELECT event_id FROM rejected_events WHERE event_id IN "
            f"({sql.placeholders(len(pdu['auth_events']))})", pdu["auth_events"]) \
            if pdu["auth_events"] else []
        if rejected:
            await self._reject(pdu, event_id, "cites a rejected event as an auth event")
        try:
            # Rule 2: the cited events must be the right ones (no duplicates, no strays).
            auth = check_auth_events_selection(
                pdu, [r.pdu for r in rows.values()], version)
            check_auth(pdu, auth, version)
        except AuthError as e:
            await self._reject(pdu, event_id, f"fails auth against its auth events: {e.reason}")

    async def _ensure_auth_events(self, origin: str, pdu: dict, version: RoomVersion,
                                  depth: int = 0) -> None:
        missing = set(pdu["auth_events"]) - await event_store.known_event_ids(pdu["auth_events"])
        if not missing:
            return
        if depth > 5:
            raise PduRejected("auth chain too deep to fetch")
        for eid in missing:
            fetched = await self._fetch_event(origin, eid, version)
            await self.persist_outlier(origin, fetched, version, depth + 1)

    async def persist_outlier(self, origin: str, pdu: dict, version: RoomVersion,
                              depth: int = 0) -> EventRow | None:
        """An event known for auth or state only: checked against its own auth events."""
        check_pdu_format(pdu)
        event_id = compute_event_id(pdu, version)
        if await self.hs.state.get_event(event_id) is not None:
            return None
        await self._check_not_rejected(event_id)
        pdu = await self._verified(pdu, version, event_id)
        await self._ensure_auth_events(origin, pdu, version, depth)
        await self._check_own_auth(pdu, version, event_id)
        return await self.hs.events.persist_event(
            pdu, event_id, state_before={}, base_group=None, new_current=None, outlier=True)

    async def _fetch_event(self, origin: str, event_id: str, version: RoomVersion) -> dict:
        try:
            res = await self.hs.federation_client.get_event(origin, event_id)
        except (FederationError, DestinationUnreachable) as e:
            raise PduRejected(f"could not fetch {event_id} from {origin}: {e}") from None
        pdus = res.get("pdus") if isinstance(res, dict) else None
        if not pdus or not isinstance(pdus[0], dict):
            raise PduRejected(f"{origin} did not return {event_id}")
        pdu = pdus[0]
        check_pdu_format(pdu)
        if compute_event_id(pdu, version) != event_id:
            raise PduRejected(f"{origin} returned a different event for {event_id}")
        return pdu

    async def _fetch_missing(self, origin: str, pdu: dict, version: RoomVersion) -> None:
        """Fill the gap before an event with /get_missing_events, walking back page by page
        until we reach events we know (bounded), then apply them oldest first — so a server
        that was down sees the history in its real order."""
        room_id = pdu["room_id"]
        extremities = await self.hs.events.extremities(room_id)
        latest = [compute_event_id(pdu, version)]
        fetched: dict[str, dict] = {}
        for _ in range(MISSING_EVENTS_ROUNDS):
            try:
                res = await self.hs.federation_client.get_missing_events(origin, room_id, {
                    "earliest_events": extremities, "latest_events": latest,
                    "limit": MISSING_EVENTS_LIMIT, "min_depth": 0})
            except (FederationError, DestinationUnreachable) as e:
                log.info("get_missing_events from %s failed: %s", origin, e)
                break
            page = {}
            for ev in res.get("events", []) if isinstance(res, dict) else []:
                try:
                    check_pdu_format(ev)
                except PduRejected:
                    continue
                if ev["room_id"] == room_id:
                    page[compute_event_id(ev, version)] = ev
            new = {k: v for k, v in page.items() if k not in fetched}
            if not new:
                break
            fetched.update(new)
            # Prev events still unknown after this page: walk back from them next.
            wanted = {p for ev in new.values() for p in ev["prev_events"]} - set(fetched)
            unknown = wanted - await event_store.known_event_ids(wanted)
            if not unknown:
                break
            # latest_events are events we have (their prevs are returned, not themselves).
            latest = sorted(k for k, ev in new.items() if unknown & set(ev["prev_events"]))[:20]
        for eid, ev in sorted(fetched.items(), key=lambda kv: (kv[1]["depth"], kv[0])):
            try:
                await self.handle_pdu(origin, ev, version, eid, fetch_missing=False)
            except PduRejected as e:
                log.info("missing event %s from %s rejected: %s", eid, origin, e.reason)

    async def _remote_state_after(self, origin: str, room_id: str, event_id: str,
                                  version: RoomVersion) -> StateMap:
        """State after a prev event we could not fetch: ask the origin (/state_ids)."""
        try:
            res = await self.hs.federation_client.state_ids(origin, room_id, event_id)
        except (FederationError, DestinationUnreachable) as e:
            raise PduRejected(f"cannot learn the state at {event_id}: {e}") from None
        ids = res.get("pdu_ids", []) if isinstance(res, dict) else []
        ids = [i for i in ids if isinstance(i, str)][:5000]
        unknown = set(ids) - await event_store.known_event_ids(ids)
        for eid in unknown:
            try:
                await self.persist_outlier(origin, await self._fetch_event(origin, eid, version),
                                           version)
            except PduRejected as e:
                log.info("state event %s unusable: %s", eid, e.reason)
        rows = await self.hs.state.get_events(ids)
        state = {(r.type, r.state_key): r.event_id for r in rows.values() if r.state_key is not None}
        # /state_ids gives the state before the event; the event itself may be state too.
        try:
            prev = await self._fetch_event(origin, event_id, version)
            if prev.get("state_key") is not None:
                await self.persist_outlier(origin, prev, version)
                state[(prev["type"], prev["state_key"])] = event_id
        except PduRejected:
            pass
        return state
