"""Content hashes, reference hashes and v4+ event IDs."""

from __future__ import annotations

import hashlib
import hmac

from homeserver.events.canonical import (
    canonical_json,
    decode_b64,
    encode_b64,
    encode_b64_urlsafe,
)
from homeserver.events.redaction import redact_event
from homeserver.events.room_versions import RoomVersion

# `event_id` is a local convenience key: in v4+ rooms it is derived from the
# event, never part of the wire format, so it must not feed any hash.
_CONTENT_HASH_EXCLUDED = frozenset({"unsigned", "signatures", "hashes", "event_id"})
_REFERENCE_HASH_EXCLUDED = frozenset({"unsigned", "signatures", "event_id"})


def _content_hash_bytes(event: dict) -> bytes:
    stripped = {k: v for k, v in event.items() if k not in _CONTENT_HASH_EXCLUDED}
    return hashlib.sha256(canonical_json(stripped)).digest()


def compute_content_hash(event: dict) -> str:
    """Unpadded base64 sha256 over the full (unredacted) event."""
    return encode_b64(_content_hash_bytes(event))


def add_content_hash(event: dict) -> dict:
    """Return a copy of ``event`` with ``hashes`` set to its content hash."""
    new_event = dict(event)
    new_event["hashes"] = {"sha256": compute_content_hash(event)}
    return new_event


def check_content_hash(event: dict) -> bool:
    """True if ``hashes.sha256`` matches the event's content.

    A False result usually means the event was redacted in transit; callers
    should then use the redacted form (server-server spec).
    """
    hashes = event.get("hashes")
    if not isinstance(hashes, dict):
        return False
    claimed = hashes.get("sha256")
    if not isinstance(claimed, str):
        return False
    try:
        claimed_bytes = decode_b64(claimed)
        actual = _content_hash_bytes(event)
    except ValueError:
        return False
    return hmac.compare_digest(claimed_bytes, actual)


def compute_reference_hash(event: dict, room_version: RoomVersion) -> bytes:
    """sha256 of the redacted event minus ``signatures``/``unsigned``."""
    redacted = redact_event(event, room_version)
    stripped = {k: v for k, v in redacted.items() if k not in _REFERENCE_HASH_EXCLUDED}
    return hashlib.sha256(canonical_json(stripped)).digest()


def compute_event_id(event: dict, room_version: RoomVersion) -> str:
    """``$`` + URL-safe unpadded base64 of the reference hash (v4+ format)."""
    return "$" + encode_b64_urlsafe(compute_reference_hash(event, room_version))
