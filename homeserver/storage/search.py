"""The blind search index (table search_index, storage/models_search.py): its rows are written
in the transaction of the event they index (handlers/search.py gives the statements to the
event pipeline), deleted with a redaction, and read by the AND query of /search.

A row holds a keyed hash of one word, never the word: see events/search_tokens.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from homeserver.events.search_tokens import SEARCHABLE_TYPES, event_tokens
from homeserver.storage import sql
from homeserver.storage.events import READ_COLUMNS, EventRow
from homeserver.storage.transactions import in_transaction

ROWS_PER_STATEMENT = 100
_E_COLUMNS = ", ".join(f"e.{c.strip()}" for c in READ_COLUMNS.split(","))
_ROW = "(?,?,?,?,?,?)"


def insert_statements(event_id: str, room_id: str, ordering: int, field: int,
                      hashes: list[str]) -> list[tuple[str, list[Any]]]:
    """Index rows of an event, for its own transaction."""
    out = []
    for i in range(0, len(hashes), ROWS_PER_STATEMENT):
        chunk = hashes[i:i + ROWS_PER_STATEMENT]
        values: list[Any] = []
        for h in chunk:
            values.extend((h, event_id, room_id, field, len(hashes), ordering))
        out.append(("INSERT INTO search_index (token_hash, event_id, room_id, field, tokens, "
                    f"stream_ordering) VALUES {','.join([_ROW] * len(chunk))}",
                    values))
    return out


def delete_statement(event_id: str, room_id: str) -> tuple[str, list[Any]]:
    return ("DELETE FROM search_index WHERE event_id = ? AND room_id = ?", [event_id, room_id])


@dataclass(frozen=True)
class Query:
    """What one /search looks for, and where: only rooms `user_id` has a (not forgotten)
    membership in; in a room they left or were banned from, only up to that point unless the
    room is in `readable_left` (world-readable). Visibility is checked again afterwards
    (handlers/visibility.py): this only keeps the candidates few. The count, which is not
    checked event by event, also leaves out what came before the user's membership in the
    `members_only` rooms (history visible to members only) and the `unreadable` rooms (an
    invitation to a room that shows nothing before joining), so it does not tell what is in
    history they cannot read."""

    hashes: tuple[str, ...]  # distinct: an event matches when it has every one
    fields: tuple[int, ...]
    user_id: str
    by_rank: bool
    readable_left: tuple[str, ...] = ()
    members_only: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()


# A position in the result order: (tokens of the event's field, stream ordering). Recent
# order uses only the ordering; rank order puts events with fewer words first (the search
# words are a larger part of them), newest first among equals.
Cursor = tuple[int, int]


def _in(column: str, items: tuple[Any, ...], negate: bool = False) -> str:
    return f"{column} {'NOT ' if negate else ''}IN ({sql.placeholders(len(items))})"


def _matches(q: Query, cursor: Cursor | None, counting: bool) -> tuple[str, list[Any]]:
    """The events that have every word: (stream ordering `so`, their field's `tokens`)."""
    where = [_in("s.token_hash", q.hashes), _in("s.field", q.fields)]
    values: list[Any] = [q.user_id, False, *q.hashes, *q.fields]
    readable = "s.stream_ordering <= rm.stream_ordering"
    if q.readable_left:
        readable += f" OR {_in('s.room_id', q.readable_left)}"
        values.extend(q.readable_left)
    where.append(f"(rm.membership IN ('join', 'invite') OR {readable})")
    if counting and q.members_only:
        where.append(f"NOT ({_in('s.room_id', q.members_only)} "
                     "AND s.stream_ordering < rm.stream_ordering)")
        values.extend(q.members_only)
    if counting and q.unreadable:
        where.append(_in("s.room_id", q.unreadable, negate=True))
        values.extend(q.unreadable)
    if q.rooms is not None:
        where.append(_in("s.room_id", q.rooms))
        values.extend(q.rooms)
    if q.not_rooms:
        where.append(_in("s.room_id", q.not_rooms, negate=True))
        values.extend(q.not_rooms)
    if cursor is not None:
        tokens, so = cursor
        if q.by_rank:
            where.append("(s.tokens > ? OR (s.tokens = ? AND s.stream_ordering < ?))")
            values.extend((tokens, tokens, so))
        else:
            where.append("s.stream_ordering < ?")
            values.append(so)
    values.append(len(q.hashes))
    return ("SELECT s.stream_ordering AS so, MIN(s.tokens) AS tokens FROM search_index s "
            "JOIN room_memberships rm ON rm.room_id = s.room_id AND rm.user_id = ? "
            f"AND rm.forgotten = ? WHERE {' AND '.join(where)} GROUP BY s.stream_ordering "
            "HAVING COUNT(DISTINCT s.token_hash) = ?", values)


def _events_of(q: Query, cursor: Cursor | None, counting: bool = False
               ) -> tuple[str, list[Any]]:
    inner, values = _matches(q, cursor, counting)
    where = ["e.redacted_by IS NULL", "e.outlier = ?", "e.soft_failed = ?"]
    values.extend((False, False))
    if q.senders is not None:
        where.append(_in("e.sender", q.senders))
        values.extend(q.senders)
    if q.not_senders:
        where.append(_in("e.sender", q.not_senders, negate=True))
        values.extend(q.not_senders)
    return (f"FROM ({inner}) m JOIN events e ON e.stream_ordering = m.so "
            f"WHERE {' AND '.join(where)}", values)


async def find(q: Query, cursor: Cursor | None, limit: int) -> list[tuple[EventRow, int]]:
    """Up to `limit` matching events after `cursor`, in result order, each with the number
    of distinct words of its field."""
    if not q.hashes or not q.fields or q.rooms == ():
        return []
    body, values = _events_of(q, cursor)
    order = "m.tokens ASC, m.so DESC" if q.by_rank else "m.so DESC"
    rows = await sql.fetch(f"SELECT {_E_COLUMNS}, m.tokens AS match_tokens {body} "
                           f"ORDER BY {order} LIMIT ?", [*values, limit])
    return [(EventRow.from_db(r), r["match_tokens"]) for r in rows]


async def count(q: Query) -> int:
    """How many events match: an estimate, as the spec allows (visibility is not checked
    event by event)."""
    if not q.hashes or not q.fields or q.rooms == ():
        return 0
    body, values = _events_of(q, None, counting=True)
    rows = await sql.fetch(f"SELECT COUNT(*) AS n {body}", values)
    return int(rows[0]["n"]) if rows else 0


async def index_is_empty() -> bool:
    return not await sql.fetch("SELECT id FROM search_index LIMIT 1")


async def has_searchable_events() -> bool:
    rows = await sql.fetch(
        f"SELECT event_id FROM events WHERE {_in('type', SEARCHABLE_TYPES)} AND outlier = ? "
        "LIMIT 1", [*SEARCHABLE_TYPES, False])
    return bool(rows)


async def reindex(key: bytes, *, batch: int = 500,
                  progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Rebuild the rows of every searchable timeline event under `key`, oldest first, in one
    short transaction per `batch` events: each event's old rows (under any key) are replaced,
    so searching keeps working meanwhile and a running server may go on adding rows.
    Redacted events lose theirs. Returns (events indexed, rows written)."""
    rows_min = await sql.fetch("SELECT MIN(stream_ordering) AS m FROM events")
    after = int(rows_min[0]["m"] or 0) - 1 if rows_min else -1
    indexed = written = 0
    types = list(SEARCHABLE_TYPES)
    while True:
        found = await sql.fetch(
            f"SELECT {READ_COLUMNS} FROM events WHERE stream_ordering > ? AND "
            f"{_in('type', SEARCHABLE_TYPES)} AND outlier = ? AND soft_failed = ? "
            "ORDER BY stream_ordering LIMIT ?", [after, *types, False, False, batch])
        if not found:
            return indexed, written
        after = found[-1]["stream_ordering"]
        events = [EventRow.from_db(r) for r in found]
        new_rows: list[tuple[Any, ...]] = []
        for ev in events:
            tokens = None if ev.redacted_by else event_tokens(key, ev.pdu)
            if tokens is None:
                continue
            field, hashes = tokens
            indexed += 1
            new_rows.extend((h, ev.event_id, ev.room_id, field, len(hashes), ev.stream_ordering)
                            for h in hashes)
        ids = [ev.event_id for ev in events]
        async with in_transaction() as conn:
            await sql.execute(f"DELETE FROM search_index WHERE {_in('event_id', tuple(ids))}",
                              ids, conn)
            await sql.execute_many(
                "INSERT INTO search_index (token_hash, event_id, room_id, field, tokens, "
                "stream_ordering) VALUES (?,?,?,?,?,?)", new_rows, conn)
        written += len(new_rows)
        if progress is not None:
            progress(indexed, written)
