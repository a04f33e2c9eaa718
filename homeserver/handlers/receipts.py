"""Read receipts (m.read, m.read.private) and the fully-read marker (m.fully_read).

Receipts are rows with a position on the receipts stream; the fully-read marker is room account
data. Both only move forward: a receipt for an event older than the current one is accepted
and ignored. Private receipts are only ever shown to their owner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.storage.transactions import in_transaction

from homeserver.errors import forbidden, invalid_param, not_found
from homeserver.storage import userdata as store
from homeserver.storage.events import EventRow
from homeserver.types import now_ms

if TYPE_CHECKING:
    from homeserver.server import HomeServer

READ = "m.read"
READ_PRIVATE = "m.read.private"
FULLY_READ = "m.fully_read"
RECEIPT_TYPES = (READ, READ_PRIVATE, FULLY_READ)


def _thread_of(row: EventRow) -> str | None:
    rel = (row.pdu.get("content") or {}).get("m.relates_to")
    if isinstance(rel, dict) and rel.get("rel_type") == "m.thread":
        target = rel.get("event_id")
        return target if isinstance(target, str) else None
    return None


class ReceiptsHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    def current_position(self) -> int:
        return self.hs.ids.receipts.visible

    # --- the client API --------------------------------------------------------------------

    async def send_receipt(self, user_id: str, room_id: str, receipt_type: str, event_id: str,
                           thread_id: Any = None) -> None:
        if receipt_type not in RECEIPT_TYPES:
            raise invalid_param("Receipt type must be one of " + ", ".join(RECEIPT_TYPES))
        if thread_id is not None:
            if not isinstance(thread_id, str) or not thread_id:
                raise invalid_param("thread_id field must be a non-empty string")
            if receipt_type == FULLY_READ:
                raise invalid_param("thread_id is not allowed for m.fully_read")
        await self._check_joined(user_id, room_id)
        row = (await self._events_in_room(room_id, [event_id]))[event_id]
        if thread_id is not None and thread_id != "main":
            if event_id != thread_id and _thread_of(row) != thread_id:
                raise invalid_param("The event is not part of the thread given in thread_id")
        if receipt_type == FULLY_READ:
            await self._set_fully_read(user_id, room_id, row)
        else:
            await self._store_receipt(user_id, room_id, receipt_type, row, thread_id or "")

    async def set_read_markers(self, user_id: str, room_id: str, markers: dict[str, Any]) -> None:
        """POST /read_markers: every given event is checked before anything is stored."""
        given = {k: markers.get(k) for k in RECEIPT_TYPES if markers.get(k) is not None}
        for key, value in given.items():
            if not isinstance(value, str):
                raise invalid_param(f"{key} must be an event ID")
        await self._check_joined(user_id, room_id)
        if not given:
            return
        rows = await self._events_in_room(room_id, set(given.values()))
        if FULLY_READ in given:
            await self._set_fully_read(user_id, room_id, rows[given[FULLY_READ]])
        for rtype in (READ, READ_PRIVATE):
            if rtype in given:
                await self._store_receipt(user_id, room_id, rtype, rows[given[rtype]], "")

    # --- rules -----------------------------------------------------------------------------

    async def _check_joined(self, user_id: str, room_id: str) -> None:
        if await self.hs.state.membership_of(room_id, user_id) != "join":
            raise forbidden("You are not joined to this room")

    async def _events_in_room(self, room_id: str, event_ids) -> dict[str, EventRow]:
        ids = list(event_ids)
        for eid in ids:
            if not eid.startswith("$") or len(eid) > 255:
                raise invalid_param(f"{eid[:80]} is not a valid event ID")
        rows = await self.hs.state.get_events(ids)
        for eid in ids:
            row = rows.get(eid)
            if row is None or row.room_id != room_id:
                raise not_found("Event not found in this room")
        return rows

    async def _is_after(self, new: EventRow, old_event_id: str | None) -> bool:
        if old_event_id is None:
            return True
        if old_event_id == new.event_id:
            return False
        old = await self.hs.state.get_event(old_event_id)
        return old is None or new.stream_ordering > old.stream_ordering

    async def _set_fully_read(self, user_id: str, room_id: str, row: EventRow) -> None:
        current = await self.hs.account_data.get_account_data(user_id, room_id, FULLY_READ)
        old = current.get("event_id") if isinstance(current, dict) else None
        if await self._is_after(row, old if isinstance(old, str) else None):
            await self.hs.account_data.set_account_data(user_id, room_id, FULLY_READ,
                                                        {"event_id": row.event_id})

    async def _store_receipt(self, user_id: str, room_id: str, receipt_type: str, row: EventRow,
                             thread_id: str) -> None:
        ids = self.hs.ids.receipts
        async with ids.lock:
            old = await store.get_receipt_event(room_id, receipt_type, user_id, thread_id)
            if not await self._is_after(row, old):
                return
            # A receipt for the room (not one thread) resets its unread counts.
            plan = (await self.hs.notifications.plan_receipt(user_id, room_id, row)
                    if thread_id in ("", "main") else None)
            sid = ids.next()
            with self.hs.notifications.receipt_change(user_id, plan):
                async with in_transaction() as conn:
                    await store.upsert_receipt(room_id, receipt_type, user_id, thread_id,
                                               row.event_id, now_ms(), sid, conn)
                    if plan is not None:
                        await self.hs.notifications.apply_receipt(user_id, room_id, row, plan,
                                                                  conn)
            ids.mark_visible(sid)
        if receipt_type == READ_PRIVATE:
            self.hs.notifier.notify("receipts", sid, users=[user_id])
        else:
            self.hs.notifier.notify("receipts", sid, rooms=[room_id], users=[user_id])
        self.hs.appservices.ephemeral.on_receipt(room_id, receipt_type, user_id, row.event_id,
                                                 thread_id)  # receive_ephemeral services
        await self.hs.federation_edus.on_local_receipt(room_id, receipt_type, user_id,
                                                       row.event_id, thread_id)

    # --- /sync -----------------------------------------------------------------------------

    async def get_receipts_for_sync(self, user_id: str, room_ids: list[str], since: int | None,
                                    upto: int) -> dict[str, dict[str, Any]]:
        """room_id -> m.receipt content: {event_id: {type: {user_id: {"ts": …}}}}."""
        if not room_ids or (since is not None and since >= upto):
            return {}
        out: dict[str, dict[str, Any]] = {}
        for r in await store.receipts_for_rooms(room_ids, user_id, since, upto):
            data: dict[str, Any] = {"ts": r["ts"]}
            if r["thread_id"]:
                data["thread_id"] = r["thread_id"]
            (out.setdefault(r["room_id"], {}).setdefault(r["event_id"], {})
             .setdefault(r["receipt_type"], {}))[r["user_id"]] = data
        return out
