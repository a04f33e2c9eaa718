"""Queries for end-to-end encryption: keys, the device list stream, the remote device list
cache, the to-device inbox and key backups.

Writes take an optional `conn` so a handler can run several of them in one transaction (and,
for stream rows, under the stream's lock so positions become visible in order).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from homeserver.storage import sql
from homeserver.storage.sealed import DEVICE_INBOX
from homeserver.types import now_ms

CHUNK = 500


def _chunks(items: Sequence[Any], n: int = CHUNK) -> Iterable[list[Any]]:
    items = list(items)
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _is_postgres(conn=None) -> bool:
    conn = conn or sql._conn()
    return conn.capabilities.dialect == "postgres"


# --- device keys ---------------------------------------------------------------------------

async def get_device_keys(user_id: str, device_id: str, conn=None) -> str | None:
    rows = await sql.fetch("SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND "
                           "device_id = ?", [user_id, device_id], conn)
    return rows[0]["key_json"] if rows else None


async def get_users_device_keys(user_ids: list[str]) -> list[dict[str, Any]]:
    """Keys of existing devices of these users: user_id, device_id, key_json, display_name."""
    out: list[dict[str, Any]] = []
    for chunk in _chunks(user_ids):
        out += await sql.fetch(
            "SELECT k.user_id, k.device_id, k.key_json, d.display_name FROM e2e_device_keys k "
            "JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id "
            f"WHERE k.user_id IN ({sql.placeholders(len(chunk))}) ORDER BY k.user_id, k.device_id",
            chunk)
    return out


async def upsert_device_keys(user_id: str, device_id: str, key_json: str, conn=None) -> None:
    await sql.execute(
        "INSERT INTO e2e_device_keys (user_id, device_id, key_json, ts) VALUES (?,?,?,?) "
        "ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json, "
        "ts = excluded.ts", [user_id, device_id, key_json, now_ms()], conn)


async def orphaned_key_devices(user_id: str) -> list[str]:
    """Devices of the user that have keys, an inbox or a fallback key but no longer exist."""
    rows = await sql.fetch(
        "SELECT device_id FROM e2e_device_keys WHERE user_id = ? AND device_id NOT IN "
        "(SELECT device_id FROM devices WHERE user_id = ?) "
        "UNION SELECT device_id FROM e2e_one_time_keys WHERE user_id = ? AND device_id NOT IN "
        "(SELECT device_id FROM devices WHERE user_id = ?) "
        "UNION SELECT device_id FROM e2e_fallback_keys WHERE user_id = ? AND device_id NOT IN "
        "(SELECT device_id FROM devices WHERE user_id = ?) "
        "UNION SELECT device_id FROM device_inbox WHERE user_id = ? AND device_id NOT IN "
        "(SELECT device_id FROM devices WHERE user_id = ?)",
        [user_id] * 8)
    return sorted(r["device_id"] for r in rows)


async def delete_device_data(user_id: str, device_ids: list[str], conn=None) -> None:
    for chunk in _chunks(device_ids):
        ph = sql.placeholders(len(chunk))
        for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys",
                      "device_inbox"):
            await sql.execute(f"DELETE FROM {table} WHERE user_id = ? AND device_id IN ({ph})",
                              [user_id, *chunk], conn)
        await sql.execute(
            "DELETE FROM e2e_cross_signing_signatures WHERE target_user_id = ? AND "
            f"target_key_id IN ({ph})", [user_id, *chunk], conn)


async def delete_user_keys(user_id: str, conn=None) -> None:
    """Everything a deactivated account leaves behind: cross-signing keys and signatures, and
    key backups."""
    await sql.execute("DELETE FROM e2e_cross_signing_keys WHERE user_id = ?", [user_id], conn)
    await sql.execute("DELETE FROM e2e_cross_signing_signatures WHERE target_user_id = ? OR "
                      "signer_user_id = ?", [user_id, user_id], conn)
    await sql.execute("DELETE FROM room_key_backup_keys WHERE user_id = ?", [user_id], conn)
    await sql.execute("UPDATE room_key_backup_versions SET deleted = ? WHERE user_id = ?",
                      [True, user_id], conn)


# --- one-time and fallback keys ------------------------------------------------------------

async def existing_one_time_keys(user_id: str, device_id: str,
                                 keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(algorithm, key_id) -> key_json for those of `keys` already stored."""
    out: dict[tuple[str, str], str] = {}
    wanted = set(keys)
    key_ids = sorted({k for _, k in keys})
    for chunk in _chunks(key_ids):
        rows = await sql.fetch(
            "SELECT algorithm, key_id, key_json FROM e2e_one_time_keys WHERE user_id = ? AND "
            f"device_id = ? AND key_id IN ({sql.placeholders(len(chunk))})",
            [user_id, device_id, *chunk])
        for r in rows:
            if (r["algorithm"], r["key_id"]) in wanted:
                out[(r["algorithm"], r["key_id"])] = r["key_json"]
    return out


async def add_one_time_keys(user_id: str, device_id: str, keys: list[tuple[str, str, str]],
                            conn=None) -> None:
    """(algorithm, key_id, key_json) rows; a key already stored is left alone."""
    ts = now_ms()
    await sql.execute_many(
        "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json, ts) "
        "VALUES (?,?,?,?,?,?) ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING",
        [(user_id, device_id, a, k, j, ts) for a, k, j in keys], conn)


async def count_one_time_keys(user_id: str, device_id: str) -> dict[str, int]:
    rows = await sql.fetch(
        "SELECT algorithm, COUNT(*) AS n FROM e2e_one_time_keys WHERE user_id = ? AND "
        "device_id = ? GROUP BY algorithm", [user_id, device_id])
    return {r["algorithm"]: int(r["n"]) for r in rows}


async def claim_one_time_key(user_id: str, device_id: str,
                             algorithm: str) -> tuple[str, str] | None:
    """Atomically take the oldest one-time key: one DELETE ... RETURNING statement, so two
    concurrent claims never get the same key (PostgreSQL skips a row another claim holds)."""
    lock = " FOR UPDATE SKIP LOCKED" if _is_postgres() else ""
    rows = await sql.fetch(
        "DELETE FROM e2e_one_time_keys WHERE id = (SELECT id FROM e2e_one_time_keys WHERE "
        "user_id = ? AND device_id = ? AND algorithm = ? ORDER BY id LIMIT 1" + lock + ") "
        "RETURNING key_id, key_json", [user_id, device_id, algorithm])
    return (rows[0]["key_id"], rows[0]["key_json"]) if rows else None


async def get_fallback_key(user_id: str, device_id: str, algorithm: str,
                           conn=None) -> dict[str, Any] | None:
    rows = await sql.fetch(
        "SELECT key_id, key_json, used FROM e2e_fallback_keys WHERE user_id = ? AND "
        "device_id = ? AND algorithm = ?", [user_id, device_id, algorithm], conn)
    return rows[0] if rows else None


async def set_fallback_key(user_id: str, device_id: str, algorithm: str, key_id: str,
                           key_json: str, conn=None) -> None:
    await sql.execute(
        "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used, "
        "ts) VALUES (?,?,?,?,?,?,?) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET "
        "key_id = excluded.key_id, key_json = excluded.key_json, used = excluded.used, "
        "ts = excluded.ts", [user_id, device_id, algorithm, key_id, key_json, False, now_ms()],
        conn)


async def claim_fallback_key(user_id: str, device_id: str,
                             algorithm: str) -> tuple[str, str] | None:
    """The fallback key (reused until replaced), marked used."""
    row = await get_fallback_key(user_id, device_id, algorithm)
    if row is None:
        return None
    if not row["used"]:
        await sql.execute(
            "UPDATE e2e_fallback_keys SET used = ? WHERE user_id = ? AND device_id = ? AND "
            "algorithm = ? AND key_id = ?", [True, user_id, device_id, algorithm, row["key_id"]])
    return row["key_id"], row["key_json"]


async def unused_fallback_algorithms(user_id: str, device_id: str) -> list[str]:
    rows = await sql.fetch(
        "SELECT algorithm FROM e2e_fallback_keys WHERE user_id = ? AND device_id = ? AND "
        "used = ? ORDER BY algorithm", [user_id, device_id, False])
    return [r["algorithm"] for r in rows]


# --- cross-signing -------------------------------------------------------------------------

async def get_cross_signing_keys(user_ids: list[str], conn=None) -> dict[str, dict[str, str]]:
    """user_id -> key_type -> key_json."""
    out: dict[str, dict[str, str]] = {}
    for chunk in _chunks(user_ids):
        rows = await sql.fetch(
            "SELECT user_id, key_type, key_json FROM e2e_cross_signing_keys WHERE user_id IN "
            f"({sql.placeholders(len(chunk))})", chunk, conn)
        for r in rows:
            out.setdefault(r["user_id"], {})[r["key_type"]] = r["key_json"]
    return out


async def set_cross_signing_key(user_id: str, key_type: str, public_key: str, key_json: str,
                                conn=None) -> None:
    await sql.execute(
        "INSERT INTO e2e_cross_signing_keys (user_id, key_type, public_key, key_json, ts) "
        "VALUES (?,?,?,?,?) ON CONFLICT (user_id, key_type) DO UPDATE SET "
        "public_key = excluded.public_key, key_json = excluded.key_json, ts = excluded.ts",
        [user_id, key_type, public_key, key_json, now_ms()], conn)


async def add_signatures(rows: list[tuple[str, str, str, str, str]], conn=None) -> None:
    """(signer_user_id, signer_key_id, target_user_id, target_key_id, signature)."""
    ts = now_ms()
    await sql.execute_many(
        "INSERT INTO e2e_cross_signing_signatures (signer_user_id, signer_key_id, "
        "target_user_id, target_key_id, signature, ts) VALUES (?,?,?,?,?,?) "
        "ON CONFLICT (signer_user_id, signer_key_id, target_user_id, target_key_id) "
        "DO UPDATE SET signature = excluded.signature, ts = excluded.ts",
        [(*r, ts) for r in rows], conn)


async def get_signatures(target_user_ids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for chunk in _chunks(target_user_ids):
        out += await sql.fetch(
            "SELECT signer_user_id, signer_key_id, target_user_id, target_key_id, signature "
            "FROM e2e_cross_signing_signatures WHERE target_user_id IN "
            f"({sql.placeholders(len(chunk))})", chunk)
    return out


async def delete_signatures_by_signer_key(user_id: str, signer_key_ids: list[str],
                                          conn=None) -> None:
    """Signatures made by cross-signing keys the user just replaced are void."""
    for chunk in _chunks(signer_key_ids):
        await sql.execute(
            "DELETE FROM e2e_cross_signing_signatures WHERE signer_user_id = ? AND "
            f"signer_key_id IN ({sql.placeholders(len(chunk))})", [user_id, *chunk], conn)


async def delete_signatures_on_target(target_user_id: str, target_key_id: str,
                                      conn=None) -> None:
    await sql.execute(
        "DELETE FROM e2e_cross_signing_signatures WHERE target_user_id = ? AND target_key_id = ?",
        [target_user_id, target_key_id], conn)


# --- the device list stream ----------------------------------------------------------------

async def add_device_list_changes(rows: list[tuple[int, str, str]], conn=None) -> None:
    """(stream_id, user_id, device_id) rows."""
    ts = now_ms()
    await sql.execute_many(
        "INSERT INTO device_list_changes (stream_id, user_id, device_id, ts) VALUES (?,?,?,?)",
        [(s, u, d, ts) for s, u, d in rows], conn)


async def last_device_change(user_id: str, conn=None) -> int:
    """The user's latest device change (cross-signing rows, device_id "", not counted): the
    stream_id of /user/devices and the prev_id of the next m.device_list_update."""
    rows = await sql.fetch("SELECT MAX(stream_id) AS m FROM device_list_changes WHERE "
                           "user_id = ? AND device_id != ?", [user_id, ""], conn)
    return int(rows[0]["m"] or 0) if rows else 0


async def users_with_device_changes(after: int, upto: int) -> set[str]:
    rows = await sql.fetch(
        "SELECT DISTINCT user_id FROM device_list_changes WHERE stream_id > ? AND "
        "stream_id <= ?", [after, upto])
    return {r["user_id"] for r in rows}


async def membership_changes(room_ids: list[str], after: int,
                             upto: int) -> list[dict[str, Any]]:
    """Current memberships in these rooms set by an event in (after, upto]."""
    out: list[dict[str, Any]] = []
    for chunk in _chunks(room_ids):
        out += await sql.fetch(
            "SELECT room_id, user_id, membership FROM room_memberships WHERE room_id IN "
            f"({sql.placeholders(len(chunk))}) AND stream_ordering > ? AND stream_ordering <= ?",
            [*chunk, after, upto])
    return out


async def joined_members(room_ids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for chunk in _chunks(room_ids):
        out += await sql.fetch(
            "SELECT room_id, user_id FROM room_memberships WHERE membership = 'join' AND "
            f"room_id IN ({sql.placeholders(len(chunk))})", chunk)
    return out


async def joined_rooms(user_id: str) -> list[str]:
    rows = await sql.fetch("SELECT room_id FROM room_memberships WHERE user_id = ? AND "
                           "membership = 'join'", [user_id])
    return [r["room_id"] for r in rows]


async def local_users_sharing_room_with(user_id: str, server_name: str) -> list[str]:
    rows = await sql.fetch(
        "SELECT DISTINCT b.user_id FROM room_memberships a JOIN room_memberships b "
        "ON a.room_id = b.room_id WHERE a.user_id = ? AND a.membership = 'join' "
        "AND b.membership = 'join' AND b.user_id LIKE ?", [user_id, f"%:{server_name}"])
    return [r["user_id"] for r in rows if r["user_id"].partition(":")[2] == server_name]


# --- the remote device list cache ----------------------------------------------------------

async def get_remote_device_list(user_id: str) -> dict[str, Any] | None:
    rows = await sql.fetch("SELECT user_id, stream_id, content, valid_from FROM "
                           "e2e_remote_device_lists WHERE user_id = ?", [user_id])
    return rows[0] if rows else None


async def set_remote_device_list(user_id: str, stream_id: int, content: str,
                                 valid_from: int) -> None:
    await sql.execute(
        "INSERT INTO e2e_remote_device_lists (user_id, stream_id, content, valid_from, ts) "
        "VALUES (?,?,?,?,?) ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, "
        "content = excluded.content, valid_from = excluded.valid_from, ts = excluded.ts",
        [user_id, stream_id, content, valid_from, now_ms()])


async def update_remote_device_list(user_id: str, old_stream_id: int, stream_id: int,
                                    content: str) -> bool:
    """Compare-and-set on the stream position (an EDU and a refetch may race)."""
    rows = await sql.fetch(
        "UPDATE e2e_remote_device_lists SET stream_id = ?, content = ?, ts = ? WHERE "
        "user_id = ? AND stream_id = ? RETURNING user_id",
        [stream_id, content, now_ms(), user_id, old_stream_id])
    return bool(rows)


async def delete_remote_device_list(user_id: str) -> None:
    await sql.execute("DELETE FROM e2e_remote_device_lists WHERE user_id = ?", [user_id])


async def memberships_changed_since(user_id: str, server_name: str, after: int) -> bool:
    """Did the remote user's memberships, or a local user's membership in a room the remote
    user is joined to, change after `after`? (Then EDUs may have been missed meanwhile.)"""
    rows = await sql.fetch("SELECT 1 AS x FROM room_memberships WHERE user_id = ? AND "
                           "stream_ordering > ? LIMIT 1", [user_id, after])
    if rows:
        return True
    rows = await sql.fetch(
        "SELECT b.user_id FROM room_memberships a JOIN room_memberships b ON "
        "a.room_id = b.room_id WHERE a.user_id = ? AND a.membership = 'join' AND "
        "b.stream_ordering > ? AND b.user_id LIKE ?", [user_id, after, f"%:{server_name}"])
    return any(r["user_id"].partition(":")[2] == server_name for r in rows)


# --- to-device -----------------------------------------------------------------------------

async def get_to_device_txn(origin: str, user_id: str, device_id: str,
                            txn_id: str, conn=None) -> int | None:
    rows = await sql.fetch(
        "SELECT stream_id FROM to_device_txns WHERE origin = ? AND user_id = ? AND "
        "device_id = ? AND txn_id = ?", [origin, user_id, device_id, txn_id], conn)
    return int(rows[0]["stream_id"]) if rows else None


async def add_to_device_txn(origin: str, user_id: str, device_id: str, txn_id: str,
                            stream_id: int, conn=None) -> None:
    await sql.execute(
        "INSERT INTO to_device_txns (origin, user_id, device_id, txn_id, stream_id, ts) "
        "VALUES (?,?,?,?,?,?)", [origin, user_id, device_id, txn_id, stream_id, now_ms()], conn)


async def max_to_device_position(conn) -> int:
    rows = await conn.execute_query_dict(
        "SELECT MAX(m) AS m FROM (SELECT MAX(stream_id) AS m FROM device_inbox UNION ALL "
        "SELECT MAX(stream_id) AS m FROM to_device_txns) AS t")
    return int(rows[0]["m"] or 0) if rows else 0


async def add_inbox_messages(rows: list[tuple[int, str, str, str, str, str]], conn=None) -> None:
    """(stream_id, user_id, device_id, sender, type, content_json) rows."""
    ts = now_ms()
    # Plaintext to-device messages (verification, key requests) are sealed at rest.
    sealed = [(sid, user, dev, sender, type_, DEVICE_INBOX.seal(content, user, dev, sid), ts)
              for sid, user, dev, sender, type_, content in rows]
    for chunk in _chunks(sealed, 200):
        await sql.execute_many(
            "INSERT INTO device_inbox (stream_id, user_id, device_id, sender, type, content, ts) "
            "VALUES (?,?,?,?,?,?,?)", chunk, conn)


async def get_inbox_messages(user_id: str, device_id: str, after: int, upto: int,
                             limit: int) -> list[dict[str, Any]]:
    rows = await sql.fetch(
        "SELECT stream_id, sender, type, content FROM device_inbox WHERE user_id = ? AND "
        "device_id = ? AND stream_id > ? AND stream_id <= ? ORDER BY stream_id, id LIMIT ?",
        [user_id, device_id, after, upto, limit])
    for r in rows:
        r["content"] = DEVICE_INBOX.open(r["content"], user_id, device_id, r["stream_id"])
    return rows


async def delete_inbox_messages(user_id: str, device_id: str, upto: int) -> None:
    await sql.execute("DELETE FROM device_inbox WHERE user_id = ? AND device_id = ? AND "
                      "stream_id <= ?", [user_id, device_id, upto])


async def existing_devices(user_ids: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for chunk in _chunks(user_ids):
        rows = await sql.fetch(
            "SELECT user_id, device_id FROM devices WHERE user_id IN "
            f"({sql.placeholders(len(chunk))})", chunk)
        for r in rows:
            out.setdefault(r["user_id"], set()).add(r["device_id"])
    return out


# --- key backup ----------------------------------------------------------------------------

async def create_backup_version(user_id: str, algorithm: str, auth_data: str) -> int:
    rows = await sql.fetch(
        "INSERT INTO room_key_backup_versions (user_id, algorithm, auth_data, etag, deleted, ts) "
        "VALUES (?,?,?,?,?,?) RETURNING id", [user_id, algorithm, auth_data, 0, False, now_ms()])
    return int(rows[0]["id"])


async def get_backup_version(user_id: str, version: int | None) -> dict[str, Any] | None:
    """A live backup version (the latest when version is None)."""
    cols = "id, algorithm, auth_data, etag"
    if version is None:
        rows = await sql.fetch(
            f"SELECT {cols} FROM room_key_backup_versions WHERE user_id = ? AND deleted = ? "
            "ORDER BY id DESC LIMIT 1", [user_id, False])
    else:
        rows = await sql.fetch(
            f"SELECT {cols} FROM room_key_backup_versions WHERE user_id = ? AND id = ? AND "
            "deleted = ?", [user_id, version, False])
    return rows[0] if rows else None


async def backup_version_exists(user_id: str, version: int) -> bool:
    """Live or deleted: deleting a deleted backup succeeds."""
    rows = await sql.fetch("SELECT 1 AS x FROM room_key_backup_versions WHERE user_id = ? AND "
                           "id = ?", [user_id, version])
    return bool(rows)


async def update_backup_auth_data(user_id: str, version: int, auth_data: str) -> None:
    await sql.execute("UPDATE room_key_backup_versions SET auth_data = ? WHERE user_id = ? AND "
                      "id = ?", [auth_data, user_id, version])


async def delete_backup_version(user_id: str, version: int, conn=None) -> None:
    await sql.execute("UPDATE room_key_backup_versions SET deleted = ? WHERE user_id = ? AND "
                      "id = ?", [True, user_id, version], conn)
    await sql.execute("DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?",
                      [user_id, version], conn)


async def bump_backup_etag(user_id: str, version: int, conn=None) -> None:
    await sql.execute("UPDATE room_key_backup_versions SET etag = etag + 1 WHERE user_id = ? "
                      "AND id = ?", [user_id, version], conn)


async def count_backup_keys(user_id: str, version: int, conn=None) -> int:
    rows = await sql.fetch("SELECT COUNT(*) AS n FROM room_key_backup_keys WHERE user_id = ? "
                           "AND version = ?", [user_id, version], conn)
    return int(rows[0]["n"]) if rows else 0


BACKUP_KEY_COLUMNS = ("room_id, session_id, first_message_index, forwarded_count, is_verified, "
                      "session_data")


async def get_backup_keys(user_id: str, version: int, room_id: str | None = None,
                          session_id: str | None = None, conn=None) -> list[dict[str, Any]]:
    q = (f"SELECT {BACKUP_KEY_COLUMNS} FROM room_key_backup_keys WHERE user_id = ? AND "
         "version = ?")
    vals: list[Any] = [user_id, version]
    if room_id is not None:
        q += " AND room_id = ?"
        vals.append(room_id)
    if session_id is not None:
        q += " AND session_id = ?"
        vals.append(session_id)
    return await sql.fetch(q + " ORDER BY room_id, session_id", vals, conn)


async def upsert_backup_key(user_id: str, version: int, room_id: str, session_id: str,
                            first_message_index: int, forwarded_count: int, is_verified: bool,
                            session_data: str, conn=None) -> None:
    await sql.execute(
        "INSERT INTO room_key_backup_keys (user_id, version, room_id, session_id, "
        "first_message_index, forwarded_count, is_verified, session_data) VALUES "
        "(?,?,?,?,?,?,?,?) ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET "
        "first_message_index = excluded.first_message_index, "
        "forwarded_count = excluded.forwarded_count, is_verified = excluded.is_verified, "
        "session_data = excluded.session_data",
        [user_id, version, room_id, session_id, first_message_index, forwarded_count,
         is_verified, session_data], conn)


async def delete_backup_keys(user_id: str, version: int, room_id: str | None = None,
                             session_id: str | None = None, conn=None) -> None:
    q = "DELETE FROM room_key_backup_keys WHERE user_id = ? AND version = ?"
    vals: list[Any] = [user_id, version]
    if room_id is not None:
        q += " AND room_id = ?"
        vals.append(room_id)
    if session_id is not None:
        q += " AND session_id = ?"
        vals.append(session_id)
    await sql.execute(q, vals, conn)
