"""Server-side room key backups (/room_keys): encrypted megolm session keys the server stores
for the user and never can read. Keys are written only to the current (latest) version; when a
key for the same session is uploaded again, the better one is kept: verified over unverified,
then the lower first_message_index, then the lower forwarded_count (the spec's rule)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from homeserver.storage.transactions import in_transaction

from homeserver.errors import MatrixError, bad_json, invalid_param, not_found
from homeserver.storage import e2e as store

if TYPE_CHECKING:
    from homeserver.server import HomeServer

MAX_AUTH_DATA_BYTES = 16 * 1024
MAX_SESSION_DATA_BYTES = 16 * 1024
MAX_KEYS_PER_REQUEST = 10_000


def _version_number(version: Any) -> int:
    if not isinstance(version, str) or not version.isascii() or not version.isdigit() \
            or len(version) > 18:
        raise not_found("Unknown backup version")
    return int(version)


def _check_id(value: str, what: str) -> None:
    if not value or len(value) > 255 or "\x00" in value:
        raise invalid_param(f"{what} must be 1 to 255 characters")


def _parse_key(data: Any, where: str) -> tuple[int, int, bool, str]:
    if not isinstance(data, dict):
        raise bad_json(f"{where} must be an object")
    fmi, fc, verified, session = (data.get("first_message_index"),
                                  data.get("forwarded_count"), data.get("is_verified"),
                                  data.get("session_data"))
    if type(fmi) is not int or not 0 <= fmi < 2**53:
        raise bad_json(f"{where}.first_message_index must be a non-negative integer")
    if type(fc) is not int or not 0 <= fc < 2**53:
        raise bad_json(f"{where}.forwarded_count must be a non-negative integer")
    if not isinstance(verified, bool):
        raise bad_json(f"{where}.is_verified must be a boolean")
    if not isinstance(session, dict):
        raise bad_json(f"{where}.session_data must be an object")
    text = orjson.dumps(session).decode()
    if len(text) > MAX_SESSION_DATA_BYTES:
        raise MatrixError(413, "M_TOO_LARGE", f"{where}.session_data is too large")
    return fmi, fc, verified, text


def _better(new: tuple[int, int, bool], old: dict[str, Any]) -> bool:
    """Is the new key worth replacing the stored one?"""
    fmi, fc, verified = new
    if verified != bool(old["is_verified"]):
        return verified
    if fmi != old["first_message_index"]:
        return fmi < old["first_message_index"]
    return fc < old["forwarded_count"]


def _key_json(row: dict[str, Any]) -> dict[str, Any]:
    return {"first_message_index": int(row["first_message_index"]),
            "forwarded_count": int(row["forwarded_count"]),
            "is_verified": bool(row["is_verified"]),
            "session_data": orjson.loads(row["session_data"])}


class KeyBackupHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    # --- versions --------------------------------------------------------------------------

    @staticmethod
    def _parse_version_body(body: dict[str, Any]) -> tuple[str, str]:
        algorithm, auth_data = body.get("algorithm"), body.get("auth_data")
        if not isinstance(algorithm, str) or not algorithm or len(algorithm) > 255 \
                or "\x00" in algorithm:
            raise bad_json("algorithm must be a non-empty string")
        if not isinstance(auth_data, dict):
            raise bad_json("auth_data must be an object")
        text = orjson.dumps(auth_data).decode()
        if len(text) > MAX_AUTH_DATA_BYTES:
            raise MatrixError(413, "M_TOO_LARGE", "auth_data is too large")
        return algorithm, text

    async def create_version(self, user_id: str, body: dict[str, Any]) -> str:
        algorithm, auth_data = self._parse_version_body(body)
        return str(await store.create_backup_version(user_id, algorithm, auth_data))

    async def _version(self, user_id: str, version: str | None) -> dict[str, Any]:
        num = None if version is None else _version_number(version)
        row = await store.get_backup_version(user_id, num)
        if row is None:
            raise not_found("No current backup version" if version is None
                            else "Unknown backup version")
        return row

    async def get_version(self, user_id: str, version: str | None) -> dict[str, Any]:
        row = await self._version(user_id, version)
        return {"algorithm": row["algorithm"], "auth_data": orjson.loads(row["auth_data"]),
                "count": await store.count_backup_keys(user_id, int(row["id"])),
                "etag": str(row["etag"]), "version": str(row["id"])}

    async def update_version(self, user_id: str, version: str, body: dict[str, Any]) -> None:
        row = await self._version(user_id, version)
        algorithm, auth_data = self._parse_version_body(body)
        if "version" in body and body["version"] != version:
            raise invalid_param("The version in the body does not match the path")
        if algorithm != row["algorithm"]:
            raise invalid_param("The algorithm does not match the backup")
        await store.update_backup_auth_data(user_id, int(row["id"]), auth_data)

    async def delete_version(self, user_id: str, version: str) -> None:
        num = _version_number(version)
        if not await store.backup_version_exists(user_id, num):
            raise not_found("Unknown backup version")
        async with in_transaction() as conn:
            await store.delete_backup_version(user_id, num, conn)

    # --- keys ------------------------------------------------------------------------------

    async def _current(self, user_id: str, version: str | None) -> int:
        """The version keys may be written to: it must exist and be the latest."""
        if version is None:
            raise MatrixError(400, "M_MISSING_PARAM", "The version query parameter is required")
        num = _version_number(version)
        current = await store.get_backup_version(user_id, None)
        if current is None or (num != int(current["id"])
                               and await store.get_backup_version(user_id, num) is None):
            raise not_found("Unknown backup version")
        if num != int(current["id"]):
            raise MatrixError(403, "M_WRONG_ROOM_KEYS_VERSION",
                              "Wrong backup version: not the current one",
                              current_version=str(current["id"]))
        return num

    async def put_keys(self, user_id: str, version: str | None,
                       rooms: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """rooms: room_id -> session_id -> key data (already shaped by the route)."""
        parsed: list[tuple[str, str, tuple[int, int, bool, str]]] = []
        for room_id, sessions in rooms.items():
            _check_id(room_id, "The room ID")
            if not isinstance(sessions, dict):
                raise bad_json(f"rooms.{room_id}.sessions must be an object")
            for session_id, data in sessions.items():
                _check_id(session_id, "The session ID")
                parsed.append((room_id, session_id, _parse_key(data, f"{room_id}.{session_id}")))
                if len(parsed) > MAX_KEYS_PER_REQUEST:
                    raise MatrixError(413, "M_TOO_LARGE", "Too many keys in one request")
        num = await self._current(user_id, version)
        async with in_transaction() as conn:
            changed = False
            for room_id, session_id, (fmi, fc, verified, text) in parsed:
                old = await store.get_backup_keys(user_id, num, room_id, session_id, conn)
                if old and not _better((fmi, fc, verified), old[0]):
                    continue
                await store.upsert_backup_key(user_id, num, room_id, session_id, fmi, fc,
                                              verified, text, conn)
                changed = True
            if changed:
                await store.bump_backup_etag(user_id, num, conn)
        return await self._etag_count(user_id, num)

    async def _etag_count(self, user_id: str, num: int) -> dict[str, Any]:
        row = await store.get_backup_version(user_id, num)
        return {"etag": str(row["etag"] if row else 0),
                "count": await store.count_backup_keys(user_id, num)}

    async def get_keys(self, user_id: str, version: str | None, room_id: str | None = None,
                       session_id: str | None = None) -> dict[str, Any]:
        if version is None:
            raise MatrixError(400, "M_MISSING_PARAM", "The version query parameter is required")
        row = await self._version(user_id, version)
        rows = await store.get_backup_keys(user_id, int(row["id"]), room_id, session_id)
        if session_id is not None:
            if not rows:
                raise not_found("No key for this session")
            return _key_json(rows[0])
        rooms: dict[str, Any] = {}
        for r in rows:
            rooms.setdefault(r["room_id"], {"sessions": {}})["sessions"][r["session_id"]] = \
                _key_json(r)
        if room_id is not None:
            return rooms.get(room_id, {"sessions": {}})
        return {"rooms": rooms}

    async def delete_keys(self, user_id: str, version: str | None, room_id: str | None = None,
                          session_id: str | None = None) -> dict[str, Any]:
        if version is None:
            raise MatrixError(400, "M_MISSING_PARAM", "The version query parameter is required")
        row = await self._version(user_id, version)
        num = int(row["id"])
        async with in_transaction() as conn:
            await store.delete_backup_keys(user_id, num, room_id, session_id, conn)
            await store.bump_backup_etag(user_id, num, conn)
        return await self._etag_count(user_id, num)
