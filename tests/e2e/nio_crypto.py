"""matrix-nio clients with end-to-end encryption on (Olm/Megolm through vodozemac).

Everything goes over HTTP through nio; the server is never asked for plaintext. A `Crypto`
wraps one nio client and follows its /sync like a real client does: after each sync it uploads
one-time keys when nio wants to, queries device lists nio marked as changed, and collects the
room timeline, retrying decryption of Megolm events whose room key arrived later (over
federation a room key, sent as a to-device EDU, can land after the message).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import nio
from nio.event_builders import EnableEncryptionBuilder
from nio.store import SqliteMemoryStore

from tests.e2e.nio_helpers import ok, random_name

DEADLINE_S = 45.0


def e2e_config() -> nio.AsyncClientConfig:
    return nio.AsyncClientConfig(max_timeouts=0, max_limit_exceeded=0, request_timeout=40,
                                 store_sync_tokens=False, encryption_enabled=True,
                                 store=SqliteMemoryStore)


@dataclass
class Crypto:
    client: nio.AsyncClient
    # room_id -> events in timeline order (decrypted ones replaced in place)
    timeline: dict[str, list[Any]] = field(default_factory=dict)
    to_device: list[Any] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        return self.client.user_id

    @property
    def device_id(self) -> str:
        return self.client.device_id

    async def housekeeping(self) -> None:
        c = self.client
        if c.should_upload_keys:
            ok(await c.keys_upload(), nio.KeysUploadResponse)
        if c.should_query_keys:
            ok(await c.keys_query(), nio.KeysQueryResponse)

    async def sync(self, timeout_ms: int = 0) -> nio.SyncResponse:
        resp = ok(await self.client.sync(timeout=timeout_ms), nio.SyncResponse)
        self.to_device.extend(resp.to_device_events)
        for room_id, room in resp.rooms.join.items():
            self.timeline.setdefault(room_id, []).extend(room.timeline.events)
        self._retry_decryption()
        await self.housekeeping()
        return resp

    def _retry_decryption(self) -> None:
        for events in self.timeline.values():
            for i, ev in enumerate(events):
                if isinstance(ev, nio.MegolmEvent):
                    try:
                        events[i] = self.client.decrypt_event(ev)
                    except nio.EncryptionError:
                        pass

    def texts(self, room_id: str) -> list[str]:
        return [e.body for e in self.timeline.get(room_id, [])
                if isinstance(e, nio.RoomMessageText)]

    def undecrypted(self, room_id: str) -> list[nio.MegolmEvent]:
        return [e for e in self.timeline.get(room_id, []) if isinstance(e, nio.MegolmEvent)]

    async def wait_for(self, pred, what: str, deadline_s: float = DEADLINE_S) -> None:
        end = time.monotonic() + deadline_s
        while not pred(self):
            if time.monotonic() > end:
                raise AssertionError(f"{self.user_id}/{self.device_id} never saw {what}; "
                                     f"timeline: {self.timeline}")
            await self.sync(timeout_ms=1000)

    async def wait_for_text(self, room_id: str, text: str) -> None:
        await self.wait_for(lambda c: text in c.texts(room_id), f"{text!r} decrypted")

    async def send(self, room_id: str, text: str) -> str:
        c = self.client
        # nio shares the Megolm session (claiming one-time keys, sending to-device messages)
        # before it encrypts; refresh device lists first like a syncing client would.
        await self.housekeeping()
        resp = ok(await c.room_send(room_id, "m.room.message", {"msgtype": "m.text",
                                                                  "body": text},
                                    ignore_unverified_devices=True), nio.RoomSendResponse)
        return resp.event_id

    async def close(self) -> None:
        await self.client.close()


async def register(base_url: str, prefix: str = "e2e",
                   password: str = "correct horse battery 9") -> Crypto:
    client = nio.AsyncClient(base_url, config=e2e_config())
    ok(await client.register(random_name(prefix), password, device_name="nio e2e"),
       nio.RegisterResponse)
    client.test_password = password  # type: ignore[attr-defined]
    crypto = Crypto(client)
    assert client.olm is not None, "nio has no Olm machine: encryption support missing"
    await crypto.housekeeping()  # identity keys and one-time keys go up
    return crypto


async def login_new_device(base_url: str, user: Crypto, name: str = "second") -> Crypto:
    client = nio.AsyncClient(base_url, user.user_id, config=e2e_config())
    ok(await client.login(user.client.test_password, device_name=name),  # type: ignore
       nio.LoginResponse)
    client.test_password = user.client.test_password  # type: ignore[attr-defined]
    crypto = Crypto(client)
    await crypto.housekeeping()
    return crypto


async def encrypted_room(owner: Crypto, *others: Crypto) -> str:
    resp = ok(await owner.client.room_create(
        invite=[o.user_id for o in others], initial_state=[EnableEncryptionBuilder().as_dict()]),
        nio.RoomCreateResponse)
    for o in others:
        ok(await o.client.join(resp.room_id), nio.JoinResponse)
    return resp.room_id


async def settle(*clients: Crypto, rounds: int = 2) -> None:
    for _ in range(rounds):
        await asyncio.gather(*(c.sync() for c in clients))
