"""End-to-end encryption keys: upload, query, claim, cross-signing and signatures.

The server stores and relays public keys; it never holds a private key nor sees plaintext.
What it does check: device keys are for the uploading device and self-signed by the device's
own ed25519 key; signed one-time and fallback keys carry that device's signature; cross-signing
keys are signed by the master key; uploaded signatures verify. A rejected request stores
nothing: everything is validated before the one transaction that writes it.

One-time keys are handed out once (storage claims them with a single DELETE ... RETURNING);
when a device has none left its fallback key is returned (and reported used through /sync).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Iterable

import orjson
from tortoise.transactions import in_transaction

from homeserver.errors import MatrixError, bad_json, forbidden, invalid_param
from homeserver.events.canonical import canonical_json, decode_b64
from homeserver.events.signing import SignatureError, verify_json
from homeserver.handlers.auth import Requester
from homeserver.handlers.device_lists import cross_signing_key_valid
from homeserver.handlers.state import LRU
from homeserver.storage import accounts as account_store
from homeserver.storage import e2e as store
from homeserver.types import is_valid_user_id, server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MAX_KEYS_PER_UPLOAD = 1000
MAX_KEY_ID_LENGTH = 255
MAX_KEY_OBJECT_BYTES = 4096
MAX_DEVICE_KEYS_BYTES = 16384
MAX_QUERY_USERS = 1000
MAX_QUERY_DEVICES = 1000
MAX_CLAIMS = 1000
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 30_000
KEY_STATE_TTL_S = 30.0
KEY_TYPES = {"master_key": "master", "self_signing_key": "self_signing",
             "user_signing_key": "user_signing"}


def _canonical(obj: Any, what: str) -> str:
    try:
        return canonical_json(obj).decode()
    except (ValueError, TypeError) as e:
        raise bad_json(f"{what}: {e}") from None


def _signable(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def _ed25519_public(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return len(decode_b64(value)) == 32
    except ValueError:
        return False


def _timeout_s(timeout: Any) -> float:
    if timeout is None:
        return DEFAULT_TIMEOUT_MS / 1000
    if type(timeout) is not int or timeout < 0:
        raise bad_json("timeout must be a non-negative integer")
    return max(1000, min(timeout, MAX_TIMEOUT_MS)) / 1000


def _merge_signatures(obj: dict, sigs: list[dict]) -> dict:
    if not sigs:
        return obj
    out = dict(obj)
    merged = {u: dict(v) for u, v in (obj.get("signatures") or {}).items() if isinstance(v, dict)}
    for s in sigs:
        merged.setdefault(s["signer_user_id"], {})[s["signer_key_id"]] = s["signature"]
    out["signatures"] = merged
    return out


def _public_key_of(key: dict) -> str:
    return next(iter(key["keys"].values()))


class E2eKeysHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
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

    def _is_local(self, user_id: str) -> bool:
        return server_of(user_id) == self.hs.server_name

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
        if not _ed25519_public(ed):
            raise bad_json(f"device_keys.keys needs ed25519:{device_id} (an ed25519 public key)")
        if not isinstance(dk.get("signatures"), dict):
            raise bad_json("device_keys.signatures must be an object")
        clean = {k: v for k, v in dk.items() if k != "unsigned"}
        if len(_canonical(clean, "device_keys")) > MAX_DEVICE_KEYS_BYTES:
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
                _canonical(value, f"{field}.{name}")  # representable before it is verified
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
            text = _canonical(value, f"{field}.{name}")
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
        dk_text = _canonical(new_dk, "device_keys") if new_dk is not None else None
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

    # --- query -----------------------------------------------------------------------------

    @staticmethod
    def _parse_query(device_keys: Any) -> dict[str, list[str]]:
        if not isinstance(device_keys, dict):
            raise bad_json("device_keys must be an object of user IDs to device ID lists")
        if len(device_keys) > MAX_QUERY_USERS:
            raise MatrixError(413, "M_TOO_LARGE", f"At most {MAX_QUERY_USERS} users per query")
        out: dict[str, list[str]] = {}
        for user_id, devices in device_keys.items():
            if not is_valid_user_id(user_id):
                raise invalid_param(f"{user_id[:80]!r} is not a valid user ID")
            if devices is None:
                devices = []
            if not isinstance(devices, list) or len(devices) > MAX_QUERY_DEVICES or not all(
                    isinstance(d, str) and d and len(d) <= 255 and "\x00" not in d
                    for d in devices):
                raise bad_json(f"device_keys.{user_id}: must be a list of device IDs")
            out[user_id] = devices
        return out

    async def _local_keys(self, query: dict[str, list[str]], requester_id: str | None,
                          display_names: bool) -> dict[str, Any]:
        """Keys of local users, signatures merged in. requester_id None: another server asks
        (no user-signing keys, nobody else's private-ish signatures, no display names)."""
        users = list(query)
        rows = await store.get_users_device_keys(users)
        sigs = await store.get_signatures(users)
        xs = await store.get_cross_signing_keys(users)
        by_target: dict[tuple[str, str], list[dict]] = {}
        for s in sigs:
            by_target.setdefault((s["target_user_id"], s["target_key_id"]), []).append(s)
        device_keys: dict[str, dict] = {u: {} for u in users}
        for r in rows:
            u, d = r["user_id"], r["device_id"]
            wanted = query.get(u)
            if wanted and d not in wanted:
                continue
            obj = orjson.loads(r["key_json"])
            obj = _merge_signatures(obj, [s for s in by_target.get((u, d), [])
                                          if s["signer_user_id"] == u])
            if display_names and r["display_name"]:
                obj["unsigned"] = {"device_display_name": r["display_name"]}
            device_keys[u][d] = obj
        out: dict[str, Any] = {"device_keys": device_keys, "master_keys": {},
                               "self_signing_keys": {}}
        if requester_id is not None:
            out["user_signing_keys"] = {}
        for u, keys in xs.items():
            if "master" in keys:
                master = orjson.loads(keys["master"])
                pub = _public_key_of(master)
                master = _merge_signatures(master, [
                    s for s in by_target.get((u, pub), [])
                    if s["signer_user_id"] == u or s["signer_user_id"] == requester_id])
                out["master_keys"][u] = master
            if "self_signing" in keys:
                out["self_signing_keys"][u] = orjson.loads(keys["self_signing"])
            if "user_signing" in keys and requester_id == u:
                out["user_signing_keys"][u] = orjson.loads(keys["user_signing"])
        return out

    async def query(self, requester: Requester, device_keys: Any,
                    timeout: Any = None) -> dict[str, Any]:
        query = self._parse_query(device_keys)
        timeout_s = _timeout_s(timeout)
        local = {u: d for u, d in query.items() if self._is_local(u)}
        remote: dict[str, dict[str, list[str]]] = {}
        for u, d in query.items():
            if not self._is_local(u):
                remote.setdefault(server_of(u), {})[u] = d
        result = await self._local_keys(local, requester.user_id, display_names=True)
        result["failures"] = {}
        if remote:
            servers = sorted(remote)
            answers = await asyncio.gather(*(self._remote_query(s, remote[s], timeout_s)
                                             for s in servers))
            usk_sigs = await store.get_signatures(
                [u for s in servers for u in remote[s]])
            for server, (snapshots, failure) in zip(servers, answers):
                if failure is not None:
                    result["failures"][server] = failure
                for user_id, snap in snapshots.items():
                    wanted = remote[server][user_id]
                    devices = {}
                    for device_id, entry in (snap.get("devices") or {}).items():
                        if wanted and device_id not in wanted:
                            continue
                        keys = dict(entry["keys"])
                        name = entry.get("device_display_name")
                        if isinstance(name, str):
                            keys["unsigned"] = {"device_display_name": name}
                        devices[device_id] = keys
                    result["device_keys"][user_id] = devices
                    if "master_key" in snap:
                        master = snap["master_key"]
                        pub = _public_key_of(master)
                        mine = [s for s in usk_sigs if s["target_user_id"] == user_id
                                and s["target_key_id"] == pub
                                and s["signer_user_id"] == requester.user_id]
                        result["master_keys"][user_id] = _merge_signatures(master, mine)
                    if "self_signing_key" in snap:
                        result["self_signing_keys"][user_id] = snap["self_signing_key"]
        return result

    async def _remote_query(self, server: str, users: dict[str, list[str]],
                            timeout_s: float) -> tuple[dict[str, dict], dict | None]:
        from homeserver.handlers.federation.transport import server_allowed

        fed = self.hs.config.federation
        if not fed.enabled or not server_allowed(fed, server):
            return {}, {"status": 403, "message": "federation with this server is not allowed"}
        try:
            return await self.hs.device_lists.remote_snapshots(server, list(users), timeout_s)
        except Exception as e:  # never fail the whole query for one server
            log.warning("key query to %s failed: %r", server, e)
            return {}, {"status": 502, "message": "query failed"}

    async def federation_query(self, origin: str, device_keys: Any) -> dict[str, Any]:
        query = self._parse_query(device_keys)
        local = {u: d for u, d in query.items() if self._is_local(u)}
        result = await self._local_keys(local, None, display_names=False)
        return result

    async def local_device_keys_for_federation(self, user_id: str,
                                               device_ids: list[str]) -> dict[str, dict]:
        res = await self._local_keys({user_id: list(device_ids)}, None, display_names=False)
        return res["device_keys"].get(user_id, {}) if device_ids else {}

    async def local_cross_signing_for_federation(self, user_id: str) -> dict[str, dict]:
        res = await self._local_keys({user_id: []}, None, display_names=False)
        out = {}
        if user_id in res["master_keys"]:
            out["master_key"] = res["master_keys"][user_id]
        if user_id in res["self_signing_keys"]:
            out["self_signing_key"] = res["self_signing_keys"][user_id]
        return out

    async def user_devices(self, user_id: Any) -> dict[str, Any]:
        """GET /_matrix/federation/v1/user/devices/{userId}."""
        if not is_valid_user_id(user_id) or not self._is_local(user_id):
            raise invalid_param("Not a user of this server")
        stream_id = await self.hs.device_lists.user_devices_stream_id(user_id)
        res = await self._local_keys({user_id: []}, None, display_names=False)
        devices = [{"device_id": d, "keys": k}
                   for d, k in sorted(res["device_keys"].get(user_id, {}).items())]
        out: dict[str, Any] = {"user_id": user_id, "stream_id": stream_id, "devices": devices}
        if user_id in res["master_keys"]:
            out["master_key"] = res["master_keys"][user_id]
        if user_id in res["self_signing_keys"]:
            out["self_signing_key"] = res["self_signing_keys"][user_id]
        return out

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
        claims = self._parse_claim(one_time_keys)
        timeout_s = _timeout_s(timeout)
        local = {u: d for u, d in claims.items() if self._is_local(u)}
        remote: dict[str, dict[str, dict[str, str]]] = {}
        for u, d in claims.items():
            if not self._is_local(u):
                remote.setdefault(server_of(u), {})[u] = d
        result: dict[str, Any] = {"one_time_keys": await self._claim_local(local),
                                  "failures": {}}
        if remote:
            servers = sorted(remote)
            answers = await asyncio.gather(*(self._remote_claim(s, remote[s], timeout_s)
                                             for s in servers))
            for server, (keys, failure) in zip(servers, answers):
                if failure is not None:
                    result["failures"][server] = failure
                result["one_time_keys"].update(keys)
        return result

    async def _remote_claim(self, server: str, claims: dict[str, dict[str, str]],
                            timeout_s: float) -> tuple[dict, dict | None]:
        from homeserver.handlers.device_lists import _failure
        from homeserver.handlers.federation.transport import server_allowed

        fed = self.hs.config.federation
        if not fed.enabled or not server_allowed(fed, server):
            return {}, {"status": 403, "message": "federation with this server is not allowed"}
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
        claims = self._parse_claim(one_time_keys)
        local = {u: d for u, d in claims.items() if self._is_local(u)}
        return {"one_time_keys": await self._claim_local(local)}

    # --- cross-signing ---------------------------------------------------------------------

    def _parse_cross_signing_key(self, name: str, key: Any, user_id: str) -> dict:
        usage = KEY_TYPES[name]
        if not isinstance(key, dict):
            raise bad_json(f"{name} must be an object")
        if key.get("user_id") != user_id:
            raise invalid_param(f"{name}.user_id must be the user uploading it")
        usages = key.get("usage")
        if not isinstance(usages, list) or usage not in usages or not all(
                u in KEY_TYPES.values() for u in usages):
            raise bad_json(f"{name}.usage must contain {usage!r}")
        keys = key.get("keys")
        if not isinstance(keys, dict) or len(keys) != 1:
            raise bad_json(f"{name}.keys must hold exactly one key")
        (key_id, pub), = keys.items()
        if not isinstance(key_id, str) or key_id != f"ed25519:{pub}" or not _ed25519_public(pub):
            raise bad_json(f"{name}.keys must be {{\"ed25519:<public key>\": \"<public key>\"}}")
        if "signatures" in key and not isinstance(key["signatures"], dict):
            raise bad_json(f"{name}.signatures must be an object")
        clean = {k: v for k, v in key.items() if k != "unsigned"}
        if len(_canonical(clean, name)) > MAX_DEVICE_KEYS_BYTES:
            raise MatrixError(413, "M_TOO_LARGE", f"{name} is too large")
        return clean

    async def upload_signing_keys(self, requester: Requester, body: dict[str, Any]) -> None:
        user_id = requester.user_id
        given = {name: self._parse_cross_signing_key(name, body[name], user_id)
                 for name in KEY_TYPES if body.get(name) is not None}
        if not given:
            return
        stored = (await store.get_cross_signing_keys([user_id])).get(user_id, {})
        master = given.get("master_key")
        if master is None and "master" in stored:
            master = orjson.loads(stored["master"])
        if master is None:
            raise MatrixError(400, "M_MISSING_PARAM", "No master key available to verify "
                                                      "the signature")
        master_pub = _public_key_of(master)
        for name in ("self_signing_key", "user_signing_key"):
            if name in given:
                try:
                    verify_json(given[name], user_id, f"ed25519:{master_pub}", master_pub)
                except SignatureError as e:
                    raise MatrixError(400, "M_INVALID_SIGNATURE",
                                      f"{name} is not signed by the master key: {e}") from None
        texts = {KEY_TYPES[n]: _canonical(k, n) for n, k in given.items()}
        changed = {t: text for t, text in texts.items() if stored.get(t) != text}
        if not changed:
            return  # the same keys again: idempotent, no authentication needed
        if "master" in stored and requester.appservice_id is None:
            await self.hs.accounts.check_password_auth(requester, body.get("auth"))
        devices = (await store.existing_devices([user_id])).get(user_id, set())
        for n, k in given.items():
            if _public_key_of(k) in devices:
                raise forbidden("Key ID in use: a cross-signing key equals a device ID")
        old_ids = [f"ed25519:{_public_key_of(orjson.loads(stored[t]))}"
                   for t in changed if t in stored]

        async def write(conn) -> None:
            if old_ids:  # signatures made by replaced keys no longer mean anything
                await store.delete_signatures_by_signer_key(user_id, old_ids, conn)
            if "master" in changed and "master" in stored:
                await store.delete_signatures_on_target(
                    user_id, _public_key_of(orjson.loads(stored["master"])), conn)
            for t, text in changed.items():
                key = orjson.loads(text)
                await store.set_cross_signing_key(user_id, t, _public_key_of(key), text, conn)

        await self.hs.device_lists.local_change(user_id, [""], write)

    async def upload_signatures(self, requester: Requester,
                                body: dict[str, Any]) -> dict[str, Any]:
        me = requester.user_id
        failures: dict[str, dict[str, dict]] = {}
        rows: list[tuple[str, str, str, str, str]] = []
        signed_devices: list[str] = []
        own_master_signed = False
        if len(body) > MAX_QUERY_USERS:
            raise MatrixError(413, "M_TOO_LARGE", "Too many users")
        mine = (await store.get_cross_signing_keys([me])).get(me, {})
        for target_user, by_key in body.items():
            if not is_valid_user_id(target_user):
                raise invalid_param(f"{target_user[:80]!r} is not a valid user ID")
            if not isinstance(by_key, dict):
                raise bad_json(f"{target_user}: must map key IDs to signed objects")
            for key_id, obj in by_key.items():
                try:
                    new, kind = await self._check_signature(me, mine, target_user, key_id, obj)
                except MatrixError as e:
                    failures.setdefault(target_user, {})[key_id] = {
                        "errcode": e.errcode, "error": e.error}
                    continue
                rows += new
                if kind == "device":
                    signed_devices.append(key_id)
                elif kind == "own_master":
                    own_master_signed = True
        if rows:
            async def write(conn) -> None:
                await store.add_signatures(rows, conn)

            changes = signed_devices + ([""] if own_master_signed else [])
            if changes:
                await self.hs.device_lists.local_change(me, changes, write)
            else:
                async with in_transaction() as conn:
                    await write(conn)
        return {"failures": failures}

    async def _check_signature(self, me: str, mine: dict[str, str], target_user: str,
                               key_id: str, obj: Any) -> tuple[list[tuple], str]:
        if not isinstance(obj, dict) or not isinstance(obj.get("signatures"), dict):
            raise bad_json("The signed object must be an object with signatures")
        my_sigs = obj["signatures"].get(me)
        if not isinstance(my_sigs, dict) or not my_sigs:
            raise MatrixError(400, "M_INVALID_SIGNATURE", "No signature from the uploader")
        if not key_id or len(key_id) > 255 or "\x00" in key_id:
            raise invalid_param("Invalid key ID")
        if target_user == me:
            master = orjson.loads(mine["master"]) if "master" in mine else None
            if master is not None and key_id == _public_key_of(master):
                # Our own master key, signed by one of our devices.
                if _canonical(_signable(obj), "key") != _canonical(_signable(master), "key"):
                    raise invalid_param("The signed object does not match the master key")
                out = []
                for sig_key_id, sig in my_sigs.items():
                    alg, _, dev = str(sig_key_id).partition(":")
                    if alg != "ed25519" or not isinstance(sig, str) or not dev \
                            or len(dev) > 255 or "\x00" in dev:
                        continue
                    dk_text = await store.get_device_keys(me, dev)
                    if dk_text is None:
                        continue
                    dk = orjson.loads(dk_text)
                    try:
                        verify_json(obj, me, sig_key_id, dk["keys"][f"ed25519:{dev}"])
                    except (SignatureError, KeyError):
                        raise MatrixError(400, "M_INVALID_SIGNATURE",
                                          f"Invalid signature by {sig_key_id}") from None
                    out.append((me, sig_key_id, me, key_id, sig))
                if not out:
                    raise MatrixError(400, "M_INVALID_SIGNATURE", "No signature by a device")
                return out, "own_master"
            # One of our devices, signed by our self-signing key.
            dk_text = await store.get_device_keys(me, key_id)
            if dk_text is None:
                raise MatrixError(404, "M_NOT_FOUND", "Unknown device")
            if "self_signing" not in mine:
                raise MatrixError(400, "M_MISSING_PARAM", "No self-signing key uploaded")
            if _canonical(_signable(obj), "key") != _canonical(_signable(orjson.loads(dk_text)),
                                                                "key"):
                raise invalid_param("The signed object does not match the device keys")
            ssk_pub = _public_key_of(orjson.loads(mine["self_signing"]))
            return [self._verified(obj, me, ssk_pub, key_id)], "device"
        # Someone else's master key, signed by our user-signing key.
        if "user_signing" not in mine:
            raise MatrixError(400, "M_MISSING_PARAM", "No user-signing key uploaded")
        master = await self._master_key_of(target_user)
        if master is None or key_id != _public_key_of(master):
            raise MatrixError(404, "M_NOT_FOUND", "Unknown master key")
        if _canonical(_signable(obj), "key") != _canonical(_signable(master), "key"):
            raise invalid_param("The signed object does not match the master key")
        usk_pub = _public_key_of(orjson.loads(mine["user_signing"]))
        row = self._verified(obj, me, usk_pub, key_id)
        return [(row[0], row[1], target_user, row[3], row[4])], "other_master"

    @staticmethod
    def _verified(obj: dict, me: str, pub: str, target_key_id: str) -> tuple:
        sig_key_id = f"ed25519:{pub}"
        try:
            verify_json(obj, me, sig_key_id, pub)
        except SignatureError as e:
            raise MatrixError(400, "M_INVALID_SIGNATURE", str(e)) from None
        return (me, sig_key_id, me, target_key_id, obj["signatures"][me][sig_key_id])

    async def _master_key_of(self, user_id: str) -> dict | None:
        if self._is_local(user_id):
            keys = (await store.get_cross_signing_keys([user_id])).get(user_id, {})
            return orjson.loads(keys["master"]) if "master" in keys else None
        snaps, _ = await self._remote_query(server_of(user_id), {user_id: []},
                                            DEFAULT_TIMEOUT_MS / 1000)
        master = (snaps.get(user_id) or {}).get("master_key")
        return master if cross_signing_key_valid(master, user_id, "master") else None

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
