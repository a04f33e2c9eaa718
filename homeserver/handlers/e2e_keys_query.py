"""Key queries: device keys and cross-signing keys of local users (for clients, with
signatures and display names, and for other servers), and of remote users through their
servers (POST /keys/query, /_matrix/federation/v1/user/keys/query, user/devices)."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from homeserver.errors import MatrixError, bad_json, invalid_param
from homeserver.handlers.auth import Requester
from homeserver.handlers.device_lists import cross_signing_key_valid
from homeserver.handlers.e2e_keys_common import (DEFAULT_TIMEOUT_MS, FEDERATION_REFUSED,
                                                 MAX_QUERY_DEVICES, MAX_QUERY_USERS,
                                                 E2eKeysPart, merge_signatures, public_key_of)
from homeserver.storage import e2e as store
from homeserver.types import is_valid_user_id, server_of

log = logging.getLogger(__name__)


def _public_cross_signing(res: dict[str, Any], user_id: str) -> dict[str, dict]:
    """The master and self-signing keys of a user in a _local_keys() answer, as federation
    names them (user-signing keys are never shared)."""
    out = {}
    if user_id in res["master_keys"]:
        out["master_key"] = res["master_keys"][user_id]
    if user_id in res["self_signing_keys"]:
        out["self_signing_key"] = res["self_signing_keys"][user_id]
    return out


class KeyQueries(E2eKeysPart):
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
            obj = merge_signatures(obj, [s for s in by_target.get((u, d), [])
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
                pub = public_key_of(master)
                master = merge_signatures(master, [
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
        local, remote, timeout_s = self._split_request(self._parse_query(device_keys), timeout)
        result = await self._local_keys(local, requester.user_id, display_names=True)
        result["failures"] = {}
        if remote:
            answers = await self._ask_servers(remote, self._remote_query, timeout_s,
                                              result["failures"])
            usk_sigs = await store.get_signatures([u for s in remote for u in remote[s]])
            for server, snapshots in answers:
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
                        pub = public_key_of(master)
                        mine = [s for s in usk_sigs if s["target_user_id"] == user_id
                                and s["target_key_id"] == pub
                                and s["signer_user_id"] == requester.user_id]
                        result["master_keys"][user_id] = merge_signatures(master, mine)
                    if "self_signing_key" in snap:
                        result["self_signing_keys"][user_id] = snap["self_signing_key"]
        return result

    async def _remote_query(self, server: str, users: dict[str, list[str]],
                            timeout_s: float) -> tuple[dict[str, dict], dict | None]:
        if not self._may_federate(server):
            return {}, dict(FEDERATION_REFUSED)
        try:
            return await self.hs.device_lists.remote_snapshots(server, list(users), timeout_s)
        except Exception as e:  # never fail the whole query for one server
            log.warning("key query to %s failed: %r", server, e)
            return {}, {"status": 502, "message": "query failed"}

    async def federation_query(self, origin: str, device_keys: Any) -> dict[str, Any]:
        local, _ = self._split_local(self._parse_query(device_keys))
        return await self._local_keys(local, None, display_names=False)

    async def local_device_keys_for_federation(self, user_id: str,
                                               device_ids: list[str]) -> dict[str, dict]:
        res = await self._local_keys({user_id: list(device_ids)}, None, display_names=False)
        return res["device_keys"].get(user_id, {}) if device_ids else {}

    async def local_cross_signing_for_federation(self, user_id: str) -> dict[str, dict]:
        res = await self._local_keys({user_id: []}, None, display_names=False)
        return _public_cross_signing(res, user_id)

    async def user_devices(self, user_id: Any) -> dict[str, Any]:
        """GET /_matrix/federation/v1/user/devices/{userId}."""
        if not is_valid_user_id(user_id) or not self._is_local(user_id):
            raise invalid_param("Not a user of this server")
        stream_id = await self.hs.device_lists.user_devices_stream_id(user_id)
        res = await self._local_keys({user_id: []}, None, display_names=False)
        devices = [{"device_id": d, "keys": k}
                   for d, k in sorted(res["device_keys"].get(user_id, {}).items())]
        return {"user_id": user_id, "stream_id": stream_id, "devices": devices,
                **_public_cross_signing(res, user_id)}

    async def master_key_of(self, user_id: str) -> dict | None:
        """A user's master key, local or fetched from its server (None: none, or invalid)."""
        if self._is_local(user_id):
            keys = (await store.get_cross_signing_keys([user_id])).get(user_id, {})
            return orjson.loads(keys["master"]) if "master" in keys else None
        snaps, _ = await self._remote_query(server_of(user_id), {user_id: []},
                                            DEFAULT_TIMEOUT_MS / 1000)
        master = (snaps.get(user_id) or {}).get("master_key")
        return master if cross_signing_key_valid(master, user_id, "master") else None
