"""End-to-end encryption keys: upload, query, claim, cross-signing and signatures.

The server stores and relays public keys; it never holds a private key nor sees plaintext.
What it does check: device keys are for the uploading device and self-signed by the device's
own ed25519 key; signed one-time and fallback keys carry that device's signature; cross-signing
keys are signed by the master key; uploaded signatures verify. A rejected request stores
nothing: everything is validated before the one transaction that writes it.

One-time keys are handed out once (storage claims them with a single DELETE ... RETURNING);
when a device has none left its fallback key is returned (and reported used through /sync).

This module: device, one-time and fallback keys (upload, counts, claim) and what goes when
devices go; key queries are in e2e_keys_query.py, cross-signing keys and signatures in
e2e_keys_signing.py, what they share in e2e_keys_common.py. E2eKeysHandler is the one entry
point (hs.e2e_keys) for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Iterable

import orjson
from homeserver.storage.transactions import in_transaction

from homeserver.errors import MatrixError, bad_json, invalid_param
from homeserver.events.signing import SignatureError, verify_json
from homeserver.handlers.auth import Requester
from homeserver.handlers.e2e_keys_common import (FEDERATION_REFUSED, MAX_CLAIMS,
                                                 MAX_DEVICE_KEYS_BYTES, MAX_KEY_ID_LENGTH,
                                                 MAX_KEY_OBJECT_BYTES, MAX_KEYS_PER_UPLOAD,
                                                 E2eKeysPart, canonical, is_ed25519_public)
from homeserver.handlers.e2e_keys_query import KeyQueries
from homeserver.handlers.e2e_keys_signing import CrossSigning
from homeserver.handlers.lru import LRU
from homeserver.storage import accounts as account_store
from homeserver.storage import e2e as store
from homeserver.types import is_valid_user_id

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

KEY_STATE_TTL_S = 30.0


class E2eKeysHandler(E2eKeysPart):
    def __init__(self, hs: HomeServer) -> None:
        super().__init__(hs)
        self.queries = KeyQueries(hs)
        self.cross_signing = CrossSigning(hs, self.queries)
        # (user, device) -> (monotonic time, one-time key counts, unused fallback algorithms):
        # every /sync response carries them, most syncs change neither. Writes in this
        # process drop the entry; the short lifetime bounds staleness from anywhere else.
        self._key_state: LRU = LRU(20_000)
        self._key_state_dropped: LRU = LRU(20_000)  # (user, device) -> when last dropped

    def _forget_key_state(self, user_id: str, device_ids: Iterable[str]) -> None:
        now = time.monotonic()
        for d in device_ids:
            self._key_state.pop((user_id, d), None)
            self._key_state_dropped.put((user_id, d), now)

    async def _device_key_state(self, user_id: str,
                                device_id: str) -> tuple[dict[str, int], list[str]]:
        key = (user_id, device_id)
        hit = self._key_state.get_item(key)
        if hit is not None and time.monotonic() - hit[0] < KEY_STATE_TTL_S:
            return hit[1], hit[2]
        started = time.monotonic()
        counts = await store.count_one_time_keys(user_id, device_id)
        # Clients read these two without checking they are present.
        counts.setdefault("signed_curve25519", 0)
        counts.setdefault("curve25519", 0)
        unused = await store.unused_fallback_algorithms(user_id, device_id)
        dropped = self._key_state_dropped.get_item(key)
        if dropped is None or dropped < started:  # no write raced with the reads
            self._key_state.put(key, (started, counts, unused))
        return counts, unused

    # --- upload ----------------------------------------------------------------------------

    def _parse_device_keys(self, dk: Any, user_id: str, device_id: str) -> dict:
        if not isinstance(dk, dict):
            raise bad_json("device_keys must be an object")
        if dk.get("user_id") != user_id:
            raise invalid_param("device_keys.user_id must be the user uploading them")
        if dk.get("device_id") != device_id:
            raise invalid_param("device_keys.device_id must be the device uploading them")
        algorithms = dk.get("algorithms")
        if not isinstance(algorithms, list) or not all(
                isinstance(a, str) and 0 < len(a) <= 255 for a in algorithms) \
                or len(algorithms) > 100:
            raise bad_json("device_keys.algorithms must be a list of strings")
        keys = dk.get("keys")
        if not isinstance(keys, dict) or not keys or len(keys) > 100 or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 512 and len(v) <= 1024
                for k, v in keys.items()):
            raise bad_json("device_keys.keys must map key IDs to strings")
        ed = keys.get(f"ed25519:{device_id}")
        if not is_ed25519_public(ed):
            raise bad_json(f"device_keys.keys needs ed25519:{device_id} (an ed25519 public key)")
        if not isinstance(dk.get("signatures"), dict):
            raise bad_json("device_keys.signatures must be an object")
        clean = {k: v for k, v in dk.items() if k != "unsigned"}
        if len(canonical(clean, "device_keys")) > MAX_DEVICE_KEYS_BYTES:
            raise MatrixError(413, "M_TOO_LARGE", "device_keys is too large")
        try:
            verify_json(clean, user_id, f"ed25519:{device_id}", ed)
        except SignatureError as e:
            raise MatrixError(400, "M_INVALID_SIGNATURE",
                              f"device_keys is not signed by the device key: {e}") from None
        return clean

    def _parse_keys(self, field: str, keys: Any, user_id: str, device_id: str,
                    ed_key: str | None, fallback: bool) -> list[tuple[str, str, str]]:
        """(algorithm, key_id, canonical json) for a one_time_keys/fallback_keys map."""
        if keys is None:
            return []
        if not isinstance(keys, dict):
            raise bad_json(f"{field} must be an object")
        if len(keys) > MAX_KEYS_PER_UPLOAD:
            raise MatrixError(413, "M_TOO_LARGE",
                              f"At most {MAX_KEYS_PER_UPLOAD} keys in {field} per upload")
        out = []
        for name, value in keys.items():
            algorithm, sep, key_id = name.partition(":")
            if not sep or not algorithm or not key_id or len(name) > MAX_KEY_ID_LENGTH \
                    or "\x00" in name:
                raise bad_json(f"{field}: key names must be <algorithm>:<key_id>, "
                               f"got {name[:80]!r}")
            if isinstance(value, str):
                if not value or len(value) > 1024:
                    raise bad_json(f"{field}.{name}: the key must be a non-empty string")
            elif isinstance(value, dict):
                if not isinstance(value.get("key"), str) or not value["key"] \
                        or len(value["key"]) > 1024:
                    raise bad_json(f"{field}.{name}: key must be a non-empty string")
                if not isinstance(value.get("signatures"), dict):
                    raise bad_json(f"{field}.{name}: signatures must be an object")
                if fallback and "fallback" in value and value["fallback"] is not True:
                    raise bad_json(f"{field}.{name}: fallback must be true")
                canonical(value, f"{field}.{name}")  # representable before it is verified
                if ed_key is None:
                    raise invalid_param("Upload the device keys before signed keys")
                try:
                    verify_json(value, user_id, f"ed25519:{device_id}", ed_key)
                except SignatureError as e:
                    raise MatrixError(400, "M_INVALID_SIGNATURE",
                                      f"{field}.{name} is not signed by the device: {e}") \
                        from None
            else:
                raise bad_json(f"{field}.{name} must be a string or a key object")
            text = canonical(value, f"{field}.{name}")
            if len(text) > MAX_KEY_OBJECT_BYTES:
                raise MatrixError(413, "M_TOO_LARGE", f"{field}.{name} is too large")
            out.append((algorithm, key_id, text))
        return out

    async def upload(self, requester: Requester, body: dict[str, Any]) -> dict[str, Any]:
        user_id, device_id = requester.user_id, requester.device_id
        if not device_id:
            raise invalid_param("Keys can only be uploaded with an access token of a device")
        new_dk = None
        if body.get("device_keys") is not None:
            new_dk = self._parse_device_keys(body["device_keys"], user_id, device_id)
        stored_text = await store.get_device_keys(user_id, device_id)
        source = new_dk if new_dk is not None else (
            orjson.loads(stored_text) if stored_text else None)
        ed_key = source["keys"].get(f"ed25519:{device_id}") if source else None
        otks = self._parse_keys("one_time_keys", body.get("one_time_keys"), user_id, device_id,
                                ed_key, fallback=False)
        fallbacks = self._parse_keys("fallback_keys", body.get("fallback_keys"), user_id,
                                     device_id, ed_key, fallback=True)
        algs = [a for a, _, _ in fallbacks]
        if len(algs) != len(set(algs)):
            raise bad_json("fallback_keys: at most one key per algorithm")
        if otks:
            existing = await store.existing_one_time_keys(user_id, device_id,
                                                          [(a, k) for a, k, _ in otks])
            for a, k, text in otks:
                if existing.get((a, k)) not in (None, text):
                    raise invalid_param(f"One-time key {a}:{k} already exists with a "
                                        "different value")
        dk_text = canonical(new_dk, "device_keys") if new_dk is not None else None
        fb_changes = []
        for a, k, text in fallbacks:
            cur = await store.get_fallback_key(user_id, device_id, a)
            if cur is None or cur["key_id"] != k or cur["key_json"] != text:
                fb_changes.append((a, k, text))

        async def write(conn) -> None:
            if dk_text is not None:
                await store.upsert_device_keys(user_id, device_id, dk_text, conn)
            if otks:
                await store.add_one_time_keys(user_id, device_id, otks, conn)
            for a, k, text in fb_changes:
                await store.set_fallback_key(user_id, device_id, a, k, text, conn)

        try:
            if dk_text is not None and dk_text != stored_text:
                await self.hs.device_lists.local_change(user_id, [device_id], write)
            elif otks or fb_changes:
                async with in_transaction() as conn:
                    await write(conn)
        finally:
            self._forget_key_state(user_id, [device_id])
        return {"one_time_key_counts": await self.one_time_key_counts(user_id, device_id)}

    async def one_time_key_counts(self, user_id: str, device_id: str) -> dict[str, int]:
        return dict((await self._device_key_state(user_id, device_id))[0])

    async def unused_fallback_key_types(self, user_id: str, device_id: str) -> list[str]:
        return list((await self._device_key_state(user_id, device_id))[1])

    # --- claim -----------------------------------------------------------------------------

    @staticmethod
    def _parse_claim(one_time_keys: Any) -> dict[str, dict[str, str]]:
        if not isinstance(one_time_keys, dict):
            raise bad_json("one_time_keys must be an object of user IDs to device maps")
        out: dict[str, dict[str, str]] = {}
        total = 0
        for user_id, devices in one_time_keys.items():
            if not is_valid_user_id(user_id):
                raise invalid_param(f"{user_id[:80]!r} is not a valid user ID")
            if not isinstance(devices, dict):
                raise bad_json(f"one_time_keys.{user_id}: must map device IDs to algorithms")
            for device_id, algorithm in devices.items():
                if not device_id or len(device_id) > 255 or "\x00" in device_id:
                    raise bad_json(f"one_time_keys.{user_id}: invalid device ID")
                if not isinstance(algorithm, str) or not algorithm or len(algorithm) > 255 \
                        or "\x00" in algorithm:
                    raise bad_json(f"one_time_keys.{user_id}.{device_id}: the algorithm must "
                                   "be a string")
                total += 1
            out[user_id] = dict(devices)
        if total > MAX_CLAIMS:
            raise MatrixError(413, "M_TOO_LARGE", f"At most {MAX_CLAIMS} keys per claim")
        return out

    async def _claim_local(self, claims: dict[str, dict[str, str]]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for user_id, devices in claims.items():
            for device_id, algorithm in devices.items():
                got = await store.claim_one_time_key(user_id, device_id, algorithm)
                if got is None:
                    got = await store.claim_fallback_key(user_id, device_id, algorithm)
                if got is None:
                    continue
                self._forget_key_state(user_id, [device_id])
                key_id, key_json = got
                out.setdefault(user_id, {}).setdefault(device_id, {})[
                    f"{algorithm}:{key_id}"] = orjson.loads(key_json)
        return out

    async def claim(self, requester: Requester, one_time_keys: Any,
                    timeout: Any = None) -> dict[str, Any]:
        local, remote, timeout_s = self._split_request(self._parse_claim(one_time_keys), timeout)
        result: dict[str, Any] = {"one_time_keys": await self._claim_local(local),
                                  "failures": {}}
        for _, keys in await self._ask_servers(remote, self._remote_claim, timeout_s,
                                               result["failures"]):
            result["one_time_keys"].update(keys)
        return result

    async def _remote_claim(self, server: str, claims: dict[str, dict[str, str]],
                            timeout_s: float) -> tuple[dict, dict | None]:
        from homeserver.handlers.device_lists import _failure

        if not self._may_federate(server):
            return {}, dict(FEDERATION_REFUSED)
        try:
            resp = await asyncio.wait_for(self.hs.federation_client.user_keys_claim(
                server, {"one_time_keys": claims}), timeout_s)
        except Exception as e:
            return {}, _failure(e)
        keys = resp.get("one_time_keys") if isinstance(resp, dict) else None
        out: dict[str, dict] = {}
        for user_id, devices in (keys.items() if isinstance(keys, dict) else []):
            if user_id not in claims or not isinstance(devices, dict):
                continue  # only what was asked, from the server that owns it
            for device_id, by_key in devices.items():
                if device_id in claims[user_id] and isinstance(by_key, dict):
                    out.setdefault(user_id, {})[device_id] = by_key
        return out, None

    async def federation_claim(self, origin: str, one_time_keys: Any) -> dict[str, Any]:
        local, _ = self._split_local(self._parse_claim(one_time_keys))
        return {"one_time_keys": await self._claim_local(local)}

    # --- queries and cross-signing (e2e_keys_query.py, e2e_keys_signing.py) ---------------

    async def query(self, requester: Requester, device_keys: Any,
                    timeout: Any = None) -> dict[str, Any]:
        return await self.queries.query(requester, device_keys, timeout)

    async def federation_query(self, origin: str, device_keys: Any) -> dict[str, Any]:
        return await self.queries.federation_query(origin, device_keys)

    async def local_device_keys_for_federation(self, user_id: str,
                                               device_ids: list[str]) -> dict[str, dict]:
        return await self.queries.local_device_keys_for_federation(user_id, device_ids)

    async def local_cross_signing_for_federation(self, user_id: str) -> dict[str, dict]:
        return await self.queries.local_cross_signing_for_federation(user_id)

    async def user_devices(self, user_id: Any) -> dict[str, Any]:
        return await self.queries.user_devices(user_id)

    async def upload_signing_keys(self, requester: Requester, body: dict[str, Any]) -> None:
        await self.cross_signing.upload_signing_keys(requester, body)

    async def upload_signatures(self, requester: Requester,
                                body: dict[str, Any]) -> dict[str, Any]:
        return await self.cross_signing.upload_signatures(requester, body)

    # --- device removal --------------------------------------------------------------------

    async def on_devices_removed(self, user_id: str) -> None:
        """Called after devices were deleted (logout, device deletion, password change,
        deactivation): their keys, one-time keys and inbox go, and the change is announced."""
        try:
            gone = await store.orphaned_key_devices(user_id)
            account = await account_store.get_user(user_id)
            deactivated = account is not None and account.deactivated
            if not gone and not deactivated:
                return

            async def write(conn) -> None:
                await store.delete_device_data(user_id, gone, conn)
                if deactivated:
                    await store.delete_user_keys(user_id, conn)

            await self.hs.device_lists.local_change(
                user_id, gone + ([""] if deactivated else []), write)
            self._forget_key_state(user_id, gone)
        except Exception:
            log.exception("removing the keys of deleted devices of %s failed", user_id)
