"""Upgrading a database made by an earlier schema version keeps every row."""

from __future__ import annotations

from tortoise.migrations.executor import MigrationExecutor, MigrationTarget

from homeserver.storage import sql
from homeserver.storage.database import Database
from tests.servers import create_pg_database, drop_pg_database


async def _make_v1_database(db: Database) -> None:
    await db.ctx.init(config=db.config)
    executor = MigrationExecutor(db.ctx.db(), {"models": db.config["apps"]["models"]})
    await executor.migrate([MigrationTarget("models", "0001_initial")])
    await sql.execute("INSERT INTO users (user_id, password_hash, is_admin, deactivated, "
                      "searchable, invite_policy, created_ts) VALUES (?,?,?,?,?,?,?)",
                      ["@old:hs", "hash", False, False, True, "anyone", 1])
    await sql.execute("INSERT INTO events (stream_ordering, event_id, room_id, type, sender, "
                      "depth, origin_server_ts, json) VALUES (?,?,?,?,?,?,?,?)",
                      [1, "$e1", "!r:hs", "m.room.message", "@old:hs", 1, 5, '{"a": 1}'])
    cols = await sql.fetch("SELECT * FROM events")
    assert "outlier" not in cols[0]  # really the old schema


async def _check_upgrade(url: str) -> None:
    old = Database(url)
    token = old.activate()
    try:
        await _make_v1_database(old)
    finally:
        old.deactivate(token)
        await old.close()

    new = Database(url)
    await new.open()  # migrates to the latest version
    token = new.activate()
    try:
        users = await sql.fetch("SELECT user_id, password_hash FROM users")
        assert users == [{"user_id": "@old:hs", "password_hash": "hash"}]
        events = await sql.fetch("SELECT event_id, json, outlier, soft_failed FROM events")
        assert len(events) == 1 and events[0]["event_id"] == "$e1"
        assert events[0]["json"] == '{"a": 1}'
        assert not events[0]["outlier"] and not events[0]["soft_failed"]
        # New tables exist and work.
        await sql.execute("INSERT INTO federation_destinations (destination, retry_at_ts, "
                          "backoff_ms) VALUES (?,?,?)", ["other:1", 0, 0])
        # 0010: events by room and time (/timestamp_to_event); 0011: a room's threads.
        for table, columns in (("events", "room_id, origin_server_ts"),
                               ("event_relations", "room_id, rel_type")):
            if url.startswith("sqlite"):
                indexes = await sql.fetch("SELECT sql AS d FROM sqlite_master WHERE type = "
                                          "'index' AND tbl_name = ? AND sql IS NOT NULL", [table])
            else:
                indexes = await sql.fetch("SELECT indexdef AS d FROM pg_indexes "
                                          "WHERE tablename = ?", [table])
            assert any(columns in r["d"].replace('"', "") for r in indexes), (table, indexes)
        await sql.execute("INSERT INTO notification_counts (user_id, room_id, "
                          "notification_count, highlight_count, reset_ordering, last_ordering) "
                          "VALUES (?,?,?,?,?,?)", ["@old:hs", "!r:hs", 1, 0, 0, 1])
    finally:
        new.deactivate(token)
        await new.close()


async def test_sqlite_upgrade_keeps_data(tmp_path):
    await _check_upgrade(f"sqlite://{tmp_path / 'old.db'}")


async def test_postgres_upgrade_keeps_data(backend):
    if backend != "postgres":
        return  # covered by the PostgreSQL pass of the suite
    name, url = await create_pg_database()
    try:
        await _check_upgrade(url)
    finally:
        await drop_pg_database(name)
