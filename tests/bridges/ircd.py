"""A real IRC server for tests: Debian's ngircd on a free loopback port, plus a tiny raw IRC client.

Usage (inside an async test or fixture)::

    from tests.bridges.ircd import NgIRCd, IrcTestClient

    async with NgIRCd(tmp_path) as ircd:          # started and answering on ircd.port
        alice = await IrcTestClient.connect(ircd.port, "alice")
        await alice.join("#room")
        await alice.privmsg("#room", "hello")
        line = await alice.wait_for(lambda m: m.command == "PRIVMSG")
        await ircd.restart()                       # same port, e.g. to test reconnects
        await alice.close()

    # or as a pytest fixture:   ircd = pytest.fixture(ngircd_fixture)

`NgIRCd(tmp_dir, name="irc.test.local", port=None, **limits)`: writes its own ngircd.conf in
`tmp_dir/ngircd-<port>/` (loopback only, MaxConnectionsIP = 0 so many clients may come from
127.0.0.1, MaxNickLength 30, no PAM/ident/DNS, penalties off, a MOTD phrase instead of a file)
and runs `/usr/sbin/ngircd -n` (foreground). `start()` waits until a client can register (001);
`stop()` terminates it (SIGTERM, then SIGKILL); `restart()` stops and starts on the same port;
`host`, `port`, `name`, `address` ("127.0.0.1:port") and `log` (its output so far) are attributes.
As root ngircd drops to "nobody" by itself, so nothing extra is needed in CI.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.bridges.support import stop_process

NGIRCD = os.environ.get("NEXA_TEST_NGIRCD", "/usr/sbin/ngircd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ngircd_available() -> bool:
    return os.access(NGIRCD, os.X_OK) or shutil.which("ngircd") is not None


class NgIRCd:
    def __init__(self, tmp_dir: str | Path, *, name: str = "irc.test.local",
                 port: int | None = None, max_nick_length: int = 30,
                 ping_timeout: int = 120) -> None:
        self.host = "127.0.0.1"
        self.port = port or _free_port()
        self.name = name
        self.max_nick_length = max_nick_length
        self.ping_timeout = ping_timeout
        self.dir = Path(tmp_dir) / f"ngircd-{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def config_text(self) -> str:
        return f"""[Global]
\tName = {self.name}
\tInfo = Nexa test IRC server
\tListen = {self.host}
\tPorts = {self.port}
\tMotdPhrase = "Nexa test IRC server"
\tAdminInfo1 = test
\tAdminInfo2 = test
\tAdminEMail = test@localhost
[Limits]
\tMaxConnections = 0
\tMaxConnectionsIP = 0
\tMaxJoins = 0
\tMaxNickLength = {self.max_nick_length}
\tMaxPenaltyTime = 0
\tIdleTimeout = 0
\tPingTimeout = {self.ping_timeout}
\tPongTimeout = 20
[Options]
\tDNS = no
\tIdent = no
\tPAM = no
\tConnectIPv6 = no
"""

    async def start(self, timeout: float = 15.0) -> None:
        exe = NGIRCD if os.access(NGIRCD, os.X_OK) else shutil.which("ngircd")
        if not exe:
            raise RuntimeError(f"ngircd not found at {NGIRCD} (Debian package ngircd)")
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "ngircd.conf"
        conf.write_text(self.config_text())
        # ngircd drops root privileges to "nobody", who must still be able to read it (rehash).
        os.chmod(self.dir, 0o755)
        os.chmod(conf, 0o644)
        self.proc = await asyncio.create_subprocess_exec(
            exe, "-n", "-f", str(conf), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=self.dir)
        self._reader = asyncio.create_task(self._collect(self.proc))
        await self._wait_ready(timeout)

    async def _collect(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self.log.append(line.decode(errors="replace").rstrip())

    async def _wait_ready(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise RuntimeError("ngircd exited during start-up:\n" + "\n".join(self.log))
            try:
                c = await IrcTestClient.connect(self.port, "probe" + os.urandom(3).hex(),
                                                timeout=2)
                await c.close()
                return
            except (OSError, asyncio.TimeoutError, ConnectionError):
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("ngircd did not answer:\n" + "\n".join(self.log))
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        await stop_process(proc, 10)
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (asyncio.TimeoutError, Exception):
                self._reader.cancel()
            self._reader = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> "NgIRCd":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def ngircd_fixture(tmp_path):
    """Body for a pytest fixture: `ircd = pytest.fixture(ngircd_fixture)` in a conftest."""
    server = NgIRCd(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --- a minimal raw IRC client --------------------------------------------------------------------


@dataclass
class Message:
    """One parsed line: `:prefix COMMAND params... :trailing` (tags are dropped)."""

    raw: str
    prefix: str = ""
    command: str = ""
    params: list[str] = field(default_factory=list)

    @property
    def nick(self) -> str:
        return self.prefix.split("!", 1)[0]

    @property
    def text(self) -> str:
        return self.params[-1] if self.params else ""

    @classmethod
    def parse(cls, line: str) -> "Message":
        rest = line
        if rest.startswith("@"):
            rest = rest.split(" ", 1)[1] if " " in rest else ""
        prefix = ""
        if rest.startswith(":"):
            prefix, _, rest = rest[1:].partition(" ")
        trailing = None
        if " :" in rest:
            rest, trailing = rest.split(" :", 1)
        elif rest.startswith(":"):
            rest, trailing = "", rest[1:]
        parts = rest.split()
        command = parts[0].upper() if parts else ""
        params = parts[1:] + ([trailing] if trailing is not None else [])
        return cls(line, prefix, command, params)


class IrcTestClient:
    """A raw-socket IRC client for tests: answers PING, keeps every line it received in
    `received`, and `wait_for(pred)` waits for the next/first matching one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 nick: str) -> None:
        self.reader = reader
        self.writer = writer
        self.nick = nick
        self.received: list[Message] = []
        self._seen = 0  # wait_for() consumes lines up to here
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    @classmethod
    async def connect(cls, port: int, nick: str, *, host: str = "127.0.0.1",
                      timeout: float = 10.0) -> "IrcTestClient":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        c = cls(reader, writer, nick)
        c._task = asyncio.create_task(c._read())
        await c.send(f"NICK {nick}")
        user = "".join(ch for ch in nick if ch.isalnum())[:10] or "user"
        await c.send(f"USER {user} 0 * :{nick}")
        try:
            await c.wait_for(lambda m: m.command == "001", timeout=timeout, consume=False)
        except BaseException:
            await c.close()
            raise
        return c

    async def _read(self) -> None:
        try:
            while line := await self.reader.readline():
                text = line.decode("utf-8", errors="replace").rstrip("\r\n")
                msg = Message.parse(text)
                if msg.command == "PING":
                    await self.send("PONG :" + msg.text)
                    continue
                self.received.append(msg)
                self._changed.set()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._changed.set()

    async def send(self, line: str) -> None:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await self.writer.drain()

    async def join(self, channel: str) -> None:
        await self.send(f"JOIN {channel}")
        await self.wait_for(lambda m: m.command == "366" and len(m.params) > 1 and
                            m.params[1].lower() == channel.lower())

    async def privmsg(self, target: str, text: str) -> None:
        await self.send(f"PRIVMSG {target} :{text}")

    async def action(self, target: str, text: str) -> None:
        await self.send(f"PRIVMSG {target} :\x01ACTION {text}\x01")

    async def wait_for(self, pred: Callable[[Message], bool], timeout: float = 15.0,
                       consume: bool = True) -> Message:
        """The first line not yet consumed that matches pred; later waits start after it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for i in range(self._seen, len(self.received)):
                if pred(self.received[i]):
                    if consume:
                        self._seen = i + 1
                    return self.received[i]
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise asyncio.TimeoutError(
                    f"{self.nick}: no matching IRC line; last lines: "
                    f"{[m.raw for m in self.received[-15:]]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass

    def messages(self, target: str | None = None) -> list[Message]:
        """Every PRIVMSG received (to `target` when given)."""
        return [m for m in self.received if m.command == "PRIVMSG" and
                (target is None or (m.params and m.params[0].lower() == target.lower()))]

    async def close(self) -> None:
        try:
            if not self.writer.is_closing():
                self.writer.write(b"QUIT :bye\r\n")
                await asyncio.wait_for(self.writer.drain(), 2)
        except (ConnectionError, asyncio.TimeoutError, OSError):
            pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (ConnectionError, asyncio.TimeoutError, OSError):
            pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
