"""Device lists: who has to re-fetch whose keys, locally and across servers.

The device list stream (`device_list_changes`) records "user X changed a device (or their
cross-signing keys) at position N", for local users (key upload, device deleted, signature
added) and for remote users (an m.device_list_update / m.signing_key_update EDU). /sync turns it
into `device_lists.changed` for users who share a room with the syncing user, plus membership
changes: someone who starts sharing a room is "changed", someone who no longer shares any room
is "left".

Local changes go to every other server sharing a room with the user as m.device_list_update
EDUs: `stream_id` is the stream position, `prev_id` the previous device change of the same user,
so a receiver that missed one notices the gap. Remote device lists are cached here (for users
who share a room with a local user) and kept current by those EDUs; when an EDU does not follow
on from the cached position, or when memberships changed since the cache was filled (EDUs may
have gone elsewhere meanwhile), the cache is dropped and the next key query fetches
/user/devices again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from homeserver.storage.transactions import in_transaction

from homeserver.events.signing import SignatureError, verify_json
from homeserver.handlers.lru import LRU
from homeserver.storage import e2e as store
from homeserver.storage import federation_queue as queue
from homeserver.storage import state as state_store
from homeserver.types import is_valid_user_id, server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer
    from homeserver.types import StreamToken

log = logging.getLogger(__name__)

Write = Callable[[Any], Awaitable[None]]
MAX_STREAM_ID = 2**63 - 1
MAX_PREV_IDS = 100
MAX_REMOTE_DEVICES = 1000  # devices kept per remote user


def device_keys_valid(keys: Any, user_id: str, device_id: str) -> bool:
    """A device keys object for exactly this device, self-signed by its own ed25519 key."""
    if not isinstance(keys, dict) or keys.get("user_id") != user_id \
            or keys.get("device_id") != device_id or not isinstance(keys.get("keys"), dict):
        return False
    ed = keys["keys"].get(f"ed25519:{device_id}")
    if not isinstance(ed, str):
        return False
    try:
        verify_json(keys, user_id, f"ed25519:{device_id}", ed)
    except (SignatureError, ValueError):
        return False
    return True


def cross_signing_key_valid(key: Any, user_id: str, usage: str) -> bool:
    if not isinstance(key, dict) or key.get("user_id") != user_id:
        return False
    usages = key.get("usage")
    keys = key.get("keys")
    return (isinstance(usages, list) and usage in usages and isinstance(keys, dict)
            and len(keys) == 1 and all(isinstance(v, str) for v in keys.values()))


class DeviceListHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        # Remote user -> highest stream_id of an EDU seen while nothing was cached: a snapshot
        # fetched concurrently that is older than it must not be cached.
        self._uncached_edus: LRU = LRU(10_000)
        self._fetching: dict[str, asyncio.Future] = {}

    def current_position(self) -> int:
        return self.hs.ids.device_lists.visible

    # --- writing the stream --------------------------------------------------------------------

    async def _append(self, user_id: str, device_ids: list[str], write: Write | None) -> int:
        """One transaction under the stream lock: write(conn) and one row per device."""
        ids = self.hs.ids.device_lists
        async with ids.lock:
            async with in_transaction() as conn:
                if write is not None:
                    await write(conn)
                positions = [ids.next() for _ in device_ids]
                await store.add_device_list_changes(
                    [(p, user_id, d) for p, d in zip(positions, device_ids)], conn)
            ids.mark_visible(positions[-1])
        rooms = await store.joined_rooms(user_id)
        self.hs.notifier.notify("device_lists", positions[-1], rooms=rooms, users=[user_id])
        return positions[0]

    async def local_change(self, user_id: str, device_ids: list[str],
                           write: Write | None = None) -> None:
        """A local user's devices changed ("" = cross-signing keys): write(conn) runs in the same
        transaction as the stream rows; then local syncs wake and other servers are told."""
        device_ids = list(dict.fromkeys(device_ids))
        if not device_ids:
            if write is not None:
                async with in_transaction() as conn:
                    await write(conn)
            return
        devices = [d for d in device_ids if d]
        # Device changes first: their positions chain through prev_id.
        order = devices + [d for d in device_ids if not d]
        prev_holder: list[int] = []

        async def write_all(conn) -> None:
            prev_holder.append(await self._last_device_change(user_id, conn))
            if write is not None:
                await write(conn)

        first = await self._append(user_id, order, write_all)
        try:
            await self._send_local_change(user_id, devices, first, prev_holder[0],
                                          cross_signing=len(order) > len(devices))
        except Exception:
            log.exception("queueing device list EDUs for %s failed", user_id)

    async def _last_device_change(self, user_id: str, conn=None) -> int:
        return await store.last_device_change(user_id, conn)

    def _federation_on(self) -> bool:
        fed = getattr(self.hs.config, "federation", None)
        return fed is None or getattr(fed, "enabled", True)

    async def remote_servers_for(self, user_id: str) -> list[str]:
        """Other servers with a user sharing a room with this user."""
        from homeserver.handlers.federation.transport import server_allowed

        if not self._federation_on():
            return []
        others = await queue.users_sharing_rooms_with(user_id)
        fed = self.hs.config.federation
        return sorted({s for s in (server_of(u) for u in others)
                       if s and s != self.hs.server_name and server_allowed(fed, s)})

    async def _send_local_change(self, user_id: str, devices: list[str], first: int,
                                 prev: int, cross_signing: bool) -> None:
        servers = await self.remote_servers_for(user_id)
        sender = getattr(self.hs, "federation_sender", None)
        if not servers or sender is None:
            return
        e2e = self.hs.e2e_keys
        keys = await e2e.local_device_keys_for_federation(user_id, devices)
        existing = (await store.existing_devices([user_id])).get(user_id, set())
        pos = first
        for device_id in devices:
            content: dict[str, Any] = {"user_id": user_id, "device_id": device_id,
                                       "stream_id": pos, "prev_id": [prev] if prev else []}
            if device_id not in existing:
                content["deleted"] = True
            elif device_id in keys:
                content["keys"] = keys[device_id]
            await sender.queue_edus(servers, {"edu_type": "m.device_list_update",
                                              "content": content})
            prev = pos
            pos += 1
        if cross_signing:
            xs = await e2e.local_cross_signing_for_federation(user_id)
            content = {"user_id": user_id}
            for name in ("master_key", "self_signing_key"):
                if name in xs:
                    content[name] = xs[name]
            await sender.queue_edus(servers, {"edu_type": "m.signing_key_update",
                                              "content": content})

    async def user_devices_stream_id(self, user_id: str) -> int:
        """For /user/devices: read BEFORE the devices, so a change committed in between is
        covered by a later EDU rather than hidden behind a too-new stream_id."""
        return await self._last_device_change(user_id)

    # --- inbound EDUs ----------------------------------------------------------------------

    async def on_device_list_update(self, origin: str, content: dict) -> None:
        user_id = content.get("user_id")
        device_id = content.get("device_id")
        stream_id = content.get("stream_id")
        prev_ids = content.get("prev_id") or []
        deleted = content.get("deleted", False)
        keys = content.get("keys")
        if not is_valid_user_id(user_id) or server_of(user_id) != origin \
                or origin == self.hs.server_name:
            return
        if not isinstance(device_id, str) or not device_id or len(device_id) > 255 \
                or "\x00" in device_id:
            return
        if type(stream_id) is not int or not 0 <= stream_id <= MAX_STREAM_ID:
            return
        if not isinstance(prev_ids, list) or len(prev_ids) > MAX_PREV_IDS \
                or not all(type(p) is int for p in prev_ids) or not isinstance(deleted, bool):
            return
        if not await store.local_users_sharing_room_with(user_id, self.hs.server_name):
            await store.delete_remote_device_list(user_id)  # no longer tracked
            return
        row = await store.get_remote_device_list(user_id)
        if row is None:
            self._uncached_edus.put(user_id, max(stream_id,
                                                 self._uncached_edus.get_item(user_id) or 0))
        else:
            cached = int(row["stream_id"])
            if stream_id <= cached:
                return  # already in the cached snapshot
            follows = cached in prev_ids or (not prev_ids and cached == 0)
            valid = deleted or keys is None or device_keys_valid(keys, user_id, device_id)
            if follows and valid:
                snapshot = orjson.loads(row["content"])
                devices = snapshot.setdefault("devices", {})
                if deleted:
                    devices.pop(device_id, None)
                elif keys is not None and len(devices) < MAX_REMOTE_DEVICES:
                    devices[device_id] = {"keys": keys}
                elif keys is None:
                    devices.pop(device_id, None)  # a device without keys is of no use here
                if not await store.update_remote_device_list(
                        user_id, cached, stream_id, orjson.dumps(snapshot).decode()):
                    await store.delete_remote_device_list(user_id)
            else:
                log.info("device list gap for %s (cached %d, prev_id %s): refetching on next "
                         "query", user_id, cached, prev_ids[:5])
                await store.delete_remote_device_list(user_id)
        await self._append(user_id, [device_id], None)

    async def on_signing_key_update(self, origin: str, content: dict) -> None:
        user_id = content.get("user_id")
        if not is_valid_user_id(user_id) or server_of(user_id) != origin \
                or origin == self.hs.server_name:
            return
        master = content.get("master_key")
        ssk = content.get("self_signing_key")
        if master is not None and not cross_signing_key_valid(master, user_id, "master"):
            return
        if ssk is not None and not cross_signing_key_valid(ssk, user_id, "self_signing"):
            return
        if not await store.local_users_sharing_room_with(user_id, self.hs.server_name):
            await store.delete_remote_device_list(user_id)
            return
        row = await store.get_remote_device_list(user_id)
        if row is not None:
            snapshot = orjson.loads(row["content"])
            if master is not None:
                snapshot["master_key"] = master
            if ssk is not None:
                snapshot["self_signing_key"] = ssk
            cached = int(row["stream_id"])
            if not await store.update_remote_device_list(user_id, cached, cached,
                                                         orjson.dumps(snapshot).decode()):
                await store.delete_remote_device_list(user_id)
        await self._append(user_id, [""], None)

    # --- remote device lists (for key queries) ---------------------------------------------

    async def _cache_usable(self, user_id: str, row: dict) -> bool:
        ours = self.hs.server_name
        if not await store.local_users_sharing_room_with(user_id, ours):
            await store.delete_remote_device_list(user_id)
            return False
        if await store.memberships_changed_since(user_id, ours, int(row["valid_from"])):
            return False
        return True

    async def remote_snapshots(self, server: str, user_ids: list[str],
                               timeout_s: float) -> tuple[dict[str, dict], dict | None]:
        """user_id -> {"devices": {device_id: {"keys": ..., "device_display_name"?}},
        "master_key"?, "self_signing_key"?} for users of `server`, from the cache where it is
        usable, else fetched. Returns (snapshots, failure or None)."""
        out: dict[str, dict] = {}
        tracked: list[str] = []
        untracked: list[str] = []
        for user_id in user_ids:
            row = await store.get_remote_device_list(user_id)
            if row is not None and await self._cache_usable(user_id, row):
                out[user_id] = orjson.loads(row["content"])
            elif await store.local_users_sharing_room_with(user_id, self.hs.server_name):
                tracked.append(user_id)
            else:
                untracked.append(user_id)
        failure: dict | None = None
        tasks = [self._fetch_user_devices(server, u, timeout_s) for u in tracked]
        if untracked:
            tasks.append(self._query_untracked(server, untracked, timeout_s))
        for res in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(res, BaseException):
                failure = _failure(res)
            elif isinstance(res, dict):
                out.update(res)
        return out, failure

    async def _fetch_user_devices(self, server: str, user_id: str,
                                  timeout_s: float) -> dict[str, dict]:
        """GET /user/devices and cache the result (one fetch at a time per user)."""
        pending = self._fetching.get(user_id)
        if pending is not None:
            return {user_id: await asyncio.shield(pending)}
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._fetching[user_id] = fut
        try:
            snapshot = await self._do_fetch(server, user_id, timeout_s)
            fut.set_result(snapshot)
            return {user_id: snapshot}
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._fetching.pop(user_id, None)

    async def _do_fetch(self, server: str, user_id: str, timeout_s: float) -> dict:
        valid_from = self.hs.ids.events.visible
        resp = await asyncio.wait_for(self.hs.federation_client.user_devices(server, user_id),
                                      timeout_s)
        if not isinstance(resp, dict) or resp.get("user_id") != user_id:
            raise ValueError("malformed /user/devices answer")
        stream_id = resp.get("stream_id")
        if type(stream_id) is not int or not 0 <= stream_id <= MAX_STREAM_ID:
            raise ValueError("malformed /user/devices stream_id")
        devices: dict[str, dict] = {}
        items = resp.get("devices")
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict) or len(devices) >= MAX_REMOTE_DEVICES:
                continue
            device_id = item.get("device_id")
            if not isinstance(device_id, str) or not device_id or len(device_id) > 255:
                continue
            if not device_keys_valid(item.get("keys"), user_id, device_id):
                continue
            entry: dict[str, Any] = {"keys": item["keys"]}
            name = item.get("device_display_name")
            if isinstance(name, str) and len(name) <= 512:
                entry["device_display_name"] = name
            devices[device_id] = entry
        snapshot: dict[str, Any] = {"devices": devices}
        for name, usage in (("master_key", "master"), ("self_signing_key", "self_signing")):
            if cross_signing_key_valid(resp.get(name), user_id, usage):
                snapshot[name] = resp[name]
        newer_edu = self._uncached_edus.get_item(user_id)
        if newer_edu is None or newer_edu <= stream_id:
            await store.set_remote_device_list(user_id, stream_id,
                                               orjson.dumps(snapshot).decode(), valid_from)
            self._uncached_edus.pop(user_id, None)
        return snapshot

    async def _query_untracked(self, server: str, user_ids: list[str],
                               timeout_s: float) -> dict[str, dict]:
        """Users nobody here shares a room with: ask, do not cache (no updates would come)."""
        resp = await asyncio.wait_for(self.hs.federation_client.user_keys_query(
            server, {"device_keys": {u: [] for u in user_ids}}), timeout_s)
        if not isinstance(resp, dict):
            raise ValueError("malformed /user/keys/query answer")
        dk = resp.get("device_keys") if isinstance(resp.get("device_keys"), dict) else {}
        out: dict[str, dict] = {}
        for user_id in user_ids:
            devices: dict[str, dict] = {}
            by_device = dk.get(user_id)
            for device_id, keys in (by_device.items() if isinstance(by_device, dict) else []):
                if len(devices) < MAX_REMOTE_DEVICES and isinstance(device_id, str) \
                        and device_keys_valid(keys, user_id, device_id):
                    keys = {k: v for k, v in keys.items() if k != "unsigned"}
                    devices[device_id] = {"keys": keys}
            snapshot: dict[str, Any] = {"devices": devices}
            for field, name, usage in (("master_keys", "master_key", "master"),
                                       ("self_signing_keys", "self_signing_key",
                                        "self_signing")):
                got = resp.get(field)
                key = got.get(user_id) if isinstance(got, dict) else None
                if cross_signing_key_valid(key, user_id, usage):
                    snapshot[name] = key
            out[user_id] = snapshot
        return out

    # --- what /sync and /keys/changes report -----------------------------------------------

    async def _rooms_with_member_events(self, mine: list[dict], after: int,
                                        upto: int) -> list[str]:
        """Rooms where a membership may have changed in (after, upto]: those where the user's
        own changed, and joined rooms whose in-memory tail shows a member event (or does not
        reach back that far). Saves a query on the common path."""
        from homeserver.storage import events as event_store

        rooms = [m["room_id"] for m in mine if after < m["stream_ordering"] <= upto]
        own = set(rooms)
        joined = [m["room_id"] for m in mine if m["membership"] == "join"
                  and m["room_id"] not in own]
        recent = self.hs.state.recent
        tails = await recent.tails(joined, event_store.latest_orderings)
        for room_id in joined:
            tail = tails.get(room_id)
            entries = recent.between(tail, after, upto) if tail is not None else None
            if entries is None or any(e.type == "m.room.member" for e in entries):
                rooms.append(room_id)
        return rooms

    async def changes_between(self, user_id: str, since: StreamToken,
                              upto: StreamToken) -> tuple[list[str], list[str]]:
        """(changed, left) for `user_id` between two tokens."""
        changed: set[str] = set()
        left_candidates: set[str] = set()
        own_change = False
        if upto.device_lists > since.device_lists:
            users = await store.users_with_device_changes(since.device_lists, upto.device_lists)
            own_change = user_id in users
            users.discard(user_id)
            if users:
                changed |= await state_store.users_sharing_rooms(user_id, users)
        if upto.events > since.events:
            mine = await self.hs.state.user_memberships(user_id)
            joined_now = {m["room_id"] for m in mine if m["membership"] == "join"}
            rows = await store.membership_changes(
                await self._rooms_with_member_events(mine, since.events, upto.events),
                since.events, upto.events)
            my_rows = {r["room_id"]: r["membership"] for r in rows if r["user_id"] == user_id}
            new_rooms = [r for r, m in my_rows.items() if m == "join"]
            gone_rooms = [r for r, m in my_rows.items() if m != "join"]
            for r in rows:
                if r["user_id"] == user_id or r["room_id"] in my_rows:
                    continue
                if r["room_id"] not in joined_now:
                    continue
                if r["membership"] == "join":
                    changed.add(r["user_id"])
                else:
                    left_candidates.add(r["user_id"])
            if new_rooms:
                changed |= {m["user_id"] for m in await store.joined_members(new_rooms)}
            if gone_rooms:
                left_candidates |= {m["user_id"] for m in await store.joined_members(gone_rooms)}
        changed.discard(user_id)
        if own_change:
            changed.add(user_id)
        left_candidates -= changed
        left_candidates.discard(user_id)
        left: set[str] = set()
        if left_candidates:
            left = left_candidates - await state_store.users_sharing_rooms(user_id,
                                                                           left_candidates)
        return sorted(changed), sorted(left)


def _failure(e: BaseException) -> dict:
    from homeserver.handlers.federation.transport import DestinationUnreachable, FederationError

    if isinstance(e, FederationError):
        return {"status": e.status, "errcode": e.errcode, "message": e.error[:200]}
    if isinstance(e, (DestinationUnreachable, asyncio.TimeoutError, TimeoutError)):
        return {"status": 503, "message": "not reachable"}
    log.warning("remote device query failed: %r", e)
    return {"status": 502, "message": "unusable answer"}


__all__ = ["DeviceListHandler", "cross_signing_key_valid", "device_keys_valid"]
