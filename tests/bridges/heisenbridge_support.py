"""Heisenbridge (the third-party IRC bridge from PyPI) as a real subprocess next to a Nexa
server, and a matrix-nio user who drives it the way a person would.

Nothing here imports heisenbridge: it runs as `python -m heisenbridge`, its registration comes
from its own `--generate`, and every interaction with it goes over Matrix (nio) or IRC
(tests.bridges.ircd.IrcTestClient).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import aiohttp
import nio
import yaml

from tests.bridges.support import stop_process
from tests.servers import free_port

T = TypeVar("T")

DEADLINE_S = 20.0  # upper bound for any one awaited condition; most take well under a second
PASSWORD = "correct horse battery staple 42!"


async def until(probe: Callable[[], Awaitable[T]], what: str, timeout: float = DEADLINE_S,
                interval: float = 0.1) -> T:
    """Poll probe() until it returns something truthy; fail naming `what` after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)


class Heisenbridge:
    """One heisenbridge process. `generate()` writes its registration (before the homeserver
    starts, which loads it); `start(hs_url)` runs the bridge against that homeserver."""

    def __init__(self, workdir: Path, verbose: int = 1) -> None:
        self.verbose = verbose  # 2 logs every homeserver request and its status
        self.dir = workdir / f"heisenbridge-{secrets.token_hex(3)}"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.registration_path = self.dir / "heisenbridge.yaml"
        self.log_path = self.dir / "heisenbridge.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.registration: dict = {}
        self._log = None
        self._run_offset = 0  # where the current run's output starts in the log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def generate(self) -> dict:
        """The registration exactly as `heisenbridge --generate` writes it, plus the bridge's
        own `heisenbridge.media_url` extension (so IRC users get fetchable media links)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "heisenbridge", "-c", str(self.registration_path),
            "--generate", "-l", "127.0.0.1", "-p", str(self.port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        reg = yaml.safe_load(self.registration_path.read_text())
        reg["heisenbridge"] = {"media_url": self.url}
        self.registration_path.write_text(yaml.safe_dump(reg))
        self.registration = reg
        return reg

    async def start(self, hs_url: str) -> None:
        self._log = open(self.log_path, "ab")
        self._run_offset = self._log.tell()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "heisenbridge", "-" + "v" * self.verbose,
            "-c", str(self.registration_path), "-l", "127.0.0.1", "-p", str(self.port), hs_url,
            stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        # It prints this once every stored room is loaded and its HTTP listener is up.
        await until(self._running, "heisenbridge to start")

    async def _running(self) -> bool:
        if self.proc is not None and self.proc.returncode is not None:
            raise AssertionError(f"heisenbridge exited with {self.proc.returncode}:\n{self.log()}")
        return b"bridge is now running!" in self.log_path.read_bytes()[self._run_offset:]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        await stop_process(proc, 10)
        if self._log is not None:
            self._log.close()
            self._log = None


class MatrixUser:
    """A matrix-nio client with the waits these scenarios need."""

    def __init__(self, base_url: str) -> None:
        self.client = nio.AsyncClient(base_url, config=nio.AsyncClientConfig(
            max_timeouts=0, max_limit_exceeded=0, request_timeout=30,
            store_sync_tokens=False, encryption_enabled=False))
        self.invites: set[str] = set()
        self.receipts: dict[str, set[tuple[str, str]]] = {}  # room -> {(event_id, user_id)}

    @property
    def user_id(self) -> str:
        return self.client.user_id

    @property
    def token(self) -> str:
        return self.client.access_token

    async def register(self, name: str) -> "MatrixUser":
        resp = await self.client.register(name, PASSWORD, device_name="heisenbridge test")
        assert isinstance(resp, nio.RegisterResponse), resp
        await self._sync(0)
        return self

    async def close(self) -> None:
        await self.client.close()

    async def _sync(self, timeout_ms: int) -> nio.SyncResponse:
        resp = await self.client.sync(timeout=timeout_ms)
        assert isinstance(resp, nio.SyncResponse), resp
        self.invites.update(resp.rooms.invite.keys())
        self.invites.difference_update(resp.rooms.join.keys())
        for room_id, room in resp.rooms.join.items():
            for ev in room.ephemeral:
                if isinstance(ev, nio.ReceiptEvent):
                    self.receipts.setdefault(room_id, set()).update(
                        (r.event_id, r.user_id) for r in ev.receipts)
        return resp

    async def wait_receipt(self, room_id: str, event_id: str, user_id: str) -> None:
        """Until /sync has shown user_id's read receipt for event_id."""
        async def probe():
            await self._sync(500)
            return (event_id, user_id) in self.receipts.get(room_id, set())
        await until(probe, f"{user_id}'s receipt for {event_id}", interval=0)

    async def wait_invite(self, pred: Callable[[str], Any] = lambda room_id: True,
                          what: str = "an invite") -> str:
        """The ID of a room this user is invited to (and not yet joined) matching pred."""
        async def probe():
            await self._sync(500)
            return next((r for r in sorted(self.invites) if pred(r)), None)
        return await until(probe, what, interval=0)

    async def join(self, room_id: str) -> None:
        resp = await self.client.join(room_id)
        assert isinstance(resp, nio.JoinResponse), resp
        self.invites.discard(room_id)

    async def create_dm(self, invitee: str) -> str:
        resp = await self.client.room_create(is_direct=True, invite=[invitee])
        assert isinstance(resp, nio.RoomCreateResponse), resp
        return resp.room_id

    async def say(self, room_id: str, body: str, **extra: Any) -> str:
        resp = await self.client.room_send(room_id, "m.room.message",
                                           {"msgtype": "m.text", "body": body, **extra})
        assert isinstance(resp, nio.RoomSendResponse), resp
        return resp.event_id

    async def send(self, room_id: str, content: dict) -> str:
        resp = await self.client.room_send(room_id, "m.room.message", content)
        assert isinstance(resp, nio.RoomSendResponse), resp
        return resp.event_id

    async def events(self, room_id: str, limit: int = 100) -> list[dict]:
        """The room's newest events, oldest first, as the raw JSON the server sent."""
        resp = await self.client.room_messages(room_id, start="", limit=limit,
                                               direction=nio.MessageDirection.back)
        assert isinstance(resp, nio.RoomMessagesResponse), resp
        return [e.source for e in reversed(resp.chunk)]

    async def wait_event(self, room_id: str, pred: Callable[[dict], Any],
                         what: str = "an event") -> dict:
        async def probe():
            return next((e for e in reversed(await self.events(room_id)) if pred(e)), None)
        return await until(probe, f"{what} in {room_id}")

    async def wait_text(self, room_id: str, needle: str, sender: str | None = None) -> dict:
        return await self.wait_event(
            room_id, lambda e: e["type"] == "m.room.message"
            and needle in e["content"].get("body", "")
            and (sender is None or e["sender"] == sender), repr(needle))

    async def members(self, room_id: str) -> set[str]:
        resp = await self.client.joined_members(room_id)
        assert isinstance(resp, nio.JoinedMembersResponse), resp
        return {m.user_id for m in resp.members}

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{self.client.homeserver}/_matrix/media/v3/upload",
                              params={"filename": filename}, data=data,
                              headers={"Authorization": f"Bearer {self.token}",
                                       "Content-Type": content_type}) as r:
                body = await r.json()
                assert r.status == 200, body
                return body["content_uri"]
