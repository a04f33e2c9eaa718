"""Who may see which event (history visibility), and the client format of events.

Every read path — /sync, /messages, /context, /event, /relations — goes through
`filter_for_user` so a user never sees an event from a time they were not allowed to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from homeserver.events.redaction import redact_event
from homeserver.storage import state as state_store
from homeserver.storage.events import EventRow
from homeserver.types import now_ms

if TYPE_CHECKING:
    from homeserver.server import HomeServer

HV_KEY = ("m.room.history_visibility", "")


async def filter_for_user(hs: HomeServer, user_id: str, rows: list[EventRow]) -> list[EventRow]:
    if not rows:
        return rows
    groups: dict[int | None, dict] = {}
    for g in {r.state_group for r in rows}:
        groups[g] = await hs.state.state_group_ids(g)
    wanted: set[str] = set()
    for st in groups.values():
        for key in (HV_KEY, ("m.room.member", user_id)):
            if key in st:
                wanted.add(st[key])
    events = await hs.state.get_events(wanted)
    current: dict[str, str | None] = {}
    out = []
    for r in rows:
        if r.type == "m.room.member" and r.state_key == user_id:
            out.append(r)  # one's own membership changes are always visible
            continue
        st = groups[r.state_group]
        hv_ev = events.get(st.get(HV_KEY, ""))
        hv = hv_ev.pdu["content"].get("history_visibility", "shared") if hv_ev else "shared"
        if hv == "world_readable":
            out.append(r)
            continue
        mem_ev = events.get(st.get(("m.room.member", user_id), ""))
        membership = mem_ev.pdu["content"].get("membership") if mem_ev else None
        if membership == "join":
            out.append(r)
            continue
        if hv == "invited" and membership == "invite":
            out.append(r)
            continue
        if hv == "shared":
            if r.room_id not in current:
                m = await state_store.get_membership(r.room_id, user_id)
                current[r.room_id] = m["membership"] if m else None
            if current[r.room_id] == "join":
                out.append(r)
    return out


async def format_events(
    hs: HomeServer, rows: Iterable[EventRow], user_id: str | None = None,
    device_id: str | None = None, include_room_id: bool = True,
) -> list[dict[str, Any]]:
    """Client-Server format: redacted content for redacted events, unsigned extras."""
    rows = list(rows)
    redactions = await hs.state.get_events(r.redacted_by for r in rows if r.redacted_by)
    now = now_ms()
    out = []
    for r in rows:
        pdu = r.pdu
        unsigned: dict[str, Any] = {}
        if r.redacted_by:
            version = await hs.state.room_version(r.room_id)
            pdu = redact_event(pdu, version)
            red = redactions.get(r.redacted_by)
            if red is not None:
                unsigned["redacted_because"] = (await format_events(hs, [red]))[0]
        ev: dict[str, Any] = {
            "type": r.type, "content": pdu.get("content", {}), "event_id": r.event_id,
            "sender": r.sender, "origin_server_ts": r.origin_server_ts,
        }
        if include_room_id:
            ev["room_id"] = r.room_id
        if r.state_key is not None:
            ev["state_key"] = r.state_key
            stored_unsigned = r.pdu.get("unsigned") or {}
            if "prev_content" in stored_unsigned:
                unsigned["prev_content"] = stored_unsigned["prev_content"]
                unsigned["replaces_state"] = stored_unsigned.get("replaces_state")
                if stored_unsigned.get("prev_sender"):
                    unsigned["prev_sender"] = stored_unsigned["prev_sender"]
        if "redacts" in pdu:
            ev["redacts"] = pdu["redacts"]
        unsigned["age"] = max(0, now - r.origin_server_ts)
        if user_id and r.txn_id and r.sender == user_id and r.txn_device == device_id:
            unsigned["transaction_id"] = r.txn_id
        ev["unsigned"] = unsigned
        out.append(ev)
    return out
