"""A small asyncio IRC client connection: one TCP (or TLS) connection per nick.

It registers (PASS/NICK/USER), answers PING, keeps itself alive with its own PINGs, finds a
free nick on 433/432/436, rejoins its channels after a reconnect, reconnects with exponential
backoff and jitter, and rate-limits what it sends (a token bucket: IRC servers disconnect
clients that flood). `sync()` round-trips a PING: when its PONG arrives the server has processed
every line sent before it, which is how the bridge knows a queued message really went out.
Every parsed line is also handed to an async handler, in order.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from bridges.appservice.tasks import backoff_delay, cancel_tasks

log = logging.getLogger(__name__)

# Replies that mean a JOIN failed (the channel name is the 2nd parameter).
JOIN_ERRORS = {"403", "405", "437", "471", "473", "474", "475", "476", "477", "479"}
NICK_ERRORS = {"431", "432", "433", "436", "437"}


class NotConnected(ConnectionError):
    pass


class IrcError(Exception):
    pass


@dataclass
class IrcMessage:
    prefix: str = ""
    command: str = ""
    params: list[str] = field(default_factory=list)
    raw: str = ""

    @property
    def nick(self) -> str:
        return self.prefix.split("!", 1)[0]

    @property
    def text(self) -> str:
        return self.params[-1] if self.params else ""

    def param(self, i: int) -> str:
        return self.params[i] if len(self.params) > i else ""


def parse_line(line: str) -> IrcMessage:
    rest = line
    if rest.startswith("@"):  # IRCv3 tags: not used
        rest = rest.split(" ", 1)[1] if " " in rest else ""
    prefix = ""
    if rest.startswith(":"):
        prefix, _, rest = rest[1:].partition(" ")
    trailing = None
    if rest.startswith(":"):
        rest, trailing = "", rest[1:]
    elif " :" in rest:
        rest, trailing = rest.split(" :", 1)
    parts = rest.split()
    params = parts[1:] + ([trailing] if trailing is not None else [])
    return IrcMessage(prefix, parts[0].upper() if parts else "", params, line)


_RFC1459 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ[]\\~", "abcdefghijklmnopqrstuvwxyz{}|^")


def irc_lower(s: str) -> str:
    """RFC 1459 case mapping (ngircd and most networks): A-Z[]\\~ == a-z{}|^."""
    return s.translate(_RFC1459)


_NICK_BAD = re.compile(r"[^A-Za-z0-9\[\]\\`_^{|}-]")


def sanitize_nick(name: str, max_len: int, suffix: str = "") -> str:
    """Something IRC accepts as a nick: allowed characters only, not starting with a digit
    or '-', suffix kept when truncating."""
    nick = _NICK_BAD.sub("", name.replace(" ", "_"))
    if not nick or nick[0].isdigit() or nick[0] == "-":
        nick = "m" + nick
    return nick[:max(1, max_len - len(suffix))] + suffix


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


Handler = Callable[["IrcConnection", IrcMessage], Awaitable[None]]


class IrcConnection:
    def __init__(self, *, host: str, port: int, nick: str, username: str, realname: str,
                 password: str | None = None, tls: bool = False, tls_verify: bool = True,
                 handler: Handler | None = None, rate: float = 2.0, burst: int = 5,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 60.0,
                 ping_interval_s: float = 60.0, connect_timeout_s: float = 15.0,
                 max_nick_len: int = 30, label: str = "irc") -> None:
        self.host, self.port = host, port
        self.wanted_nick = nick
        self.nick = nick
        self.username = re.sub(r"[^A-Za-z0-9_.-]", "", username)[:10] or "nexa"
        self.realname = realname
        self.password = password
        self.tls, self.tls_verify = tls, tls_verify
        self.handler = handler
        self.bucket = TokenBucket(rate, burst)
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.ping_interval_s = ping_interval_s
        self.connect_timeout_s = connect_timeout_s
        self.max_nick_len = max_nick_len
        self.label = label
        self.ready = asyncio.Event()
        self.channels: set[str] = set()  # irc_lower names we are in
        self.wanted_channels: dict[str, str] = {}  # irc_lower -> as given
        self.isupport: dict[str, str] = {}
        self.hostmask_len = 0  # len(":nick!user@host ") as others see us, once known
        self.connects = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._waiters: list[tuple[Callable[[IrcMessage], bool], asyncio.Future]] = []
        self._send_lock = asyncio.Lock()
        self._nick_attempt = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name=f"irc-{self.label}")

    async def stop(self, message: str = "Bridge stopping") -> None:
        self._stopping = True
        if self.ready.is_set() and self._writer is not None:
            try:
                await asyncio.wait_for(self._write(f"QUIT :{message}"), 2)
            except (OSError, asyncio.TimeoutError, ConnectionError):
                pass
        self._close()
        await cancel_tasks([self._task])
        self._task = None

    def _close(self) -> None:
        self.ready.clear()
        self.channels.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(NotConnected("connection closed"))
        self._waiters.clear()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure: reconnect later
                log.info("%s: connection to %s:%d lost: %s", self.label, self.host, self.port,
                         e or type(e).__name__)
            registered = self.ready.is_set()
            self._close()
            if self._stopping:
                return
            failures = 0 if registered else failures + 1
            await asyncio.sleep(backoff_delay(self.backoff_base_s, self.backoff_max_s, failures,
                                              max_exponent=16))

    async def _session(self) -> None:
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context()
            if not self.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=ctx, limit=2 ** 16),
            self.connect_timeout_s)
        self._writer = writer
        self.nick = self.wanted_nick
        self._nick_attempt = 0
        if self.password:
            await self._write(f"PASS :{self.password}")
        await self._write(f"NICK {self.nick}")
        await self._write(f"USER {self.username} 0 * :{self.realname}")
        idle = 0
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), self.ping_interval_s)
            except asyncio.TimeoutError:
                idle += 1
                if idle > 1:
                    raise ConnectionError("no answer to our PING")
                await self._write(f"PING :keepalive-{secrets.token_hex(4)}")
                continue
            if not line:
                raise ConnectionError("closed by the server")
            idle = 0
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            if text:
                await self._dispatch(parse_line(text))

    # --- incoming ----------------------------------------------------------------------------

    def _is_me(self, nick: str) -> bool:
        return irc_lower(nick) == irc_lower(self.nick)

    async def _dispatch(self, msg: IrcMessage) -> None:
        cmd = msg.command
        if cmd == "PING":
            await self._write(f"PONG :{msg.text}")
            return
        if cmd == "001":
            self.nick = msg.param(0) or self.nick
            self.connects += 1
            self.ready.set()
            log.info("%s: registered as %s on %s:%d", self.label, self.nick, self.host,
                     self.port)
            for name in list(self.wanted_channels.values()):
                await self.send(f"JOIN {name}")
        elif cmd == "005":
            for tok in msg.params[1:-1]:
                k, _, v = tok.partition("=")
                self.isupport[k.upper()] = v
            if self.isupport.get("NICKLEN", "").isdigit():
                self.max_nick_len = min(self.max_nick_len, int(self.isupport["NICKLEN"]))
        elif cmd in NICK_ERRORS and not self.ready.is_set():
            await self._next_nick(msg)
        elif cmd == "NICK" and self._is_me(msg.nick):
            self.nick = msg.text
        elif cmd == "JOIN" and self._is_me(msg.nick):
            name = msg.param(0)
            self.channels.add(irc_lower(name))
            self.hostmask_len = len(msg.prefix) + 2
        elif cmd == "PART" and self._is_me(msg.nick):
            self.channels.discard(irc_lower(msg.param(0)))
        elif cmd == "KICK" and self._is_me(msg.param(1)):
            self.channels.discard(irc_lower(msg.param(0)))
            self.wanted_channels.pop(irc_lower(msg.param(0)), None)
        elif cmd == "ERROR":
            raise ConnectionError(f"server error: {msg.text}")
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(msg):
                fut.set_result(msg)
        self._waiters = [(p, f) for p, f in self._waiters if not f.done()]
        if self.handler is not None:
            try:
                await self.handler(self, msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: handler failed for %r", self.label, msg.raw)

    async def _next_nick(self, msg: IrcMessage) -> None:
        self._nick_attempt += 1
        base = self.wanted_nick
        if msg.command == "432" or self._nick_attempt > 8:  # erroneous, or many taken
            cand = sanitize_nick("m" + secrets.token_hex(3), self.max_nick_len)
        else:
            tail = "_" * self._nick_attempt if self._nick_attempt <= 2 else str(self._nick_attempt)
            cand = base[:self.max_nick_len - len(tail)] + tail
        self.nick = cand
        await self._write(f"NICK {cand}")

    def expect(self, pred: Callable[[IrcMessage], bool]) -> asyncio.Future:
        """A future for the next line matching pred (register before sending the request)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        return fut

    def discard(self, fut: asyncio.Future) -> None:
        """Forget an expect() that is no longer wanted."""
        self._waiters = [(p, f) for p, f in self._waiters if f is not fut]
        if not fut.done():
            fut.cancel()

    # --- outgoing ----------------------------------------------------------------------------

    async def _write(self, line: str) -> None:
        if self._writer is None:
            raise NotConnected(f"{self.label}: not connected")
        data = line.replace("\r", " ").replace("\n", " ").encode("utf-8")[:510] + b"\r\n"
        async with self._send_lock:
            self._writer.write(data)
            await self._writer.drain()

    async def send(self, line: str) -> None:
        """One rate-limited line; NotConnected when there is no registered connection."""
        if not self.ready.is_set():
            raise NotConnected(f"{self.label}: not registered")
        await self.bucket.take()
        await self._write(line)

    async def wait_ready(self, timeout: float | None = None) -> None:
        if timeout is None:
            await self.ready.wait()
        else:
            await asyncio.wait_for(self.ready.wait(), timeout)

    async def sync(self, timeout: float = 30.0) -> None:
        """Returns once the server has processed everything sent before (PING/PONG)."""
        token = "sync-" + secrets.token_hex(6)
        fut = self.expect(lambda m: m.command == "PONG" and m.text == token)
        await self.send(f"PING :{token}")
        await asyncio.wait_for(fut, timeout)

    async def join(self, channel: str, timeout: float = 30.0) -> None:
        key = irc_lower(channel)
        self.wanted_channels[key] = channel
        if key in self.channels:
            return
        fut = self.expect(lambda m: (m.command == "JOIN" and self._is_me(m.nick) and
                                     irc_lower(m.param(0)) == key) or
                          (m.command in JOIN_ERRORS and irc_lower(m.param(1)) == key))
        await self.send(f"JOIN {channel}")
        reply = await asyncio.wait_for(fut, timeout)
        if reply.command != "JOIN":
            self.wanted_channels.pop(key, None)
            raise IrcError(f"cannot join {channel}: {reply.command} {reply.text}")

    async def part(self, channel: str, reason: str = "") -> None:
        key = irc_lower(channel)
        self.wanted_channels.pop(key, None)
        if key in self.channels:
            await self.send(f"PART {channel} :{reason}" if reason else f"PART {channel}")
            self.channels.discard(key)

    async def change_nick(self, nick: str, timeout: float = 15.0) -> str:
        """Try nick (then nick_, nick__); returns the nick we end up with."""
        self.wanted_nick = nick
        for cand in (nick, nick[:self.max_nick_len - 1] + "_", nick[:self.max_nick_len - 2] + "__"):
            if irc_lower(cand) == irc_lower(self.nick):
                return self.nick
            fut = self.expect(lambda m, c=cand: (m.command == "NICK" and irc_lower(m.text) ==
                                                 irc_lower(c)) or m.command in NICK_ERRORS)
            await self.send(f"NICK {cand}")
            reply = await asyncio.wait_for(fut, timeout)
            if reply.command == "NICK":
                return self.nick
            if reply.command not in ("433", "436"):
                break
        return self.nick

    def max_text_bytes(self, target: str, command: str = "PRIVMSG") -> int:
        """How much text fits in one line, as relayed to others with our full hostmask."""
        prefix = self.hostmask_len or (len(self.nick) + len(self.username) + 64 + 4)
        return 512 - 2 - prefix - len(f"{command} {target} :".encode("utf-8"))
