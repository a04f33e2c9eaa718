"""Sealing and opening the columns that can hold message text, with the keyring of the
database the caller is using (encryption at rest, docs/at-rest-encryption.md).

Each column is one `SealedColumn`: writers seal with `col.seal(...)`, readers open with
`col.open(...)`, both naming the row's identifying values, which become the ciphertext's
associated data (a value copied into another row does not open). `nexa rotate-key` walks the
same list (storage/rekey.py). Values written before encryption at rest are plaintext and read
as they are. Only rows read from the database are opened: the in-memory caches above this layer
hold plaintext already.
"""

from __future__ import annotations

from dataclasses import dataclass

from tortoise.context import _current_context

from homeserver.crypto.at_rest import PREFIX, aad, sealed_key_id


class NoKeyring(RuntimeError):
    """A sealed value met, or one to write, on a database opened without at-rest keys."""


class WrongKeys(RuntimeError):
    """The database holds data sealed under a key the server was not given."""


def keyring():
    """The LiveKeyring bound to the current database (storage/database.py)."""
    ring = getattr(_current_context.get(), "at_rest", None)
    if ring is None:
        raise NoKeyring("this database was opened without at-rest keys")
    return ring


@dataclass(frozen=True)
class SealedColumn:
    table: str
    column: str
    # Column(s) that page through the table in rekey (a unique, ordered key).
    pk: str
    # Columns of the row that name the value (its associated data), in this order.
    aad_columns: tuple[str, ...]

    @property
    def purpose(self) -> str:
        return f"{self.table}.{self.column}"

    def aad(self, *parts: object) -> bytes:
        return aad(self.purpose, *parts)

    def seal(self, plaintext: bytes | str, *parts: object) -> str:
        if isinstance(plaintext, str):
            plaintext = plaintext.encode()
        return keyring().seal(plaintext, self.aad(*parts))

    def open_bytes(self, value: str, *parts: object) -> bytes:
        if not value.startswith(PREFIX):
            return value.encode()
        return keyring().open(value, self.aad(*parts))

    def open(self, value: str | None, *parts: object) -> str | None:
        if value is None or not value.startswith(PREFIX):
            return value
        return keyring().open(value, self.aad(*parts)).decode()


EVENTS_JSON = SealedColumn("events", "json", "stream_ordering", ("event_id",))
ACCOUNT_DATA = SealedColumn("account_data", "content", "id", ("user_id", "room_id", "type"))
APPSERVICE_TXN_BODY = SealedColumn("appservice_txns", "body_json", "id",
                                   ("appservice_id", "txn_id"))
FEDERATION_EDU = SealedColumn("federation_outbox", "edu_json", "id", ("destination",))
DEVICE_INBOX = SealedColumn("device_inbox", "content", "id",
                            ("user_id", "device_id", "stream_id"))

SEALED_COLUMNS = (EVENTS_JSON, ACCOUNT_DATA, APPSERVICE_TXN_BODY, FEDERATION_EDU, DEVICE_INBOX)


async def check_keys_match() -> None:
    """At start-up: the newest event must open with the keys loaded. A missing or wrong key
    file (a moved data_dir, a restored database without its key) then stops the server with
    a clear message instead of failing on every read."""
    from homeserver.storage import sql

    rows = await sql.fetch("SELECT json FROM events ORDER BY stream_ordering DESC LIMIT 1")
    key_id = sealed_key_id(rows[0]["json"]) if rows else None
    ring = keyring()
    if key_id is not None and key_id not in ring.ring:
        raise WrongKeys(
            f"the database holds data encrypted under at-rest key {key_id!r}, which the keys "
            f"from {ring.source} ({', '.join(ring.ring.ids)}) do not include: restore the key "
            "file (or NEXA_AT_REST_KEY) that goes with this database; see "
            "docs/at-rest-encryption.md")
