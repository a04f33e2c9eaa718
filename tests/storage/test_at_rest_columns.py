"""The sealed columns through the storage layer, on a real database (SQLite file or
PostgreSQL): writers seal, readers open, the raw rows hold no plaintext, legacy plaintext rows
still read, and re-sealing (storage/rekey.py) moves every value to the newest key."""

from __future__ import annotations

import pytest

from homeserver.crypto import keystore
from homeserver.crypto.at_rest import DecryptionError, sealed_key_id
from homeserver.crypto.keystore import LiveKeyring
from homeserver.storage import appservice as as_store
from homeserver.storage import e2e as e2e_store
from homeserver.storage import events as event_store
from homeserver.storage import federation_queue as fed_queue
from homeserver.storage import sql
from homeserver.storage import userdata
from homeserver.storage.media import MediaStore
from homeserver.storage.rekey import count_not_current, reseal_column, reseal_everything
from homeserver.storage.sealed import EVENTS_JSON, SEALED_COLUMNS
from tests.servers import open_database

SECRET = "the-password-is-swordfish"


@pytest.fixture
async def db(backend, tmp_path):
    live = LiveKeyring.load(tmp_path / "at_rest.key", environ={})
    async with open_database(backend, tmp_path, at_rest=live) as database:
        yield database


def event_row(n: int, body: str) -> event_store.EventRow:
    event_id = f"$event{n}"
    pdu = {"type": "m.room.message", "room_id": "!r:hs", "sender": "@a:hs", "depth": n,
           "origin_server_ts": n, "content": {"msgtype": "m.text", "body": body}}
    return event_store.EventRow(
        stream_ordering=n, event_id=event_id, room_id="!r:hs", type="m.room.message",
        state_key=None, sender="@a:hs", depth=n, origin_server_ts=n, pdu=pdu, state_group=None)


async def write_everything(tag: str) -> None:
    for n in range(1, 4):
        await event_store.persist(event_store.PersistBatch(row=event_row(n, f"{SECRET} {tag}"),
                                                           prev_event_ids=[]))
    await userdata.upsert_account_data("@a:hs", "!r:hs", "im.nexa.draft",
                                       f'{{"body": "{SECRET} {tag}"}}', 1)
    await as_store.create_txn("bridge", "txn1", f'{{"events": ["{SECRET} {tag}"]}}', 1, [])
    await fed_queue.queue_edus([("other:8448", f'{{"edu_type": "x", "c": "{SECRET} {tag}"}}')])
    await e2e_store.add_inbox_messages([(1, "@b:hs", "DEV", "@a:hs", "m.test",
                                         f'{{"t": "{SECRET} {tag}"}}')])


async def read_everything() -> list[str]:
    """Every sealed value as the server reads it."""
    out = [r.pdu["content"]["body"]
           for r in (await event_store.get_events([f"$event{n}" for n in range(1, 4)])).values()]
    out.append(await userdata.get_account_data("@a:hs", "!r:hs", "im.nexa.draft"))
    out += [r["content"] for r in await userdata.account_data_changes("@a:hs", None, 10)]
    out.append((await as_store.pending_txn("bridge"))["body_json"])
    out += [r["edu_json"] for r in await fed_queue.unsent_rows("other:8448", 10, 10)]
    out += [r["content"] for r in await e2e_store.get_inbox_messages("@b:hs", "DEV", 0, 5, 10)]
    return out


async def raw_values() -> list[str]:
    out = []
    for col in SEALED_COLUMNS:
        out += [r["v"] for r in await sql.fetch(f"SELECT {col.column} AS v FROM {col.table}")
                if r["v"] is not None]
    return out


async def test_columns_are_sealed_and_read_back(db):
    await write_everything("now")
    values = await read_everything()
    assert len(values) == 8 and all(SECRET in v for v in values)
    raw = await raw_values()
    assert len(raw) == 7
    current = db.at_rest.ring.current_id
    assert all(sealed_key_id(v) == current for v in raw)
    assert not any(SECRET in v for v in raw)


async def test_a_value_moved_to_another_row_does_not_open(db):
    await write_everything("now")
    rows = await sql.fetch("SELECT event_id, json FROM events ORDER BY stream_ordering")
    await sql.execute("UPDATE events SET json = ? WHERE event_id = ?",
                      [rows[0]["json"], rows[1]["event_id"]])
    with pytest.raises(DecryptionError):
        await event_store.get_events([rows[1]["event_id"]])


async def test_legacy_rows_read_and_get_sealed_by_rekey(db, tmp_path):
    await write_everything("sealed")
    # Rows written before encryption at rest: plaintext in the same columns.
    legacy = '{"type": "m.room.message", "content": {"body": "%s legacy"}}' % SECRET
    await sql.execute("UPDATE events SET json = ? WHERE event_id = ?", [legacy, "$event2"])
    await sql.execute("UPDATE account_data SET content = ?", ['{"body": "%s legacy"}' % SECRET])
    got = await event_store.get_events(["$event2"])
    assert got["$event2"].pdu["content"]["body"] == f"{SECRET} legacy"
    assert await userdata.get_account_data("@a:hs", "!r:hs", "im.nexa.draft") == \
        '{"body": "%s legacy"}' % SECRET
    old = db.at_rest.ring.current_id
    assert await count_not_current(EVENTS_JSON) == 1

    # A new key: every value (legacy ones included) is re-sealed under it.
    new = keystore.add_key(db.at_rest.path).current_id
    assert db.at_rest.reload_if_changed()
    assert await count_not_current(EVENTS_JSON) == 3
    assert await reseal_column(EVENTS_JSON, batch=2) == 3
    report = await reseal_everything(MediaStore(tmp_path / "media", lambda: db.at_rest),
                                     key_added_at=0.0, grace_s=0.0, batch=2)
    assert report.key_id == new and report.passes == 2  # the second one finds nothing
    assert report.rows["account_data.content"] == 1 and report.files == 0
    raw = await raw_values()
    assert all(sealed_key_id(v) == new for v in raw) and not any(SECRET in v for v in raw)
    assert all(SECRET in v for v in await read_everything())

    # The old key can go: nothing needs it any more.
    keystore.retire_old_keys(db.at_rest.path, new)
    db.at_rest.reload_if_changed()
    assert db.at_rest.ring.ids == [new] and old not in db.at_rest.ring
    assert all(SECRET in v for v in await read_everything())
