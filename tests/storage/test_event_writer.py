"""The event writer (handlers/event_writer.py): queued writes commit in order, several in one
transaction; a failing write fails alone; a write built on a failed one is refused; closing
commits what is queued. On both backends."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from tortoise.exceptions import IntegrityError

from homeserver.handlers.event_writer import EventWriter, StaleWrite, Write
from homeserver.storage import sql
from tests.servers import open_database

INSERT = "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)"


async def stored() -> list[str]:
    rows = await sql.fetch("SELECT event_id FROM forward_extremities ORDER BY event_id")
    return [r["event_id"] for r in rows]


def writer_for(db) -> EventWriter:
    return EventWriter(SimpleNamespace(db=db), asyncio.Lock())


async def test_queued_writes_commit_in_order_in_one_transaction(backend, tmp_path, monkeypatch):
    async with open_database(backend, tmp_path) as db:
        transactions = []
        real = sql.write_transaction

        async def counting(statements):
            transactions.append(len(statements))
            await real(statements)

        monkeypatch.setattr(sql, "write_transaction", counting)
        writer = writer_for(db)
        applied: list[str] = []
        writes = [writer.queue(Write([(INSERT, ["!r:hs", f"${i}"])],
                                     on_commit=lambda i=i: applied.append(f"${i}")))
                  for i in range(5)]
        for w in writes:
            await writer.committed(w)
        assert applied == ["$0", "$1", "$2", "$3", "$4"]  # the caches follow in queue order
        assert transactions == [5]  # all five waited together: one commit for them all
        assert await stored() == ["$0", "$1", "$2", "$3", "$4"]
        await writer.close()


async def test_a_failing_write_fails_alone(backend, tmp_path):
    async with open_database(backend, tmp_path) as db:
        writer = writer_for(db)
        failed: list[BaseException] = []
        applied: list[str] = []
        good1 = writer.queue(Write([(INSERT, ["!r:hs", "$a"])],
                                   on_commit=lambda: applied.append("a")))
        bad = writer.queue(Write([(INSERT, ["!r:hs", "$b"]), (INSERT, ["!r:hs", None])],
                                 on_commit=lambda: applied.append("bad"),
                                 on_fail=failed.append))
        good2 = writer.queue(Write([(INSERT, ["!r:hs", "$c"])],
                                   on_commit=lambda: applied.append("c")))
        await writer.committed(good1)
        with pytest.raises(IntegrityError):
            await writer.committed(bad)
        await writer.committed(good2)
        assert applied == ["a", "c"]
        assert len(failed) == 1 and isinstance(failed[0], IntegrityError)
        assert await stored() == ["$a", "$c"]  # nothing of the failed write ($b) is left
        await writer.close()


async def test_a_write_built_on_a_failed_one_is_refused(backend, tmp_path):
    async with open_database(backend, tmp_path) as db:
        writer = writer_for(db)
        epoch = {"room": 0}

        def room_failed(_error: BaseException) -> None:
            epoch["room"] += 1

        refused: list[BaseException] = []
        bad = writer.queue(Write([(INSERT, ["!r:hs", None])], on_fail=room_failed))
        built_on_it = writer.queue(Write([(INSERT, ["!r:hs", "$after"])],
                                         on_fail=refused.append,
                                         stale=lambda: epoch["room"] != 0))
        other_room = writer.queue(Write([(INSERT, ["!other:hs", "$other"])]))
        with pytest.raises(IntegrityError):
            await writer.committed(bad)
        with pytest.raises(StaleWrite):
            await writer.committed(built_on_it)
        await writer.committed(other_room)
        assert len(refused) == 1 and isinstance(refused[0], StaleWrite)
        assert await stored() == ["$other"]
        await writer.close()


async def test_closing_commits_what_is_queued(backend, tmp_path):
    async with open_database(backend, tmp_path) as db:
        writer = writer_for(db)
        writes = [writer.queue(Write([(INSERT, ["!r:hs", f"${i}"])])) for i in range(3)]
        await writer.close()
        assert all(w.done.done() and w.done.exception() is None for w in writes)
        assert await stored() == ["$0", "$1", "$2"]
        with pytest.raises(RuntimeError):
            writer.queue(Write([(INSERT, ["!r:hs", "$late"])]))
