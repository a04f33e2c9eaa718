"""The bot SDK.

    bot = Bot("echo")

    @bot.command("echo", help="say it back", usage="<text>")
    async def echo(ctx):
        await ctx.reply(ctx.rest or "(nothing)")

    @bot.on("m.room.member")
    async def member(bot, event): ...

    @bot.job("remind")
    async def fire(bot, job): ...     # from `await ctx.bot.schedule(due_ts, "remind", ...)`

A message starting with the prefix (default "!") is a command: `!remind 10m tea` calls the
`remind` handler with ctx.args == ["10m", "tea"] and ctx.rest == "10m tea". `!help` lists the
commands. Replies are real replies (m.in_reply_to) sent with a transaction ID derived from the
command's event ID, so a command delivered twice is answered once. `ctx.state` is this room's
persistent state for this bot. The bot ignores its own messages and accepts every invite.

Which transport carries events and sends replies (application service or plain client) is the
caller's choice: see `bridges.bots.transports` and `run_bot`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from bridges.appservice.store import Store
    from bridges.bots.transports import Transport

log = logging.getLogger(__name__)

JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS bot_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bot TEXT NOT NULL,
    kind TEXT NOT NULL,
    room_id TEXT NOT NULL,
    due_ts REAL NOT NULL,
    payload TEXT NOT NULL,
    source_event TEXT,
    UNIQUE (bot, kind, source_event)
);
CREATE INDEX IF NOT EXISTS bot_jobs_due ON bot_jobs (bot, due_ts);
"""

_DURATION_RE = re.compile(r"(\d+)\s*(w|d|h|m|s)", re.I)
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
MAX_DURATION_S = 366 * 86400


def parse_duration(text: str) -> int | None:
    """'10m' -> 600, '1h30m' -> 5400, '2d' -> 172800; None when it is not a duration."""
    text = text.strip().lower()
    if not text or not re.fullmatch(r"(\d+\s*[wdhms]\s*)+", text):
        return None
    total = sum(int(n) * _UNITS[u.lower()] for n, u in _DURATION_RE.findall(text))
    return total if 0 < total <= MAX_DURATION_S else None


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)


def stable_txn(*parts: str) -> str:
    return "bot-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


class BotSection(BaseModel):
    """The `bot:` section of a bot's config file."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["appservice", "client"] = "appservice"
    prefix: str = Field("!", min_length=1, max_length=8)
    # client mode: log in with a password once (the token is kept in the database) or use a
    # given access token.
    user_id: str | None = None
    password: str | None = None
    access_token: str | None = None
    device_name: str = "Nexa bot"
    sync_timeout_ms: int = Field(30_000, ge=0, le=120_000)


class RoomState:
    """One room's persistent JSON state for one bot."""

    def __init__(self, store: Store, bot: str, room_id: str) -> None:
        self._store = store
        self._ns = f"bot-state:{bot}"
        self.room_id = room_id

    async def all(self) -> dict[str, Any]:
        return await self._store.get_json(self._ns, self.room_id, {})

    async def get(self, key: str, default: Any = None) -> Any:
        return (await self.all()).get(key, default)

    async def set(self, key: str, value: Any) -> None:
        data = await self.all()
        data[key] = value
        await self._store.put_json(self._ns, self.room_id, data)

    async def delete(self, key: str) -> None:
        data = await self.all()
        if data.pop(key, None) is not None:
            await self._store.put_json(self._ns, self.room_id, data)


@dataclass
class Context:
    bot: Bot
    room_id: str
    event: dict[str, Any]
    command: str
    args: list[str]
    rest: str

    @property
    def sender(self) -> str:
        return self.event["sender"]

    @property
    def event_id(self) -> str:
        return str(self.event.get("event_id"))

    @property
    def state(self) -> RoomState:
        return self.bot.room_state(self.room_id)

    async def reply(self, text: str, *, notice: bool = False, html: str | None = None,
                    key: str = "reply") -> str:
        """A reply to the command; `key` tells several replies to one command apart."""
        content: dict[str, Any] = {"msgtype": "m.notice" if notice else "m.text", "body": text,
                                   "m.relates_to": {"m.in_reply_to": {"event_id": self.event_id}}}
        if html is not None:
            content.update(format="org.matrix.custom.html", formatted_body=html)
        return await self.bot.send(self.room_id, content, txn_id=stable_txn(self.event_id, key))


CommandHandler = Callable[[Context], Awaitable[None]]
EventHandlerFn = Callable[["Bot", dict[str, Any]], Awaitable[None]]
JobHandler = Callable[["Bot", dict[str, Any]], Awaitable[None]]


@dataclass
class Command:
    name: str
    handler: CommandHandler
    help: str = ""
    usage: str = ""


@dataclass
class Bot:
    name: str
    prefix: str = "!"
    commands: dict[str, Command] = field(default_factory=dict)
    handlers: dict[str, list[EventHandlerFn]] = field(default_factory=dict)
    jobs: dict[str, JobHandler] = field(default_factory=dict)
    transport: Transport | None = None
    # Every dispatched command as (room_id, name, args): for tests and logs.
    history: list[tuple[str, str, list[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._job_wake = asyncio.Event()
        self._job_task: asyncio.Task | None = None
        self.command("help", help="list the commands")(self._help)

    # --- registration ------------------------------------------------------------------------

    def command(self, name: str, *, help: str = "", usage: str = ""
                ) -> Callable[[CommandHandler], CommandHandler]:
        def deco(fn: CommandHandler) -> CommandHandler:
            self.commands[name.lower()] = Command(name.lower(), fn, help, usage)
            return fn
        return deco

    def on(self, event_type: str) -> Callable[[EventHandlerFn], EventHandlerFn]:
        def deco(fn: EventHandlerFn) -> EventHandlerFn:
            self.handlers.setdefault(event_type, []).append(fn)
            return fn
        return deco

    def job(self, kind: str) -> Callable[[JobHandler], JobHandler]:
        def deco(fn: JobHandler) -> JobHandler:
            self.jobs[kind] = fn
            return fn
        return deco

    # --- what the transport gives us ---------------------------------------------------------

    @property
    def user_id(self) -> str:
        assert self.transport is not None
        return self.transport.user_id

    @property
    def store(self) -> Store:
        assert self.transport is not None
        return self.transport.store

    def room_state(self, room_id: str) -> RoomState:
        return RoomState(self.store, self.name, room_id)

    async def send(self, room_id: str, content: dict[str, Any], *,
                   txn_id: str | None = None) -> str:
        assert self.transport is not None
        return await self.transport.send(room_id, content, txn_id=txn_id)

    async def send_text(self, room_id: str, text: str, *, notice: bool = False,
                        txn_id: str | None = None) -> str:
        return await self.send(room_id, {"msgtype": "m.notice" if notice else "m.text",
                                         "body": text}, txn_id=txn_id)

    async def start(self) -> None:
        await self.store.db.executescript(JOBS_SCHEMA)
        self._job_task = asyncio.get_running_loop().create_task(self._run_jobs(),
                                                                name=f"bot-jobs:{self.name}")

    async def stop(self) -> None:
        if self._job_task is not None:
            self._job_task.cancel()
            try:
                await self._job_task
            except (asyncio.CancelledError, Exception):
                pass
            self._job_task = None

    async def dispatch(self, event: dict[str, Any]) -> None:
        """One event from the transport (at least once; our own events included)."""
        if not isinstance(event, dict) or event.get("sender") == self.user_id:
            return
        room_id = event.get("room_id")
        if not isinstance(room_id, str):
            return
        etype = event.get("type")
        content = event.get("content") if isinstance(event.get("content"), dict) else {}
        if etype == "m.room.member" and event.get("state_key") == self.user_id \
                and content.get("membership") == "invite":
            assert self.transport is not None
            await self.transport.join(room_id)
        for fn in self.handlers.get(str(etype), []):
            await fn(self, event)
        body = content.get("body")
        if etype == "m.room.message" and isinstance(body, str) and "state_key" not in event \
                and body.startswith(self.prefix) and len(body) > len(self.prefix):
            await self._route(room_id, event, body[len(self.prefix):])

    async def _route(self, room_id: str, event: dict[str, Any], text: str) -> None:
        name, _, rest = text.strip().partition(" ")
        name = name.lower()
        rest = rest.strip()
        try:
            args = shlex.split(rest)
        except ValueError:
            args = rest.split()
        ctx = Context(self, room_id, event, name, args, rest)
        cmd = self.commands.get(name)
        if cmd is None:
            await ctx.reply(f"Unknown command {self.prefix}{name}. Try {self.prefix}help.",
                            notice=True)
            return
        self.history.append((room_id, name, args))
        try:
            await cmd.handler(ctx)
        except Exception as e:
            from bridges.appservice.intent import MatrixRequestError

            transient = isinstance(e, MatrixRequestError) and (e.status >= 500 or e.status == 429)
            if transient:
                raise  # delivered again later (replies keep their transaction IDs)
            log.exception("bot %s: command %s failed", self.name, name)
            try:
                await ctx.reply(f"Sorry, {self.prefix}{name} failed.", notice=True, key="error")
            except Exception:
                pass

    async def _help(self, ctx: Context) -> None:
        lines = [f"{self.name} commands:"]
        for c in sorted(self.commands.values(), key=lambda c: c.name):
            usage = f" {c.usage}" if c.usage else ""
            lines.append(f"  {self.prefix}{c.name}{usage} — {c.help}".rstrip(" —"))
        await ctx.reply("\n".join(lines), notice=True)

    # --- durable scheduled jobs --------------------------------------------------------------

    async def schedule(self, due_ts: float, kind: str, room_id: str, payload: dict[str, Any],
                       *, source_event: str | None = None) -> int:
        """Run `kind`'s job handler at due_ts (seconds since the epoch), even after a restart.
        The same source_event schedules once (commands may be delivered twice)."""
        async with self.store.transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO bot_jobs (bot, kind, room_id, due_ts, payload, "
                "source_event) VALUES (?,?,?,?,?,?)",
                [self.name, kind, room_id, due_ts, json.dumps(payload), source_event])
            rows = await self.store.fetch_in(
                db, "SELECT id FROM bot_jobs WHERE bot = ? AND kind = ? AND source_event IS ? "
                "ORDER BY id DESC LIMIT 1", [self.name, kind, source_event])
        self._job_wake.set()
        return rows[0]["id"]

    async def pending_jobs(self, kind: str, room_id: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM bot_jobs WHERE bot = ? AND kind = ?"
        values: list[Any] = [self.name, kind]
        if room_id is not None:
            q += " AND room_id = ?"
            values.append(room_id)
        rows = await self.store.fetch(q + " ORDER BY due_ts, id", values)
        for r in rows:
            r["payload"] = json.loads(r["payload"])
        return rows

    async def cancel_job(self, job_id: int) -> bool:
        before = await self.store.fetch("SELECT 1 FROM bot_jobs WHERE id = ? AND bot = ?",
                                        [job_id, self.name])
        await self.store.execute("DELETE FROM bot_jobs WHERE id = ? AND bot = ?",
                                 [job_id, self.name])
        return bool(before)

    async def _run_jobs(self) -> None:
        while True:
            try:
                wait = await self._run_due_jobs()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bot %s: job runner failed", self.name)
                wait = 5.0
            self._job_wake.clear()
            try:
                await asyncio.wait_for(self._job_wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _run_due_jobs(self) -> float:
        now = time.time()
        due = await self.store.fetch(
            "SELECT * FROM bot_jobs WHERE bot = ? AND due_ts <= ? ORDER BY due_ts, id LIMIT 50",
            [self.name, now])
        for job in due:
            job["payload"] = json.loads(job["payload"])
            fn = self.jobs.get(job["kind"])
            if fn is not None:
                try:
                    await fn(self, job)
                except Exception:
                    # Kept, and tried again later (job handlers send with stable txn IDs).
                    log.exception("bot %s: job %s failed; retrying later", self.name, job["id"])
                    await self.store.execute("UPDATE bot_jobs SET due_ts = ? WHERE id = ?",
                                             [time.time() + 30, job["id"]])
                    continue
            await self.store.execute("DELETE FROM bot_jobs WHERE id = ?", [job["id"]])
        nxt = await self.store.fetch("SELECT MIN(due_ts) AS t FROM bot_jobs WHERE bot = ?",
                                     [self.name])
        if nxt and nxt[0]["t"] is not None:
            return max(0.01, min(3600.0, nxt[0]["t"] - time.time()))
        return 3600.0


def run_bot(bot: Bot, config) -> Any:
    """A runner (`run_forever()`) for `bot` with the transport the config's `bot.mode` names."""
    from bridges.bots.transports import AppServiceTransport, ClientTransport

    section = config.section("bot", BotSection)
    bot.prefix = section.prefix
    if section.mode == "client":
        return ClientTransport(bot, config, section)
    return AppServiceTransport(bot, config)
