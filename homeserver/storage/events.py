"""Persisting events (one transaction per event) and reading them back by stream position.

The `json` column is sealed (storage/sealed.py): every reader goes through EventRow.from_db."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from homeserver.storage import sql
from homeserver.storage.sealed import EVENTS_JSON

EVENT_COLUMNS = (
    "stream_ordering, event_id, room_id, type, state_key, sender, depth, origin_server_ts, "
    "json, state_group, redacted_by, txn_device, txn_id"
)
READ_COLUMNS = EVENT_COLUMNS + ", outlier, soft_failed"


@dataclass(slots=True)
class EventRow:
    stream_ordering: int
    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    depth: int
    origin_server_ts: int
    pdu: dict[str, Any]
    state_group: int | None
    redacted_by: str | None = None
    txn_device: str | None = None
    txn_id: str | None = None
    outlier: bool = False
    soft_failed: bool = False

    @classmethod
    def from_db(cls, r: dict[str, Any]) -> EventRow:
        return cls(
            stream_ordering=r["stream_ordering"], event_id=r["event_id"], room_id=r["room_id"],
            type=r["type"], state_key=r["state_key"], sender=r["sender"], depth=r["depth"],
            origin_server_ts=r["origin_server_ts"],
            pdu=orjson.loads(EVENTS_JSON.open_bytes(r["json"], r["event_id"])),
            state_group=r["state_group"], redacted_by=r["redacted_by"],
            txn_device=r["txn_device"], txn_id=r["txn_id"],
            outlier=bool(r.get("outlier")), soft_failed=bool(r.get("soft_failed")),
        )

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    def pdu_for_federation(self) -> dict[str, Any]:
        """The PDU as other servers know it: our local unsigned bookkeeping stripped."""
        pdu = dict(self.pdu)
        pdu.pop("unsigned", None)
        return pdu


@dataclass
class PersistBatch:
    """Everything one event changes, written in a single transaction."""

    row: EventRow
    prev_event_ids: list[str]
    # State group to create (id, prev_group, chain_length, edits) or None to reuse one.
    new_state_group: tuple[int, int | None, int, dict[tuple[str, str], str]] | None = None
    # (type, state_key) -> event_id updates to current_state.
    current_state_delta: dict[tuple[str, str], str] = field(default_factory=dict)
    memberships: list[tuple[str, str, str, int]] = field(default_factory=list)  # user, membership, event, ordering
    txn: tuple[str, str, str] | None = None  # (user_id, device_id, txn_id)
    relation: tuple[str, str, str | None] | None = None  # (relates_to, rel_type, key)
    redacts: str | None = None
    # Timeline events move the room's forward extremities; outliers and backfill don't.
    update_extremities: bool = True
    outlier: bool = False
    soft_failed: bool = False
    # Extra statements run in the same transaction (e.g. outbound federation queue rows).
    extra: list[tuple[str, list[Any]]] = field(default_factory=list)
    # An event known so far only as an outlier now takes its place in the timeline.
    replace_outlier: bool = False


async def persist(batch: PersistBatch) -> None:
    """Write one event in a transaction of its own (the event writer batches statements_for)."""
    await sql.write_transaction(statements_for(batch))


def statements_for(batch: PersistBatch) -> list[sql.Statement]:
    """The writes of one event, for its transaction (or a batch's)."""
    r = batch.row
    sealed_json = EVENTS_JSON.seal(orjson.dumps(r.pdu), r.event_id)
    stmts: list[sql.Statement] = []
    if batch.replace_outlier:
        stmts.append(("DELETE FROM events WHERE event_id = ? AND outlier = ?",
                      [r.event_id, True]))
    stmts.append((
        f"INSERT INTO events ({EVENT_COLUMNS}, outlier, soft_failed) "
        f"VALUES ({sql.placeholders(15)})",
        [r.stream_ordering, r.event_id, r.room_id, r.type, r.state_key, r.sender, r.depth,
         r.origin_server_ts, sealed_json, r.state_group, None, r.txn_device, r.txn_id,
         batch.outlier, batch.soft_failed],
    ))
    if not batch.outlier:
        stmts.append(sql.many(
            "INSERT INTO event_edges (event_id, prev_event_id, room_id) VALUES (?,?,?)",
            [(r.event_id, p, r.room_id) for p in batch.prev_event_ids],
        ))
    if batch.update_extremities:
        if batch.prev_event_ids:
            stmts.append((
                "DELETE FROM forward_extremities WHERE room_id = ? AND event_id IN "
                f"({sql.placeholders(len(batch.prev_event_ids))})",
                [r.room_id, *batch.prev_event_ids],
            ))
        stmts.append((
            "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)",
            [r.room_id, r.event_id],
        ))
    if batch.new_state_group is not None:
        gid, prev, chain, edits = batch.new_state_group
        stmts.append((
            "INSERT INTO state_groups (id, room_id, prev_group, chain_length) VALUES (?,?,?,?)",
            [gid, r.room_id, prev, chain],
        ))
        stmts.append(sql.many(
            "INSERT INTO state_group_edits (state_group, type, state_key, event_id) "
            "VALUES (?,?,?,?)",
            [(gid, t, sk, eid) for (t, sk), eid in edits.items()],
        ))
    for (t, sk), eid in batch.current_state_delta.items():
        stmts.append((
            "INSERT INTO current_state (room_id, type, state_key, event_id) VALUES (?,?,?,?) "
            "ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id",
            [r.room_id, t, sk, eid],
        ))
    for user_id, membership, event_id, ordering in batch.memberships:
        stmts.append(membership_statement(r.room_id, user_id, membership, event_id, ordering))
    if batch.txn is not None:
        stmts.append((
            "INSERT INTO event_txns (user_id, device_id, txn_id, event_id, created_ts) "
            "VALUES (?,?,?,?,?)",
            [*batch.txn, r.event_id, r.origin_server_ts],
        ))
    if batch.relation is not None:
        rel_to, rel_type, key = batch.relation
        stmts.append((
            "INSERT INTO event_relations (event_id, relates_to_id, rel_type, aggregation_key, "
            "room_id, sender) VALUES (?,?,?,?,?,?)",
            [r.event_id, rel_to, rel_type, key, r.room_id, r.sender],
        ))
    if batch.redacts is not None:
        stmts.append((
            "UPDATE events SET redacted_by = ? WHERE event_id = ? AND room_id = ?",
            [r.event_id, batch.redacts, r.room_id],
        ))
    stmts.extend(batch.extra)
    return stmts


def membership_statement(room_id: str, user_id: str, membership: str, event_id: str,
                         ordering: int) -> tuple[str, list[Any]]:
    """A user's membership row in a room, inserted or replaced."""
    return (
        "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_ordering, "
        "forgotten) VALUES (?,?,?,?,?,?) ON CONFLICT (room_id, user_id) DO UPDATE SET "
        "membership = excluded.membership, event_id = excluded.event_id, "
        "stream_ordering = excluded.stream_ordering, forgotten = excluded.forgotten",
        [room_id, user_id, membership, event_id, ordering, False])


async def get_txn_event_id(user_id: str, device_id: str, txn_id: str) -> str | None:
    rows = await sql.fetch(
        "SELECT event_id FROM event_txns WHERE user_id = ? AND device_id = ? AND txn_id = ?",
        [user_id, device_id, txn_id],
    )
    return rows[0]["event_id"] if rows else None


async def get_events(event_ids: Iterable[str]) -> dict[str, EventRow]:
    ids = list(dict.fromkeys(event_ids))
    out: dict[str, EventRow] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        rows = await sql.fetch(
            f"SELECT {READ_COLUMNS} FROM events WHERE event_id IN ({sql.placeholders(len(chunk))})",
            chunk,
        )
        for r in rows:
            out[r["event_id"]] = EventRow.from_db(r)
    return out


async def get_events_by_time(room_id: str, ts: int, forward: bool, limit: int,
                             past: tuple[int, int] | None = None) -> list[EventRow]:
    """Timeline events of a room from `ts` on (forward: origin_server_ts >= ts, oldest first)
    or back from it (<= ts, newest first), up to `limit`; `past` (origin_server_ts,
    stream_ordering) continues after the last event of an earlier page."""
    op, order = (">=", "ASC") if forward else ("<=", "DESC")
    where = f"room_id = ? AND outlier = ? AND soft_failed = ? AND origin_server_ts {op} ?"
    values: list[Any] = [room_id, False, False, ts]
    if past is not None:
        beyond = ">" if forward else "<"
        where += (f" AND (origin_server_ts {beyond} ? OR (origin_server_ts = ? AND "
                  f"stream_ordering {beyond} ?))")
        values += [past[0], past[0], past[1]]
    rows = await sql.fetch(
        f"SELECT {READ_COLUMNS} FROM events WHERE {where} "
        f"ORDER BY origin_server_ts {order}, stream_ordering {order} LIMIT ?", [*values, limit])
    return [EventRow.from_db(r) for r in rows]


async def get_room_events(
    room_id: str, *, after: int | None = None, before: int | None = None, limit: int,
    newest_first: bool, types: list[str] | None = None, not_types: list[str] | None = None,
    senders: list[str] | None = None, not_senders: list[str] | None = None,
) -> list[EventRow]:
    """Events of one room with stream ordering in (after, before], ordered as asked."""
    where = ["room_id = ?", "outlier = ?", "soft_failed = ?"]
    values: list[Any] = [room_id, False, False]
    if after is not None:
        where.append("stream_ordering > ?")
        values.append(after)
    if before is not None:
        where.append("stream_ordering <= ?")
        values.append(before)
    for col, items, neg in (("type", types, False), ("type", not_types, True),
                            ("sender", senders, False), ("sender", not_senders, True)):
        if items is not None:
            if not items:
                if not neg:
                    return []
                continue
            where.append(f"{col} {'NOT ' if neg else ''}IN ({sql.placeholders(len(items))})")
            values.extend(items)
    order = "DESC" if newest_first else "ASC"
    rows = await sql.fetch(
        f"SELECT {READ_COLUMNS} FROM events WHERE {' AND '.join(where)} "
        f"ORDER BY stream_ordering {order} LIMIT ?",
        [*values, limit],
    )
    return [EventRow.from_db(r) for r in rows]


async def rooms_with_events_between(room_ids: list[str], after: int, upto: int) -> dict[str, int]:
    """room_id -> newest stream ordering in (after, upto], for rooms that had any."""
    if not room_ids:
        return {}
    out: dict[str, int] = {}
    for i in range(0, len(room_ids), 500):
        chunk = room_ids[i:i + 500]
        rows = await sql.fetch(
            "SELECT room_id, MAX(stream_ordering) AS m FROM events WHERE stream_ordering > ? AND "
            f"stream_ordering <= ? AND room_id IN ({sql.placeholders(len(chunk))}) "
            "AND outlier = ? AND soft_failed = ? GROUP BY room_id",
            [after, upto, *chunk, False, False],
        )
        out.update({r["room_id"]: r["m"] for r in rows})
    return out


async def latest_orderings(room_ids: list[str]) -> dict[str, int]:
    return await rooms_with_events_between(room_ids, -(2**62), 2**62)


async def known_event_ids(event_ids: Iterable[str]) -> set[str]:
    ids = list(dict.fromkeys(event_ids))
    out: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        rows = await sql.fetch(
            f"SELECT event_id FROM events WHERE event_id IN ({sql.placeholders(len(chunk))})", chunk)
        out.update(r["event_id"] for r in rows)
    return out


async def timeline_event_ids(event_ids: Iterable[str]) -> set[str]:
    """Those of the events we hold as part of the timeline (not only as outliers)."""
    ids = list(dict.fromkeys(event_ids))
    out: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        rows = await sql.fetch(
            f"SELECT event_id FROM events WHERE event_id IN ({sql.placeholders(len(chunk))}) "
            "AND outlier = ?", [*chunk, False])
        out.update(r["event_id"] for r in rows)
    return out


async def min_stream_ordering() -> int:
    rows = await sql.fetch("SELECT MIN(stream_ordering) AS m FROM events")
    return int(rows[0]["m"] or 0) if rows else 0


async def get_extremities(room_id: str) -> list[str]:
    rows = await sql.fetch("SELECT event_id FROM forward_extremities WHERE room_id = ?", [room_id])
    return [r["event_id"] for r in rows]


async def state_events_between(room_id: str, after: int, upto: int) -> list[EventRow]:
    rows = await sql.fetch(
        f"SELECT {READ_COLUMNS} FROM events WHERE room_id = ? AND stream_ordering > ? AND "
        "stream_ordering <= ? AND state_key IS NOT NULL AND outlier = ? AND soft_failed = ? "
        "ORDER BY stream_ordering",
        [room_id, after, upto, False, False],
    )
    return [EventRow.from_db(r) for r in rows]


async def get_relation_events(
    parent_id: str, room_id: str, *, rel_type: str | None, event_type: str | None,
    after: int | None, before: int | None, limit: int, newest_first: bool,
) -> list[EventRow]:
    """Timeline events of `room_id` relating to `parent_id` (not redacted), with stream
    ordering in (after, before], ordered as asked."""
    cols = ", ".join(f"e.{c.strip()}" for c in READ_COLUMNS.split(","))
    where = ["r.relates_to_id = ?", "e.room_id = ?", "e.outlier = ?", "e.soft_failed = ?",
             "e.redacted_by IS NULL"]
    values: list[Any] = [parent_id, room_id, False, False]
    for clause, value in (("r.rel_type = ?", rel_type), ("e.type = ?", event_type),
                          ("e.stream_ordering > ?", after), ("e.stream_ordering <= ?", before)):
        if value is not None:
            where.append(clause)
            values.append(value)
    rows = await sql.fetch(
        f"SELECT {cols} FROM event_relations r JOIN events e ON e.event_id = r.event_id "
        f"WHERE {' AND '.join(where)} "
        f"ORDER BY e.stream_ordering {'DESC' if newest_first else 'ASC'} LIMIT ?",
        [*values, limit],
    )
    return [EventRow.from_db(r) for r in rows]


# 1 when the user started the thread or replied in it (two parameters: the user, twice).
_MINE = "MAX(CASE WHEN e.sender = ? OR root.sender = ? THEN 1 ELSE 0 END)"


def _thread_query(user_id: str, where: list[str], values: list[Any], bound: int | None,
                  having: list[str], having_values: list[Any]) -> tuple[str, list[Any]]:
    """Threads grouped by root: {root, latest (stream ordering of the newest reply), count
    (replies), mine (1 if `user_id` started or replied to it)}; redacted, soft-failed and
    (past `bound`) later replies left out."""
    where = [*where, "r.rel_type = ?", "e.outlier = ?", "e.soft_failed = ?",
             "e.redacted_by IS NULL"]
    values = [*values, "m.thread", False, False]
    if bound is not None:
        where.append("e.stream_ordering <= ?")
        values.append(bound)
    return (
        f"SELECT r.relates_to_id AS root, MAX(e.stream_ordering) AS latest, "
        f"COUNT(*) AS count, {_MINE} AS mine "
        "FROM event_relations r JOIN events e ON e.event_id = r.event_id "
        "JOIN events root ON root.event_id = r.relates_to_id AND root.room_id = r.room_id "
        f"WHERE {' AND '.join(where)} GROUP BY r.relates_to_id "
        + (f"HAVING {' AND '.join(having)} " if having else ""),
        [user_id, user_id, *values, *having_values])


async def get_threads(room_id: str, user_id: str, *, before: int | None, bound: int | None,
                      participated_only: bool, limit: int) -> list[dict[str, Any]]:
    """A room's threads (see _thread_query), most recently active first. `before`: only
    threads whose newest reply is older (pagination); `participated_only`: only `mine`."""
    having, having_values = [], []
    if before is not None:
        having.append("MAX(e.stream_ordering) < ?")
        having_values.append(before)
    if participated_only:
        having.append(f"{_MINE} = 1")
        having_values += [user_id, user_id]
    query, values = _thread_query(user_id, ["r.room_id = ?"], [room_id], bound, having,
                                  having_values)
    return await sql.fetch(query + "ORDER BY latest DESC LIMIT ?", [*values, limit])


async def get_thread_summaries(root_ids: list[str], user_id: str, bound: int | None
                               ) -> list[dict[str, Any]]:
    """The threads (see _thread_query) of those of these events that are thread roots."""
    out: list[dict[str, Any]] = []
    for i in range(0, len(root_ids), 500):
        chunk = root_ids[i:i + 500]
        query, values = _thread_query(
            user_id, [f"r.relates_to_id IN ({sql.placeholders(len(chunk))})"], chunk, bound,
            [], [])
        out += await sql.fetch(query, values)
    return out


async def event_ids_at(orderings: list[int]) -> dict[int, str]:
    """stream ordering -> event ID."""
    if not orderings:
        return {}
    rows = await sql.fetch(
        f"SELECT stream_ordering, event_id FROM events WHERE stream_ordering IN "
        f"({sql.placeholders(len(orderings))})", orderings)
    return {r["stream_ordering"]: r["event_id"] for r in rows}
