"""The XMPP bridge's tables in the bridge database, and the durable queues built on them.

- `xmpp_outbox`: Matrix events waiting to go to XMPP (one row per stanza to send, keyed by the
  event, so a redelivered transaction adds nothing).
- `xmpp_inbox`: what XMPP said, waiting to be applied to the homeserver, in arrival order.
- `xmpp_seen`: keys of MUC messages already taken (live or from history), so a message the
  room replays after a rejoin is not bridged twice.
- `xmpp_messages`: Matrix event <-> XMPP message IDs, for replies, corrections and echoes.
- `xmpp_occupants`: which Nexa users should be in which MUC, under which nick.
- `xmpp_mucs`: per MUC, the time of the newest message seen (history is asked from there on
  rejoin) and the current subject.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from bridges.appservice.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS xmpp_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe TEXT NOT NULL UNIQUE,
    op TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS xmpp_inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe TEXT NOT NULL UNIQUE,
    op TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS xmpp_seen (
    key TEXT PRIMARY KEY,
    ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS xmpp_seen_ts ON xmpp_seen (ts);
CREATE TABLE IF NOT EXISTS xmpp_messages (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    conv TEXT NOT NULL,
    xmpp_id TEXT,
    stanza_id TEXT,
    sender TEXT NOT NULL,
    nick TEXT,
    outgoing INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (room_id, event_id)
);
CREATE INDEX IF NOT EXISTS xmpp_messages_xid ON xmpp_messages (conv, xmpp_id);
CREATE INDEX IF NOT EXISTS xmpp_messages_sid ON xmpp_messages (conv, stanza_id);
CREATE INDEX IF NOT EXISTS xmpp_messages_ts ON xmpp_messages (ts);
CREATE TABLE IF NOT EXISTS xmpp_occupants (
    muc TEXT NOT NULL,
    user_id TEXT NOT NULL,
    nick TEXT NOT NULL,
    PRIMARY KEY (muc, user_id)
);
CREATE TABLE IF NOT EXISTS xmpp_mucs (
    muc TEXT PRIMARY KEY,
    last_ms INTEGER,
    subject TEXT
);
"""

SEEN_RETENTION_S = 30 * 24 * 3600
MESSAGE_RETENTION_S = 90 * 24 * 3600


class Queue:
    """One durable FIFO (xmpp_outbox or xmpp_inbox): rows are applied strictly in order; a row
    that fails for now is retried with exponential backoff and holds up the rows behind it."""

    def __init__(self, store: Store, table: str, base_ms: int, max_ms: int) -> None:
        assert table in ("xmpp_outbox", "xmpp_inbox")
        self.store = store
        self.table = table
        self.base_ms = base_ms
        self.max_ms = max_ms

    @staticmethod
    async def add_in(db: Any, table: str, dedupe: str, op: str, payload: dict) -> None:
        await db.execute(f"INSERT OR IGNORE INTO {table} (dedupe, op, payload) VALUES (?,?,?)",
                         [dedupe, op, json.dumps(payload, separators=(",", ":"))])

    async def add(self, dedupe: str, op: str, payload: dict) -> None:
        async with self.store.transaction() as db:
            await self.add_in(db, self.table, dedupe, op, payload)

    async def head(self) -> dict[str, Any] | None:
        rows = await self.store.fetch(f"SELECT * FROM {self.table} ORDER BY id LIMIT 1")
        if not rows:
            return None
        row = rows[0]
        row["payload"] = json.loads(row["payload"])
        return row

    async def done(self, row_id: int) -> None:
        await self.store.execute(f"DELETE FROM {self.table} WHERE id = ?", [row_id])

    async def retry_later(self, row: dict[str, Any]) -> float:
        attempts = row["attempts"] + 1
        ceiling = min(self.max_ms, self.base_ms * (2 ** min(attempts - 1, 30)))
        delay = (ceiling / 2 + random.random() * ceiling / 2) / 1000
        await self.store.execute(f"UPDATE {self.table} SET attempts = ?, next_at = ? "
                                 "WHERE id = ?", [attempts, time.time() + delay, row["id"]])
        row["attempts"], row["next_at"] = attempts, time.time() + delay
        return delay

    async def size(self) -> int:
        rows = await self.store.fetch(f"SELECT COUNT(*) AS n FROM {self.table}")
        return rows[0]["n"]


class XmppStore:
    """Queries on the XMPP tables (the base Store does mappings and transactions)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def prune(self) -> None:
        await self.store.execute("DELETE FROM xmpp_seen WHERE ts < ?",
                                 [int(time.time()) - SEEN_RETENTION_S])
        # Replies to and corrections of older messages are not linked any more.
        await self.store.execute("DELETE FROM xmpp_messages WHERE ts < ?",
                                 [int(time.time()) - MESSAGE_RETENTION_S])

    # --- messages ----------------------------------------------------------------------------

    async def remember_message(self, room_id: str, event_id: str, conv: str, *,
                               xmpp_id: str | None, stanza_id: str | None, sender: str,
                               nick: str | None, outgoing: bool) -> None:
        await self.store.execute(
            "INSERT INTO xmpp_messages (room_id, event_id, conv, xmpp_id, stanza_id, sender, "
            "nick, outgoing, ts) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (room_id, event_id) DO "
            "UPDATE SET xmpp_id = excluded.xmpp_id, "
            "stanza_id = COALESCE(excluded.stanza_id, stanza_id), nick = excluded.nick",
            [room_id, event_id, conv, xmpp_id, stanza_id, sender, nick, int(outgoing),
             int(time.time())])

    async def set_stanza_id(self, conv: str, xmpp_id: str, stanza_id: str) -> bool:
        async with self.store.transaction() as db:
            cur = await db.execute("UPDATE xmpp_messages SET stanza_id = ? WHERE conv = ? AND "
                                   "xmpp_id = ?", [stanza_id, conv, xmpp_id])
            return cur.rowcount > 0

    async def message_by_event(self, room_id: str, event_id: str) -> dict[str, Any] | None:
        rows = await self.store.fetch("SELECT * FROM xmpp_messages WHERE room_id = ? AND "
                                      "event_id = ?", [room_id, event_id])
        return rows[0] if rows else None

    async def message_by_xmpp_id(self, conv: str, any_id: str) -> dict[str, Any] | None:
        """By the MUC's stanza-id first, then by the sender's own id."""
        rows = await self.store.fetch(
            "SELECT * FROM xmpp_messages WHERE conv = ? AND stanza_id = ? LIMIT 1",
            [conv, any_id])
        if not rows:
            rows = await self.store.fetch(
                "SELECT * FROM xmpp_messages WHERE conv = ? AND xmpp_id = ? "
                "ORDER BY ts DESC LIMIT 1", [conv, any_id])
        return rows[0] if rows else None

    async def is_own_message(self, conv: str, xmpp_id: str | None) -> bool:
        """Did the bridge send this message (for a Nexa user)?"""
        if not xmpp_id:
            return False
        rows = await self.store.fetch(
            "SELECT 1 FROM xmpp_messages WHERE conv = ? AND xmpp_id = ? AND outgoing = 1 "
            "LIMIT 1", [conv, xmpp_id])
        return bool(rows)

    # --- occupants ---------------------------------------------------------------------------

    async def set_occupant(self, muc: str, user_id: str, nick: str) -> bool:
        """True when this changed anything."""
        async with self.store.transaction() as db:
            rows = await self.store.fetch_in(db, "SELECT nick FROM xmpp_occupants WHERE "
                                                 "muc = ? AND user_id = ?", [muc, user_id])
            if rows and rows[0]["nick"] == nick:
                return False
            await db.execute("INSERT INTO xmpp_occupants (muc, user_id, nick) VALUES (?,?,?) "
                             "ON CONFLICT (muc, user_id) DO UPDATE SET nick = excluded.nick",
                             [muc, user_id, nick])
            return True

    async def remove_occupant(self, muc: str, user_id: str) -> bool:
        async with self.store.transaction() as db:
            cur = await db.execute("DELETE FROM xmpp_occupants WHERE muc = ? AND user_id = ?",
                                   [muc, user_id])
            return cur.rowcount > 0

    async def occupant_nick(self, muc: str, user_id: str) -> str | None:
        rows = await self.store.fetch("SELECT nick FROM xmpp_occupants WHERE muc = ? AND "
                                      "user_id = ?", [muc, user_id])
        return rows[0]["nick"] if rows else None

    async def occupants(self, muc: str) -> list[tuple[str, str]]:
        rows = await self.store.fetch("SELECT user_id, nick FROM xmpp_occupants WHERE muc = ? "
                                      "ORDER BY user_id", [muc])
        return [(r["user_id"], r["nick"]) for r in rows]

    # --- MUC state ---------------------------------------------------------------------------

    async def muc_state(self, muc: str) -> dict[str, Any]:
        rows = await self.store.fetch("SELECT last_ms, subject FROM xmpp_mucs WHERE muc = ?",
                                      [muc])
        return rows[0] if rows else {"last_ms": None, "subject": None}

    @staticmethod
    async def touch_muc_in(db: Any, muc: str, ts_ms: int) -> None:
        await db.execute(
            "INSERT INTO xmpp_mucs (muc, last_ms) VALUES (?, ?) ON CONFLICT (muc) DO UPDATE SET "
            "last_ms = MAX(COALESCE(last_ms, 0), excluded.last_ms)", [muc, ts_ms])

    async def set_subject(self, muc: str, subject: str) -> None:
        await self.store.execute(
            "INSERT INTO xmpp_mucs (muc, subject) VALUES (?, ?) ON CONFLICT (muc) DO UPDATE SET "
            "subject = excluded.subject", [muc, subject])

    @staticmethod
    async def seen_in(db: Any, key: str) -> bool:
        cur = await db.execute("INSERT OR IGNORE INTO xmpp_seen (key, ts) VALUES (?, ?)",
                               [key, int(time.time())])
        return cur.rowcount == 0
