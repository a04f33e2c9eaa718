"""Fixtures for application-service and bridge tests: a homeserver started with registration
files, scriptable application services and real bridge processes, all over loopback."""

from __future__ import annotations

import secrets

import pytest

from tests.bridges.fake_as import FakeAppService, write_registration
from tests.servers import start_server

FAST_RETRIES = {"retry_base_ms": 50, "retry_max_ms": 400, "request_timeout_s": 5,
                "query_timeout_s": 2}


@pytest.fixture
async def fake_as():
    fake = FakeAppService("hs_" + secrets.token_hex(12))
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def hs_with(backend, tmp_path):
    """hs_with(registrations...) -> a running homeserver; each registration is a dict written
    to a file (see write_registration). Stopped at the end of the test."""
    started = []

    async def make(*regs: dict, **config):
        paths, written = [], []
        for reg in regs:
            p = tmp_path / f"registration-{len(list(tmp_path.glob('registration-*')))}.yaml"
            written.append(write_registration(p, **reg))
            paths.append(str(p))
        cfg = {"appservice_sender": FAST_RETRIES, **config}
        srv = await start_server(tmp_path, backend, appservices=paths, **cfg)
        srv.registrations = written
        started.append(srv)
        return srv

    yield make
    for srv in started:
        await srv.destroy()



class Stack:
    """A homeserver and one bridge (or bot) registered with it."""

    def __init__(self, srv, bridge, registration: dict, config, factory, port: int) -> None:
        self.srv = srv
        self.bridge = bridge
        self.registration = registration
        self.config = config
        self.factory = factory
        self.port = port

    async def restart_bridge(self):
        await self.bridge.stop()
        self.bridge = self.factory(self.config)
        await self.bridge.start()
        return self.bridge


@pytest.fixture
async def bridge_stack(backend, tmp_path):
    """bridge_stack(factory, users=[...], section={...}) -> Stack: a homeserver whose
    registration points at a bridge built by factory(config), started in this process on a
    free loopback port. Everything stops at the end of the test."""
    from bridges.appservice.config import load_bridge_config
    from tests.servers import free_port

    stacks: list[Stack] = []

    async def make(factory, *, id: str = "bridge", sender: str = "bridgebot",
                   users=(("@webhook_.*", True),), section: dict | None = None,
                   hs_config: dict | None = None, start: bool = True) -> Stack:
        port = free_port()
        reg_path = tmp_path / f"{id}-registration.yaml"
        reg = write_registration(reg_path, id=id, url=f"http://127.0.0.1:{port}", sender=sender,
                                 users=list(users))
        srv = await start_server(tmp_path, backend, appservices=[str(reg_path)],
                                 appservice_sender=FAST_RETRIES, **(hs_config or {}))
        config = load_bridge_config(data={
            "homeserver": {"url": srv.base_url}, "registration": str(reg_path),
            "listen": {"host": "127.0.0.1", "port": port},
            "database": str(tmp_path / f"{id}.db"), **(section or {})})
        bridge = factory(config)
        stack = Stack(srv, bridge, reg, config, factory, port)
        stacks.append(stack)
        if start:
            await bridge.start()
        return stack

    yield make
    for st in stacks:
        try:
            await st.bridge.stop()
        except Exception:
            pass
        await st.srv.destroy()


async def wait_for_message(user, room_id: str, pred, timeout: float = 10.0) -> dict:
    """The newest m.room.message in the room matching pred(event), polling /messages."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await user.get(f"/rooms/{room_id}/messages", params={"dir": "b", "limit": "50"})
        assert r.status == 200, r
        for ev in r.json["chunk"]:
            if ev["type"] == "m.room.message" and pred(ev):
                return ev
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no matching message in {room_id}: "
                                 f"{[e.get('content', {}).get('body') for e in r.json['chunk']]}")
        await asyncio.sleep(0.1)


async def messages(user, room_id: str) -> list[dict]:
    r = await user.get(f"/rooms/{room_id}/messages", params={"dir": "f", "limit": "100"})
    assert r.status == 200, r
    return [e for e in r.json["chunk"] if e["type"] == "m.room.message"]
