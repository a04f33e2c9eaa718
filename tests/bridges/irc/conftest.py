"""The IRC bridge end to end: ngircd, a homeserver, `nexa-bridge irc` as a real process, matrix-nio
on the Nexa side and raw-socket IRC clients on the other, all on loopback.

`irc_env` gives an IrcEnv: `await env.start_bridge()` / `stop_bridge()`, `await env.irc(nick)`
(a joined IrcTestClient), `await env.matrix(name)` (a nio user in the portal room), `env.gate`
(a TCP gate between the bridge and ngircd: close it to cut the bridge off IRC alone).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable

import nio
import pytest
import yaml

from tests.bridges.conftest import FAST_RETRIES
from tests.bridges.ircd import IrcTestClient, NgIRCd, ngircd_available
from tests.bridges.support import adapter_registration, poll, stop_process
from tests.servers import REQUIRE_SERVICES, free_port, start_server

ROOT = Path(__file__).resolve().parents[3]
CHANNEL = "#nexa-test"


class TcpGate:
    """A loopback TCP relay that can be shut (existing connections cut, new ones refused)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.is_open = True
        self._conns: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_open:
            writer.close()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, uw))
        try:
            await asyncio.gather(self._pipe(reader, uw), self._pipe(ur, writer))
        finally:
            self._conns.difference_update((writer, uw))

    def close(self) -> None:
        self.is_open = False
        for w in list(self._conns):
            w.close()

    def open(self) -> None:
        self.is_open = True

    async def stop(self) -> None:
        self.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class IrcEnv:
    def __init__(self, tmp_path: Path, backend: str) -> None:
        self.tmp = tmp_path
        self.backend = backend
        self.ircd = NgIRCd(tmp_path)
        self.gate: TcpGate | None = None
        self.srv: Any = None
        self.proc: asyncio.subprocess.Process | None = None
        self.port = free_port()
        self.registration: dict[str, Any] = {}
        self.irc_clients: list[IrcTestClient] = []
        self.nio_clients: list[nio.AsyncClient] = []
        self.log_path = tmp_path / "bridge.log"
        self.room_id = ""

    async def setup(self, **irc_overrides: Any) -> None:
        await self.ircd.start()
        self.gate = TcpGate(self.ircd.port)
        await self.gate.start()
        reg_path = self.tmp / "irc-registration.yaml"
        self.registration = adapter_registration(reg_path, "irc", self.port, "ircbot")
        self.srv = await start_server(self.tmp, self.backend, appservices=[str(reg_path)],
                                      # Creating a portal on an alias query takes a
                                      # createRoom: more than FAST_RETRIES' 2 s under load.
                                      appservice_sender={**FAST_RETRIES,
                                                         "query_timeout_s": 30})
        irc = {
            "server": {"host": "127.0.0.1", "port": self.gate.port},
            "network": "testnet", "network_name": "Test network", "bot_nick": "NexaBridge",
            "channels": [{"channel": CHANNEL}],
            "rate": {"lines_per_second": 50, "burst": 50},
            "reconnect": {"base_ms": 100, "max_ms": 800},
            "retry_base_ms": 100, "retry_max_ms": 800, "ping_interval_s": 30,
            **irc_overrides,
        }
        self.config_path = self.tmp / "irc.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "homeserver": {"url": self.srv.base_url, "server_name": self.srv.server_name},
            "registration": reg_path.name, "listen": {"host": "127.0.0.1", "port": self.port},
            "database": "irc-bridge.db", "logging": {"level": "DEBUG"}, "irc": irc}))

    async def start(self, **irc_overrides: Any) -> None:
        await self.setup(**irc_overrides)
        await self.start_bridge()

    async def start_with_alice_and_bob(self, **irc_overrides: Any
                                       ) -> tuple[IrcTestClient, "MatrixUser"]:
        """The bridge started; alice on IRC and bob (display name Bob) in the portal room,
        his puppet (Bob[m]) seen joining the channel by alice."""
        await self.start(**irc_overrides)
        alice = await self.irc("alice")
        bob = await self.matrix("bob", displayname="Bob")
        await alice.wait_for(lambda m: m.command == "JOIN" and m.nick == "Bob[m]")
        return alice, bob

    @property
    def server_name(self) -> str:
        return self.srv.server_name

    @property
    def alias(self) -> str:
        return f"#irc_{CHANNEL[1:]}:{self.server_name}"

    def puppet_id(self, localpart_nick: str) -> str:
        return f"@irc_{localpart_nick}:{self.server_name}"

    async def start_bridge(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = open(self.log_path, "ab")
        start = self.log_path.stat().st_size
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridges", "irc", "-c", str(self.config_path),
            cwd=self.tmp, env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL)
        log.close()
        await poll(lambda: b"listening on" in self.log_path.read_bytes()[start:] or
                   self.proc.returncode is not None, 30, "the bridge to start")
        assert self.proc.returncode is None, self.bridge_log()
        # The bridge's own IRC connection is in the channel once it created the portal.
        await poll(lambda: self._portal_room() is not None, 30, "the portal room")
        self.room_id = self._portal_room() or ""

    def _portal_room(self) -> str | None:
        db = self.tmp / "irc-bridge.db"
        if not db.exists():
            return None
        rows = self.db("SELECT matrix_id FROM id_mappings WHERE kind = 'channel' AND "
                       "remote_id = ?", [CHANNEL])
        return rows[0][0] if rows else None

    def db(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        """Read the bridge's database (from outside, as an operator would)."""
        conn = sqlite3.connect(f"file:{self.tmp / 'irc-bridge.db'}?mode=ro", uri=True,
                               timeout=5)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    async def stop_bridge(self) -> None:
        proc, self.proc = self.proc, None
        rc = await stop_process(proc, 20) or 0
        assert rc == 0, f"bridge exited with {rc}\n{self.bridge_log()}"

    def bridge_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    async def as_bot(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A client-server request as the bridge bot (the registration's as_token), for set-up
        only: e.g. making a test user a room moderator of a portal."""
        import aiohttp

        async with aiohttp.ClientSession() as s:
            async with s.request(method, f"{self.srv.base_url}/_matrix/client/v3{path}",
                                 json=body, headers={"Authorization":
                                                     f"Bearer {self.registration['as_token']}"}
                                 ) as r:
                return r.status, await r.json(content_type=None)

    async def promote(self, user_id: str, level: int = 50) -> None:
        from urllib.parse import quote

        path = f"/rooms/{quote(self.room_id)}/state/m.room.power_levels/"
        status, pl = await self.as_bot("GET", path)
        assert status == 200, pl
        pl.setdefault("users", {})[user_id] = level
        status, res = await self.as_bot("PUT", path, pl)
        assert status == 200, res

    async def irc(self, nick: str, join: bool = True) -> IrcTestClient:
        c = await IrcTestClient.connect(self.ircd.port, nick)
        self.irc_clients.append(c)
        if join:
            await c.join(CHANNEL)
        return c

    async def matrix(self, name: str, displayname: str | None = None,
                     join: bool = True) -> "MatrixUser":
        client = nio.AsyncClient(self.srv.base_url, config=nio.AsyncClientConfig(
            max_timeouts=0, max_limit_exceeded=0, request_timeout=40,
            store_sync_tokens=False, encryption_enabled=False))
        self.nio_clients.append(client)
        resp = await client.register(f"{name}{secrets.token_hex(3)}", "Correct horse battery 42")
        assert isinstance(resp, nio.RegisterResponse), resp
        if displayname:
            assert isinstance(await client.set_displayname(displayname),
                              nio.ProfileSetDisplayNameResponse)
        user = MatrixUser(client)
        if join:
            resp = await client.join(self.alias)
            assert isinstance(resp, nio.JoinResponse), resp
            assert resp.room_id == self.room_id
        return user

    async def close(self) -> None:
        for c in self.irc_clients:
            await c.close()
        for n in self.nio_clients:
            await n.close()
        try:
            await self.stop_bridge()
        finally:
            if self.gate is not None:
                await self.gate.stop()
            await self.ircd.stop()
            if self.srv is not None:
                await self.srv.destroy()


class MatrixUser:
    """A nio client that keeps every timeline/state event it synced, as raw dicts."""

    def __init__(self, client: nio.AsyncClient) -> None:
        self.client = client
        self.events: list[dict] = []
        self._seen = 0

    @property
    def user_id(self) -> str:
        return self.client.user_id

    async def _sync(self) -> None:
        resp = await self.client.sync(timeout=1000)
        assert isinstance(resp, nio.SyncResponse), resp
        for room_id, room in resp.rooms.join.items():
            for ev in room.timeline.events:
                src = dict(ev.source)
                src.setdefault("room_id", room_id)
                self.events.append(src)

    async def wait_for(self, pred: Callable[[dict], bool], timeout: float = 30,
                       what: str = "event", anywhere: bool = False) -> dict:
        """The first not yet consumed synced event matching pred (with anywhere: any synced
        event, consuming nothing — for events whose order against others is not defined)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for i in range(0 if anywhere else self._seen, len(self.events)):
                if pred(self.events[i]):
                    if not anywhere:
                        self._seen = i + 1
                    return self.events[i]
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no {what}; last events: "
                                     f"{[_short(e) for e in self.events[-12:]]}")
            await self._sync()

    async def send(self, room_id: str, content: dict, event_type: str = "m.room.message") -> str:
        resp = await self.client.room_send(room_id, event_type, content)
        assert isinstance(resp, nio.RoomSendResponse), resp
        return resp.event_id

    async def text(self, room_id: str, body: str, **extra: Any) -> str:
        return await self.send(room_id, {"msgtype": "m.text", "body": body, **extra})

    def messages(self, sender: str | None = None) -> list[dict]:
        return [e for e in self.events if e.get("type") == "m.room.message" and
                (sender is None or e.get("sender") == sender)]


def _short(e: dict) -> str:
    c = e.get("content") or {}
    return f"{e.get('type')} {e.get('sender')} {c.get('body') or c.get('membership') or ''}"


def is_msg(body: str | None = None, sender: str | None = None) -> Callable[[dict], bool]:
    def pred(e: dict) -> bool:
        return e.get("type") == "m.room.message" and (sender is None or e["sender"] == sender) \
            and (body is None or e["content"].get("body") == body)
    return pred


def privmsg(text: str | None = None, nick: str | None = None, command: str = "PRIVMSG"):
    def pred(m) -> bool:
        return m.command == command and (nick is None or m.nick.lower() == nick.lower()) and \
            (text is None or m.text == text)
    return pred


@pytest.fixture
async def irc_env(backend, tmp_path):
    """An IrcEnv (set up, bridge not yet started); everything is stopped afterwards."""
    if not ngircd_available():
        if REQUIRE_SERVICES:
            pytest.fail("ngircd is not installed")
        pytest.skip("ngircd is not installed")
    env = IrcEnv(tmp_path, backend)
    try:
        yield env
    finally:
        await env.close()
