"""Server signing keys: ours (published), and other servers' (fetched, verified, cached).

Remote keys live in memory and in the `server_keys` table. A key is acceptable for a signature
made at time `at_ts` when its validity (`valid_until_ts`, or `expired_ts` for old keys) reaches
that time, so events signed with a since-rotated key still verify.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.events.signing import (
    SignatureError,
    decode_verify_key,
    sign_json,
    verify_event_signature,
    verify_json,
)
from homeserver.storage import sql
from homeserver.types import now_ms, split_id

log = logging.getLogger(__name__)

OWN_KEY_VALIDITY_MS = 24 * 3600 * 1000
FAILURE_TTL = 30.0  # seconds a failed fetch is remembered
MIN_REFETCH_INTERVAL = 30.0  # seconds between fetches for a key the server did not list


class KeyNotFound(Exception):
    """A verify key could not be obtained (unknown key ID, server unreachable, bad response)."""


class Keyring:
    def __init__(self, hs: Any) -> None:
        self.hs = hs
        # server -> key_id -> (verify key, valid_until_ts)
        self._keys: dict[str, dict[str, tuple[Ed25519PublicKey, int]]] = {}
        # server -> its last verified /_matrix/key/v2/server response (for the notary API)
        self._responses: dict[str, dict] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._failures: dict[str, tuple[float, str]] = {}
        self._last_fetch: dict[str, float] = {}

    # --- our own keys --------------------------------------------------------------------

    def own_server_keys(self) -> dict:
        key = self.hs.signing_key
        if key is None:
            raise RuntimeError("homeserver not started: no signing key")
        body = {
            "server_name": self.hs.server_name,
            "verify_keys": {key.key_id: {"key": key.verify_key_b64}},
            "old_verify_keys": {},
            "valid_until_ts": now_ms() + OWN_KEY_VALIDITY_MS,
        }
        return sign_json(body, self.hs.server_name, key)

    # --- lookups -------------------------------------------------------------------------

    async def get_verify_key(self, server_name: str, key_id: str,
                             at_ts: int | None = None) -> Ed25519PublicKey:
        if server_name == self.hs.server_name:
            key = self.hs.signing_key
            if key is not None and key_id == key.key_id:
                return key.verify_key
            raise KeyNotFound(f"{key_id} is not a key of this server ({server_name})")
        if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
            raise KeyNotFound(f"unsupported key ID {key_id!r} for {server_name}")
        found = self._acceptable(server_name, key_id, at_ts)
        if found is not None:
            return found
        if key_id not in self._keys.get(server_name, {}):
            await self._load_from_db(server_name, key_id)
            found = self._acceptable(server_name, key_id, at_ts)
            if found is not None:
                return found
        await self._fetch(server_name, key_id)
        found = self._acceptable(server_name, key_id, at_ts)
        if found is not None:
            return found
        have = self._keys.get(server_name, {}).get(key_id)
        if have is not None:
            raise KeyNotFound(f"key {key_id} of {server_name} expired at {have[1]}, before the "
                              f"signature time {at_ts}")
        raise KeyNotFound(f"{server_name} does not publish a key {key_id}")

    def _acceptable(self, server_name: str, key_id: str,
                    at_ts: int | None) -> Ed25519PublicKey | None:
        entry = self._keys.get(server_name, {}).get(key_id)
        if entry is None:
            return None
        key, valid_until = entry
        if at_ts is not None and valid_until < at_ts:
            return None
        return key

    def _remember(self, server_name: str, key_id: str, key: Ed25519PublicKey,
                  valid_until: int) -> None:
        self._keys.setdefault(server_name, {})[key_id] = (key, valid_until)

    async def _load_from_db(self, server_name: str, key_id: str) -> None:
        rows = await sql.fetch(
            "SELECT verify_key, valid_until_ts FROM server_keys WHERE server_name = ? "
            "AND key_id = ?", [server_name, key_id])
        if rows:
            try:
                key = decode_verify_key(rows[0]["verify_key"])
            except ValueError:
                return
            self._remember(server_name, key_id, key, int(rows[0]["valid_until_ts"]))

    async def _fetch(self, server_name: str, key_id: str) -> None:
        """Fetch the server's keys once for all concurrent callers; failures are remembered."""
        failure = self._failures.get(server_name)
        if failure and failure[0] > time.monotonic():
            raise KeyNotFound(f"cannot get keys of {server_name} (recent failure: {failure[1]})")
        fut = self._inflight.get(server_name)
        if fut is None:
            last = self._last_fetch.get(server_name)
            if last is not None and time.monotonic() - last < MIN_REFETCH_INTERVAL:
                return  # fetched moments ago: the server does not list this key
            fut = self._start_fetch(server_name)
        try:
            await asyncio.shield(fut)
        except KeyNotFound:
            raise
        except Exception as e:  # pragma: no cover - _fetch_and_store wraps its errors
            raise KeyNotFound(f"cannot get keys of {server_name}: {e}") from None

    def _start_fetch(self, server_name: str) -> asyncio.Future:
        fut = asyncio.ensure_future(self._fetch_and_store(server_name))
        self._inflight[server_name] = fut

        def done(f: asyncio.Future) -> None:
            self._inflight.pop(server_name, None)
            if not f.cancelled():
                f.exception()  # retrieved: every waiter may have gone away

        fut.add_done_callback(done)
        return fut

    async def _fetch_and_store(self, server_name: str) -> None:
        from homeserver.handlers.federation.transport import (
            DestinationUnreachable,
            FederationError,
        )

        try:
            response = await self.hs.federation_client.get_server_keys(server_name)
            keys = self._check_response(server_name, response)
        except (FederationError, DestinationUnreachable, SignatureError, ValueError) as e:
            reason = str(e)
            if len(self._failures) > 10_000:
                now = time.monotonic()
                self._failures = {k: v for k, v in self._failures.items() if v[0] > now}
            self._failures[server_name] = (time.monotonic() + FAILURE_TTL, reason)
            log.info("fetching keys of %s failed: %s", server_name, reason)
            raise KeyNotFound(f"cannot get keys of {server_name}: {reason}") from None
        self._failures.pop(server_name, None)
        self._last_fetch[server_name] = time.monotonic()
        self._responses[server_name] = response
        fetched = now_ms()
        rows = []
        for kid, (key, b64, valid_until) in keys.items():
            self._remember(server_name, kid, key, valid_until)
            rows.append([server_name, kid, b64, valid_until, fetched])
        await sql.execute_many(
            "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts, "
            "fetched_ts) VALUES (?,?,?,?,?) ON CONFLICT (server_name, key_id) DO UPDATE SET "
            "verify_key = excluded.verify_key, valid_until_ts = excluded.valid_until_ts, "
            "fetched_ts = excluded.fetched_ts", rows)

    @staticmethod
    def _check_response(server_name: str,
                        response: Any) -> dict[str, tuple[Ed25519PublicKey, str, int]]:
        """Validate a /_matrix/key/v2/server answer; {key_id: (key, b64, valid_until_ts)}."""
        if not isinstance(response, dict):
            raise ValueError("key response is not a JSON object")
        if response.get("server_name") != server_name:
            raise ValueError(f"key response is for {response.get('server_name')!r}, "
                             f"not {server_name}")
        valid_until = response.get("valid_until_ts")
        if not isinstance(valid_until, int) or isinstance(valid_until, bool):
            raise ValueError("key response has no integer valid_until_ts")
        out: dict[str, tuple[Ed25519PublicKey, str, int]] = {}
        for section, ts_field in (("old_verify_keys", "expired_ts"), ("verify_keys", None)):
            entries = response.get(section) or {}
            if not isinstance(entries, dict):
                raise ValueError(f"{section} is not an object")
            for kid, entry in entries.items():
                if not kid.startswith("ed25519:") or not isinstance(entry, dict):
                    continue
                b64 = entry.get("key")
                until = valid_until if ts_field is None else entry.get(ts_field)
                if not isinstance(b64, str) or not isinstance(until, int):
                    continue
                try:
                    out[kid] = (decode_verify_key(b64), b64, until)
                except ValueError:
                    continue
        current = response.get("verify_keys") or {}
        sigs = response.get("signatures")
        own_sigs = sigs.get(server_name) if isinstance(sigs, dict) else None
        if not isinstance(own_sigs, dict):
            raise SignatureError(f"key response of {server_name} is not signed by it")
        verified = False
        for kid in own_sigs:
            if kid in current and kid in out:
                verify_json(response, server_name, kid, out[kid][0])
                verified = True
        if not verified:
            raise SignatureError(f"key response of {server_name} is not signed by a listed key")
        return out

    async def server_keys_response(self, server_name: str,
                                   minimum_valid_until_ts: int = 0) -> dict | None:
        """The server's own signed key response (ours, cached or fetched), or None (notary)."""
        if server_name == self.hs.server_name:
            return self.own_server_keys()
        cached = self._responses.get(server_name)
        last = self._last_fetch.get(server_name)
        if cached is not None and (
                cached.get("valid_until_ts", 0) >= max(minimum_valid_until_ts, now_ms())
                or (last is not None and time.monotonic() - last < MIN_REFETCH_INTERVAL)):
            return cached
        try:
            failure = self._failures.get(server_name)
            if failure and failure[0] > time.monotonic():
                raise KeyNotFound(failure[1])
            await asyncio.shield(self._inflight.get(server_name)
                                 or self._start_fetch(server_name))
        except Exception as e:  # the notary answers with what it has
            log.info("notary lookup of %s failed: %s", server_name, e)
            return cached
        return self._responses.get(server_name)

    # --- verification --------------------------------------------------------------------

    async def verify_json_from(self, server_name: str, obj: dict,
                               at_ts: int | None = None) -> None:
        """SignatureError unless `obj` carries a valid signature by one of the server's keys."""
        sigs = obj.get("signatures") if isinstance(obj, dict) else None
        server_sigs = sigs.get(server_name) if isinstance(sigs, dict) else None
        if not isinstance(server_sigs, dict) or not server_sigs:
            raise SignatureError(f"not signed by {server_name}")
        problems = []
        for key_id in list(server_sigs)[:10]:
            if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                continue
            try:
                key = await self.get_verify_key(server_name, key_id, at_ts)
            except KeyNotFound as e:
                problems.append(str(e))
                continue
            try:
                verify_json(obj, server_name, key_id, key)
                return
            except (SignatureError, ValueError) as e:
                problems.append(str(e))
        raise SignatureError("; ".join(problems) or f"no usable signature from {server_name}")

    async def verify_event(self, pdu: dict, room_version: RoomVersion | str) -> None:
        """Signature checks for a received PDU: the sender's server (and, for restricted
        joins, the authorising user's server) must have signed the redacted event."""
        if not isinstance(pdu, dict):
            raise SignatureError("event is not an object")
        if isinstance(room_version, str):
            try:
                room_version = get_room_version(room_version)
            except ValueError as e:
                raise SignatureError(str(e)) from None
        sender = split_id("@", pdu.get("sender"))
        if sender is None:
            raise SignatureError("event has no valid sender")
        required = [sender[1]]
        content = pdu.get("content")
        if (pdu.get("type") == "m.room.member" and isinstance(content, dict)
                and content.get("membership") == "join"
                and "join_authorised_via_users_server" in content):
            via = split_id("@", content.get("join_authorised_via_users_server"))
            if via is None:
                raise SignatureError("join_authorised_via_users_server is not a user ID")
            if via[1] not in required:
                required.append(via[1])
        ts = pdu.get("origin_server_ts")
        at_ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else None
        sigs = pdu.get("signatures")
        for server in required:
            server_sigs = sigs.get(server) if isinstance(sigs, dict) else None
            if not isinstance(server_sigs, dict) or not server_sigs:
                raise SignatureError(f"event is not signed by {server}")
            problems = []
            for key_id in list(server_sigs)[:10]:
                if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                    continue
                try:
                    key = await self.get_verify_key(server, key_id, at_ts)
                    verify_event_signature(pdu, server, key_id, key, room_version)
                    break
                except (KeyNotFound, SignatureError, ValueError) as e:
                    problems.append(str(e))
            else:
                raise SignatureError("; ".join(problems) or f"no usable signature from {server}")
