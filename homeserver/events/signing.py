"""Ed25519 server signing keys, JSON signatures and event signatures."""

from __future__ import annotations

import os
import re
import secrets
import string

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from homeserver.events.canonical import canonical_json, decode_b64, encode_b64
from homeserver.events.redaction import redact_event
from homeserver.events.room_versions import RoomVersion
from homeserver.files import write_secret_file

ALGORITHM = "ed25519"
# Key versions end up in key IDs and URLs, so keep them to a safe alphabet.
_VERSION_RE = re.compile(r"^[A-Za-z0-9_]+$")
_UNSIGNED_KEYS = frozenset({"signatures", "unsigned"})


class SignatureError(ValueError):
    """A signature is missing, malformed, or does not verify."""


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ValueError(f"invalid signing key version {version!r}")
    return version


class SigningKey:
    """An ed25519 signing key with a version, e.g. key ID ``ed25519:a_AbCd``."""

    def __init__(self, private_key: Ed25519PrivateKey, version: str) -> None:
        self._private_key = private_key
        self.version = _check_version(version)

    @classmethod
    def generate(cls, version: str | None = None) -> SigningKey:
        if version is None:
            alphabet = string.ascii_letters + string.digits
            version = "a_" + "".join(secrets.choice(alphabet) for _ in range(4))
        return cls(Ed25519PrivateKey.generate(), version)

    @classmethod
    def from_seed(cls, seed: bytes, version: str) -> SigningKey:
        if len(seed) != 32:
            raise ValueError("ed25519 seed must be 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed), version)

    @property
    def key_id(self) -> str:
        return f"{ALGORITHM}:{self.version}"

    @property
    def seed(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def verify_key(self) -> Ed25519PublicKey:
        return self._private_key.public_key()

    @property
    def verify_key_b64(self) -> str:
        raw = self.verify_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return encode_b64(raw)

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def to_file_line(self) -> str:
        """Synapse-compatible key file line: ``ed25519 <version> <b64 seed>``."""
        return f"{ALGORITHM} {self.version} {encode_b64(self.seed)}"

    @classmethod
    def from_file_line(cls, line: str) -> SigningKey:
        parts = line.strip().split()
        if len(parts) != 3:
            raise ValueError("signing key line must be '<alg> <version> <base64 seed>'")
        alg, version, seed_b64 = parts
        if alg != ALGORITHM:
            raise ValueError(f"unsupported signing key algorithm {alg!r}")
        return cls.from_seed(decode_b64(seed_b64), version)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Atomically write the key file, never readable by other users (0600 from the
        start, no chmod window: see homeserver/files.py)."""
        write_secret_file(path, self.to_file_line() + "\n")

    @classmethod
    def load_or_generate(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Load the first key in ``path``; create and save a new one if absent."""
        path = os.fspath(path)
        try:
            with open(path, encoding="ascii") as fh:
                lines = [ln for ln in fh.read().splitlines() if ln.strip()]
        except FileNotFoundError:
            key = cls.generate()
            key.save(path)
            return key
        if not lines:
            raise ValueError(f"signing key file {path} is empty")
        return cls.from_file_line(lines[0])

    def __repr__(self) -> str:  # never leak the seed into logs
        return f"SigningKey({self.key_id!r})"


def decode_verify_key(b64: str) -> Ed25519PublicKey:
    """Parse an unpadded-base64 ed25519 public key; ValueError if malformed."""
    raw = decode_b64(b64)
    if len(raw) != 32:
        raise ValueError("ed25519 verify key must be 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def _signable_bytes(obj: dict) -> bytes:
    return canonical_json({k: v for k, v in obj.items() if k not in _UNSIGNED_KEYS})


def _with_signature(obj: dict, server_name: str, key_id: str, signature: str) -> dict:
    new_obj = dict(obj)
    signatures = {
        name: dict(sigs) for name, sigs in (obj.get("signatures") or {}).items()
    }
    signatures.setdefault(server_name, {})[key_id] = signature
    new_obj["signatures"] = signatures
    return new_obj


def sign_json(obj: dict, server_name: str, key: SigningKey) -> dict:
    """Return a copy of ``obj`` with ``key``'s signature merged into ``signatures``."""
    signature = encode_b64(key.sign(_signable_bytes(obj)))
    return _with_signature(obj, server_name, key.key_id, signature)


def verify_json(
    obj: dict,
    server_name: str,
    key_id: str,
    verify_key: Ed25519PublicKey | str,
) -> None:
    """Check ``server_name``'s ``key_id`` signature on ``obj``; SignatureError if not valid.

    ``verify_key`` may be an Ed25519PublicKey or its unpadded base64 form.
    """
    if not key_id.startswith(ALGORITHM + ":"):
        raise SignatureError(f"unsupported signing algorithm in key ID {key_id!r}")
    signatures = obj.get("signatures")
    if not isinstance(signatures, dict) or not isinstance(signatures.get(server_name), dict):
        raise SignatureError(f"no signatures from {server_name}")
    sig_b64 = signatures[server_name].get(key_id)
    if not isinstance(sig_b64, str):
        raise SignatureError(f"no signature from {server_name} with key {key_id}")
    try:
        signature = decode_b64(sig_b64)
        if isinstance(verify_key, str):
            verify_key = decode_verify_key(verify_key)
    except ValueError as exc:
        raise SignatureError(
            f"malformed signature or key for {server_name} {key_id}: {exc}"
        ) from exc
    try:
        verify_key.verify(signature, _signable_bytes(obj))
    except InvalidSignature:
        raise SignatureError(
            f"signature from {server_name} with key {key_id} does not verify"
        ) from None


def _event_signable(event: dict, room_version: RoomVersion) -> dict:
    # Event signatures cover the redacted form so they survive redaction;
    # event_id is local-only in v4+ rooms and must not be signed.
    return redact_event({k: v for k, v in event.items() if k != "event_id"}, room_version)


def sign_event(event: dict, server_name: str, key: SigningKey, room_version: RoomVersion) -> dict:
    """Return the full event with a signature over its redacted form added.

    Call :func:`homeserver.events.hashing.add_content_hash` first: the
    content hash is what binds the unredacted content to the signature.
    """
    signable = _event_signable(event, room_version)
    signature = encode_b64(key.sign(_signable_bytes(signable)))
    return _with_signature(event, server_name, key.key_id, signature)


def verify_event_signature(
    event: dict,
    server_name: str,
    key_id: str,
    verify_key: Ed25519PublicKey | str,
    room_version: RoomVersion,
) -> None:
    """Verify a server's signature on an event (full or redacted copy)."""
    verify_json(_event_signable(event, room_version), server_name, key_id, verify_key)
