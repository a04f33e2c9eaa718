"""The XMPP bridge end to end: Prosody, a homeserver, `nexa-bridge xmpp` as a real process,
matrix-nio on the Nexa side and slixmpp clients on the XMPP side, all on loopback.

`xmpp_env` gives an XmppEnv: `await env.start_bridge()` / `stop_bridge()`, `env.prosody`
(start/stop it), `await env.xmpp("bob", nick)` (a connected client, in the MUC when nick is
given), `await env.matrix("alice")` (a nio user in the bridged room).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import nio
import pytest
import yaml

from tests.bridges.conftest import FAST_RETRIES
from tests.bridges.support import adapter_registration, poll, stop_process
from tests.bridges.xmpp.clients import MatrixTestUser, XmppTestClient
from tests.bridges.xmpp.prosody import (COMPONENT_DOMAIN, DOMAIN, MUC_DOMAIN, Prosody,
                                        prosody_available)
from tests.servers import REQUIRE_SERVICES, free_port, start_server

ROOT = Path(__file__).resolve().parents[3]
MUC = f"room@{MUC_DOMAIN}"
XMPP_USERS = ("bob", "carol", "dave")


class XmppEnv:
    def __init__(self, tmp_path: Path, backend: str) -> None:
        self.tmp = tmp_path
        self.backend = backend
        self.prosody = Prosody()
        self.srv: Any = None
        self.proc: asyncio.subprocess.Process | None = None
        self.port = free_port()
        self.registration: dict[str, Any] = {}
        self.log_path = tmp_path / "bridge.log"
        self.xmpp_clients: list[XmppTestClient] = []
        self.matrix_users: list[MatrixTestUser] = []
        self.room_id = ""
        self.room_alias = ""
        self._log_start = 0

    async def setup(self, **xmpp_overrides: Any) -> None:
        for user in XMPP_USERS:
            self.prosody.register(user, f"pw-{user}")
        await self.prosody.start()
        reg_path = self.tmp / "xmpp-registration.yaml"
        self.registration = adapter_registration(reg_path, "xmpp", self.port, "xmppbot")
        self.srv = await start_server(self.tmp, self.backend, appservices=[str(reg_path)],
                                      appservice_sender=FAST_RETRIES)
        # The Matrix side of the bridged MUC: a public room with an alias, made by a user.
        owner = await self.new_matrix_user("owner")
        resp = await owner.c.room_create(alias="bridged", name="Bridged",
                                         visibility=nio.RoomVisibility.public)
        assert isinstance(resp, nio.RoomCreateResponse), resp
        self.room_id = resp.room_id
        self.room_alias = f"#bridged:{self.server_name}"
        xmpp = {
            "component": {"jid": COMPONENT_DOMAIN, "secret": self.prosody.component_secret,
                          "host": "127.0.0.1", "port": self.prosody.component_port,
                          "server_domain": DOMAIN},
            "rooms": [{"muc": MUC, "room": self.room_alias}],
            "portal_domains": [MUC_DOMAIN],
            "reconnect": {"base_ms": 100, "max_ms": 1000},
            "retry_base_ms": 100, "retry_max_ms": 1000, "response_timeout_s": 5,
            "ping_interval_s": 30,
            **xmpp_overrides,
        }
        self.config_path = self.tmp / "xmpp.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "homeserver": {"url": self.srv.base_url, "server_name": self.server_name},
            "registration": reg_path.name, "listen": {"host": "127.0.0.1", "port": self.port},
            "database": "xmpp-bridge.db", "logging": {"level": "DEBUG"}, "xmpp": xmpp}))

    @property
    def server_name(self) -> str:
        return self.srv.server_name

    @property
    def hs_token(self) -> str:
        return self.registration["hs_token"]

    def puppet(self, jid: str) -> str:
        from bridges.xmpp.ids import matrix_escape

        return f"@xmpp_{matrix_escape(jid)}:{self.server_name}"

    def jid_of(self, user: MatrixTestUser) -> str:
        return f"{user.user_id[1:].split(':', 1)[0]}@{COMPONENT_DOMAIN}"

    def bridge_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[self._log_start:]
        except OSError:
            return ""

    async def start_bridge(self, wait_joined: bool = True) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridges", "xmpp", "-c", str(self.config_path),
            cwd=self.tmp, env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL)
        log.close()
        await poll(lambda: "listening on" in self.bridge_log() or
                   self.proc.returncode is not None, 30, "the bridge to start")
        assert self.proc.returncode is None, self.bridge_log()[-3000:]
        if wait_joined:
            await self.wait_log(f"joined {MUC} as", what="the bridge to join the MUC")

    async def wait_log(self, text: str, timeout: float = 30, what: str = "") -> None:
        try:
            await poll(lambda: text in self.bridge_log() or (self.proc is not None and
                                                             self.proc.returncode is not None),
                       timeout, what or text)
        except AssertionError:
            raise AssertionError(f"{what or text}; bridge log:\n{self.bridge_log()[-4000:]}")
        assert text in self.bridge_log(), self.bridge_log()[-4000:]

    async def stop_bridge(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        await stop_process(proc, 20, sig)

    async def alice_and_bob(self, alice_name: str = "Alice"
                            ) -> tuple[MatrixTestUser, XmppTestClient, str]:
        """alice in the bridged room, bob (nick Bob) on XMPP, and bob's puppet's user ID."""
        alice = await self.matrix("alice", alice_name)
        bob = await self.xmpp("bob", "Bob")
        return alice, bob, self.puppet("bob@localhost")

    async def xmpp(self, user: str, nick: str | None = None, maxstanzas: int = 0
                   ) -> XmppTestClient:
        c = XmppTestClient(f"{user}@{DOMAIN}/test", f"pw-{user}", self.prosody.c2s_port)
        await c.connect()
        self.xmpp_clients.append(c)
        if nick is not None:
            await c.join(MUC, nick, maxstanzas=maxstanzas)
        return c

    async def new_matrix_user(self, name: str) -> MatrixTestUser:
        client = nio.AsyncClient(self.srv.base_url, config=nio.AsyncClientConfig(
            max_timeouts=0, max_limit_exceeded=0, request_timeout=30, store_sync_tokens=False,
            encryption_enabled=False))
        username = f"{name}{secrets.token_hex(3)}"
        resp = await client.register(username, f"pw-{username}-1", device_name="test")
        assert isinstance(resp, nio.RegisterResponse), resp
        user = MatrixTestUser(client)
        self.matrix_users.append(user)
        await user.sync(0)
        return user

    async def matrix(self, name: str, displayname: str | None = None) -> MatrixTestUser:
        """A Nexa user in the bridged room (joined after its display name is set)."""
        user = await self.new_matrix_user(name)
        if displayname:
            await user.c.set_displayname(displayname)
        resp = await user.c.join(self.room_alias)
        assert isinstance(resp, nio.JoinResponse), resp
        await user.sync(0)
        return user

    async def teardown(self) -> None:
        for c in self.xmpp_clients:
            await c.disconnect()
        for u in self.matrix_users:
            await u.c.close()
        await self.stop_bridge()
        await self.prosody.stop()
        try:  # kept with the test's files, for a look after a failure
            (self.tmp / "prosody.log").write_bytes(self.prosody.log_path.read_bytes())
        except OSError:
            pass
        self.prosody.cleanup()
        if self.srv is not None:
            await self.srv.destroy()


@pytest.fixture
async def xmpp_env(backend, tmp_path):
    reason = prosody_available()
    if reason:
        if REQUIRE_SERVICES:
            pytest.fail(reason)
        pytest.skip(reason)
    env = XmppEnv(tmp_path, backend)
    try:
        await env.setup()
        yield env
    finally:
        await env.teardown()
