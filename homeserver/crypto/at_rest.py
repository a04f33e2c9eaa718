"""Sealed column values and the keyring (pure: no file or database access).

A sealed value is text, so it fits the TEXT columns the schema already has:

    nxe1:<key_id>:<base64(nonce[12] | ciphertext | tag[16])>

AES-256-GCM under the key named by <key_id>. The associated data is the envelope's own
prefix ("nxe1:<key_id>:") plus what the caller says the value belongs to (for an event row,
its event ID), so a ciphertext copied into another row or column does not decrypt.

A value without the prefix is legacy plaintext (written before encryption at rest existed):
`open` returns it unchanged and `nexa rotate-key` seals it. Every column sealed this way holds
JSON, which never starts with "nxe1:", so the two cannot be confused.

Keys are 32 random bytes with a short ID. A keyring holds several, oldest first: the newest
seals, any of them opens. Key text (file lines or the environment variable) is `<id>:<base64>`
entries, one per line or separated by commas; lines starting with '#' are comments.
"""

from __future__ import annotations

import binascii
import os
import re
import secrets
from typing import Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "nxe1:"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class AtRestError(Exception):
    """A sealed value or a key cannot be used."""


class UnknownKeyError(AtRestError):
    """The value was sealed under a key this keyring does not have."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"sealed under unknown at-rest key {key_id!r}")
        self.key_id = key_id


class DecryptionError(AtRestError):
    """Wrong key, wrong associated data, or the value was altered."""


class KeyFormatError(AtRestError):
    """Key text that cannot be parsed (the message never contains key material)."""


def aad(purpose: str, *parts: object) -> bytes:
    """Associated data naming where a value lives, e.g. aad("events.json", event_id)."""
    return "\x00".join((purpose, *map(str, parts))).encode()


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def sealed_key_id(value: str) -> str | None:
    """The key ID of a sealed value; None for legacy plaintext."""
    if not value.startswith(PREFIX):
        return None
    key_id, sep, _ = value[len(PREFIX):].partition(":")
    return key_id if sep else None


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def new_key_id(existing: Iterable[str] = ()) -> str:
    taken = set(existing)
    while True:
        key_id = "k" + secrets.token_hex(4)
        if key_id not in taken:
            return key_id


class Keyring:
    """Keys by ID, oldest first; the last one seals. One AESGCM object per key, made once."""

    __slots__ = ("entries", "current_id", "_aead", "_prefix")

    def __init__(self, entries: Sequence[tuple[str, bytes]]) -> None:
        if not entries:
            raise KeyFormatError("no at-rest key given")
        seen: set[str] = set()
        for key_id, key in entries:
            if not KEY_ID_RE.match(key_id):
                raise KeyFormatError(f"invalid key ID {key_id!r} (letters, digits, _ and -, "
                                     "at most 32)")
            if key_id in seen:
                raise KeyFormatError(f"key ID {key_id!r} appears twice")
            if len(key) != KEY_BYTES:
                raise KeyFormatError(f"key {key_id!r} is not {KEY_BYTES} bytes")
            seen.add(key_id)
        self.entries: tuple[tuple[str, bytes], ...] = tuple(entries)
        self.current_id = entries[-1][0]
        self._aead = {key_id: AESGCM(key) for key_id, key in entries}
        self._prefix = f"{PREFIX}{self.current_id}:"

    @property
    def ids(self) -> list[str]:
        return [key_id for key_id, _ in self.entries]

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._aead

    def aead(self, key_id: str) -> AESGCM:
        try:
            return self._aead[key_id]
        except KeyError:
            raise UnknownKeyError(key_id) from None

    def seal(self, plaintext: bytes, aad: bytes) -> str:
        """Seal under the newest key."""
        nonce = os.urandom(NONCE_BYTES)
        prefix = self._prefix
        ct = self._aead[self.current_id].encrypt(nonce, plaintext, prefix.encode() + aad)
        return prefix + binascii.b2a_base64(nonce + ct, newline=False).decode("ascii")

    def open(self, value: str, aad: bytes) -> bytes:
        """The plaintext of a sealed value (legacy plaintext is returned as it is)."""
        if not value.startswith(PREFIX):
            return value.encode()
        key_id, sep, body = value[len(PREFIX):].partition(":")
        if not sep:
            raise DecryptionError("malformed sealed value")
        aead = self.aead(key_id)
        try:
            raw = binascii.a2b_base64(body, strict_mode=True)
        except (binascii.Error, ValueError):
            raise DecryptionError("malformed sealed value") from None
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError("malformed sealed value")
        header = f"{PREFIX}{key_id}:".encode()
        try:
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], header + aad)
        except InvalidTag:
            raise DecryptionError(f"value sealed under key {key_id!r} does not authenticate "
                                  "(wrong key, moved between rows, or altered)") from None

    def with_new_key(self, key_id: str | None = None, key: bytes | None = None) -> Keyring:
        key_id = key_id or new_key_id(self.ids)
        return Keyring([*self.entries, (key_id, key or new_key())])

    def newest_only(self) -> Keyring:
        return Keyring([self.entries[-1]])

    def __repr__(self) -> str:  # never key material
        return f"Keyring(ids={self.ids!r}, current={self.current_id!r})"


# --- key text -------------------------------------------------------------------------------

KEY_FILE_HEADER = (
    "# Nexa at-rest encryption keys (AES-256-GCM), oldest first; the last one encrypts.\n"
    "# Keep this file secret (mode 0600) and back it up with the database: without it the\n"
    "# stored messages and media cannot be read by anyone. `nexa rotate-key` adds a key.\n"
)


def parse_keys(text: str, source: str = "key text") -> list[tuple[str, bytes]]:
    """`<id>:<base64>` entries, by line or comma; '#' lines are comments."""
    entries: list[tuple[str, bytes]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for item in line.split(","):
            item = item.strip()
            if not item:
                continue
            key_id, sep, b64 = item.partition(":")
            if not sep:
                raise KeyFormatError(f"{source} line {n}: expected <key id>:<base64 key>")
            try:
                key = binascii.a2b_base64(b64.strip(), strict_mode=True)
            except (binascii.Error, ValueError):
                raise KeyFormatError(f"{source} line {n}: key {key_id!r} is not valid "
                                     "base64") from None
            entries.append((key_id.strip(), key))
    if not entries:
        raise KeyFormatError(f"{source} holds no key")
    Keyring(entries)  # validates IDs, lengths and duplicates
    return entries


def format_entry(key_id: str, key: bytes) -> str:
    return f"{key_id}:{binascii.b2a_base64(key, newline=False).decode('ascii')}"


def format_keys(entries: Sequence[tuple[str, bytes]]) -> str:
    return KEY_FILE_HEADER + "".join(format_entry(k, v) + "\n" for k, v in entries)
