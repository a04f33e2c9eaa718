"""The webhooks bridge.

Incoming: `POST {public_url}/webhooks/{secret}` with Slack-compatible JSON
(`{"text": "...", "username": "..."}`, or a form field `payload` holding that JSON) posts the
text to the hook's room — as a puppet named after `username` (registered, named and joined on
first use) or as the bridge bot. A hook may also require a signature (`X-Nexa-Signature:
sha256=<hex HMAC-SHA256 of the body>` with its signing secret). Unknown hooks are 404,
malformed or badly signed bodies 4xx, and nothing is posted for them.

Outgoing: each `m.room.message` in a room with an outgoing hook (not sent by the bridge itself)
becomes a row in a durable queue, in the same SQLite database that de-duplicates the
homeserver's transactions; a worker POSTs it with `X-Nexa-Signature` and retries with
exponential backoff (network errors, 5xx, 408, 429) until a 2xx — per URL in order, across
restarts. Any other 4xx means the receiver will never take it: the row is dropped and logged.

Hooks come from the config file or from commands in a room (room moderators only):
`!webhook new [signed]`, `!webhook out <url>`, `!webhook out off`, `!webhook list`,
`!webhook revoke`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import time
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridges.appservice.bridge import Bridge
from bridges.appservice.config import BridgeConfig
from bridges.appservice.intent import MatrixRequestError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_in (
    secret_hash TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    signing_secret TEXT,
    created_by TEXT,
    created_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_out (
    room_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_by TEXT
);
CREATE TABLE IF NOT EXISTS webhook_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    UNIQUE (event_id, url)
);
"""

SIGNATURE_HEADER = "X-Nexa-Signature"
_URL_RE = re.compile(r"^https?://[^\s/]+\S*$")


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(sign(secret, body).encode(),
                                                header.strip().encode())


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def puppet_localpart(prefix: str, username: str) -> str:
    """'Build Bot' -> 'webhook_build_bot'; names with nothing usable get a stable hash."""
    clean = re.sub(r"[^a-z0-9._=\-/]+", "_", username.lower()).strip("_.")[:48]
    if not clean:
        clean = hashlib.sha256(username.encode()).hexdigest()[:12]
    return prefix + clean


class IncomingHook(BaseModel):
    model_config = ConfigDict(extra="forbid")
    room: str
    secret: str = Field(min_length=16)
    signing_secret: str | None = Field(None, min_length=8)


class OutgoingHook(BaseModel):
    model_config = ConfigDict(extra="forbid")
    room: str
    url: str
    secret: str = Field(min_length=8)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not _URL_RE.match(v):
            raise ValueError("must be an http:// or https:// URL")
        return v


class WebhooksSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Base of the URLs handed out by `!webhook new` (default: the listen address).
    public_url: str | None = None
    # Puppets are @<prefix><username>; must lie in the registration's users namespace.
    puppet_prefix: str = "webhook_"
    hooks: list[IncomingHook] = []
    outgoing: list[OutgoingHook] = []
    commands: bool = True
    command_power_level: int = 50
    max_text_bytes: int = Field(32_768, ge=1, le=1_000_000)
    retry_base_ms: int = Field(1_000, ge=1)
    retry_max_ms: int = Field(300_000, ge=1)
    request_timeout_s: float = Field(10, gt=0)


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WebhooksBridge(Bridge):
    name = "webhooks"
    SCHEMA = SCHEMA

    def __init__(self, config: BridgeConfig) -> None:
        super().__init__(config)
        self.settings = config.section("webhooks", WebhooksSection)
        self.server.app.router.add_post("/webhooks/{secret}", self._incoming)
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._http: aiohttp.ClientSession | None = None
        # (event_id, url, outcome) after each delivery attempt: for tests and metrics.
        self.delivery_log: list[tuple[str, str, str]] = []

    # --- lifecycle ---------------------------------------------------------------------------

    async def on_start(self) -> None:
        self.require_puppet_prefix("webhooks.puppet_prefix", self.settings.puppet_prefix)
        for h in self.settings.hooks:
            await self.store.execute(
                "INSERT INTO webhook_in (secret_hash, room_id, signing_secret, created_by, "
                "created_ts) VALUES (?,?,?,?,?) ON CONFLICT (secret_hash) DO UPDATE SET "
                "room_id = excluded.room_id, signing_secret = excluded.signing_secret",
                [secret_hash(h.secret), h.room, h.signing_secret, "config", int(time.time())])
        for o in self.settings.outgoing:
            await self.store.execute(
                "INSERT INTO webhook_out (room_id, url, secret, created_by) VALUES (?,?,?,?) "
                "ON CONFLICT (room_id) DO UPDATE SET url = excluded.url, secret = excluded.secret",
                [o.room, o.url, o.secret, "config"])
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s))
        self._worker = asyncio.get_running_loop().create_task(self._deliver_forever(),
                                                              name="webhooks-outgoing")

    async def on_stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
            self._worker = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def hook_url(self, secret: str) -> str:
        base = self.settings.public_url or f"http://{self.config.listen.host}:{self.server.port}"
        return f"{base.rstrip('/')}/webhooks/{secret}"

    # --- incoming ----------------------------------------------------------------------------

    async def _incoming(self, request: web.Request) -> web.Response:
        try:
            room_id, text, username = await self._parse_incoming(request)
        except BadRequest as e:
            return web.json_response({"ok": False, "error": str(e)}, status=e.status)
        try:
            await self.post_as(room_id, text, username)
        except MatrixRequestError as e:
            log.warning("incoming webhook for %s not posted: %s", room_id, e)
            status = 502 if e.status >= 500 or e.status == 429 else 409
            return web.json_response({"ok": False, "error": "the homeserver refused the message"},
                                     status=status)
        return web.Response(text="ok")

    async def _parse_incoming(self, request: web.Request) -> tuple[str, str, str | None]:
        secret = request.match_info["secret"]
        rows = await self.store.fetch(
            "SELECT room_id, signing_secret FROM webhook_in WHERE secret_hash = ?",
            [secret_hash(secret)])
        if not rows:
            raise BadRequest(404, "unknown webhook")
        limit = self.settings.max_text_bytes * 4 + 4096
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(413, "body too large")
        raw = await request.content.read(limit + 1)
        if len(raw) > limit:
            raise BadRequest(413, "body too large")
        signing = rows[0]["signing_secret"]
        if signing and not signature_ok(signing, raw, request.headers.get(SIGNATURE_HEADER)):
            raise BadRequest(401, f"missing or bad {SIGNATURE_HEADER}")
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        try:
            if ctype == "application/x-www-form-urlencoded":
                from urllib.parse import parse_qs

                form = parse_qs(raw.decode("utf-8"), strict_parsing=False)
                data = json.loads(form["payload"][0])
            else:
                data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, KeyError, IndexError):
            raise BadRequest(400, "body must be JSON (or a form with a JSON 'payload')") from None
        if not isinstance(data, dict):
            raise BadRequest(400, "body must be a JSON object")
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BadRequest(400, "'text' must be a non-empty string")
        if len(text.encode("utf-8", "surrogatepass")) > self.settings.max_text_bytes:
            raise BadRequest(413, "'text' is too long")
        if "\x00" in text:
            raise BadRequest(400, "'text' must not contain NUL")
        username = data.get("username")
        if username is not None:
            if not isinstance(username, str) or not username.strip() or len(username) > 100 \
                    or "\x00" in username:
                raise BadRequest(400, "'username' must be a non-empty string (at most 100)")
            username = username.strip()
        return rows[0]["room_id"], text, username

    async def post_as(self, room_id: str, text: str, username: str | None) -> str:
        if username is None:
            intent = self.bot
        else:
            intent = self.client.intent(self.client.user_id(
                puppet_localpart(self.settings.puppet_prefix, username)))
            await intent.ensure_registered()
            await intent.set_displayname(username)
        return await intent.send_text(room_id, text)

    # --- room events -------------------------------------------------------------------------

    async def handle_event(self, event: dict[str, Any]) -> None:
        if event.get("type") != "m.room.message" or "state_key" in event:
            return
        sender, room_id = event.get("sender"), event.get("room_id")
        content = event.get("content")
        if not isinstance(sender, str) or not isinstance(room_id, str) or \
                not isinstance(content, dict) or self.is_ours(sender):
            return
        body = content.get("body")
        if isinstance(body, str) and body.strip().startswith("!webhook") and self.settings.commands:
            await self._command(event, body.strip().split())
            return
        rows = await self.store.fetch("SELECT url, secret FROM webhook_out WHERE room_id = ?",
                                      [room_id])
        if not rows:
            return
        payload = json.dumps({
            "event_id": event.get("event_id"), "room_id": room_id, "sender": sender,
            "msgtype": content.get("msgtype"), "text": body if isinstance(body, str) else "",
            "timestamp": event.get("origin_server_ts"),
        }, separators=(",", ":"), ensure_ascii=False)
        await self.store.execute(
            "INSERT OR IGNORE INTO webhook_queue (event_id, url, secret, body) VALUES (?,?,?,?)",
            [str(event.get("event_id")), rows[0]["url"], rows[0]["secret"], payload])
        self._wake.set()

    async def _command(self, event: dict[str, Any], words: list[str]) -> None:
        room_id, sender, event_id = event["room_id"], event["sender"], str(event.get("event_id"))

        async def reply(text: str) -> None:
            # A transaction ID derived from the command: a re-delivered command answers once.
            await self.bot.send_text(room_id, text, notice=True, reply_to=event_id,
                                     txn_id=f"cmd-{hashlib.sha256(event_id.encode()).hexdigest()[:32]}")

        if await self.bot.power_level(room_id, sender) < self.settings.command_power_level:
            await reply("Only room moderators can manage webhooks.")
            return
        sub = words[1] if len(words) > 1 else "help"
        if sub == "new":
            secret = secrets.token_urlsafe(24)
            signing = secrets.token_urlsafe(24) if "signed" in words[2:] else None
            await self.store.execute(
                "INSERT INTO webhook_in (secret_hash, room_id, signing_secret, created_by, "
                "created_ts) VALUES (?,?,?,?,?)",
                [secret_hash(secret), room_id, signing, sender, int(time.time())])
            msg = f"New incoming webhook: {self.hook_url(secret)}"
            if signing:
                msg += f" (sign bodies with {SIGNATURE_HEADER}, secret {signing})"
            await reply(msg)
        elif sub == "out" and len(words) > 2 and words[2] == "off":
            await self.store.execute("DELETE FROM webhook_out WHERE room_id = ?", [room_id])
            await reply("Outgoing webhook removed.")
        elif sub == "out" and len(words) > 2:
            url = words[2]
            if not _URL_RE.match(url):
                await reply("Usage: !webhook out <http(s) URL> | !webhook out off")
                return
            secret = secrets.token_urlsafe(24)
            await self.store.execute(
                "INSERT INTO webhook_out (room_id, url, secret, created_by) VALUES (?,?,?,?) "
                "ON CONFLICT (room_id) DO UPDATE SET url = excluded.url, secret = excluded.secret, "
                "created_by = excluded.created_by", [room_id, url, secret, sender])
            await reply(f"Messages here now go to {url}, signed with {SIGNATURE_HEADER} "
                        f"(HMAC-SHA256, secret {secret}).")
        elif sub == "list":
            n = await self.store.fetch("SELECT COUNT(*) AS n FROM webhook_in WHERE room_id = ?",
                                       [room_id])
            out = await self.store.fetch("SELECT url FROM webhook_out WHERE room_id = ?", [room_id])
            await reply(f"{n[0]['n']} incoming webhook(s); outgoing: "
                        f"{out[0]['url'] if out else 'none'}.")
        elif sub == "revoke":
            await self.store.execute("DELETE FROM webhook_in WHERE room_id = ?", [room_id])
            await reply("All incoming webhooks of this room are revoked.")
        else:
            await reply("Commands: !webhook new [signed] | !webhook out <url> | "
                        "!webhook out off | !webhook list | !webhook revoke")

    # --- outgoing delivery -------------------------------------------------------------------

    def _backoff_s(self, attempts: int) -> float:
        ceiling = min(self.settings.retry_max_ms,
                      self.settings.retry_base_ms * (2 ** min(attempts - 1, 30)))
        return (ceiling / 2 + random.random() * ceiling / 2) / 1000

    async def _deliver_forever(self) -> None:
        while True:
            try:
                wait = await self._deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outgoing webhooks: unexpected error")
                wait = 1.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _deliver_due(self) -> float:
        """Attempt the head of every URL's queue that is due; seconds until the next is."""
        heads = await self.store.fetch(
            "SELECT * FROM webhook_queue q WHERE id = "
            "(SELECT MIN(id) FROM webhook_queue WHERE url = q.url)")
        if not heads:
            return 3600.0
        now = time.time()
        due = [h for h in heads if h["next_at"] <= now]
        if due:
            await asyncio.gather(*(self._deliver(h) for h in due))
            return 0.0
        return max(0.01, min(h["next_at"] for h in heads) - now)

    async def _deliver(self, row: dict[str, Any]) -> None:
        body = row["body"].encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(row["secret"], body),
                   "X-Nexa-Delivery": row["event_id"]}
        assert self._http is not None
        try:
            async with self._http.post(row["url"], data=body, headers=headers) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            status, reason = 0, str(e) or type(e).__name__
        else:
            reason = f"HTTP {status}"
        if 200 <= status < 300:
            await self.store.execute("DELETE FROM webhook_queue WHERE id = ?", [row["id"]])
            self.delivery_log.append((row["event_id"], row["url"], "sent"))
        elif 400 <= status < 500 and status not in (408, 429):
            log.warning("outgoing webhook %s refused %s (%s); dropped", row["url"],
                        row["event_id"], reason)
            await self.store.execute("DELETE FROM webhook_queue WHERE id = ?", [row["id"]])
            self.delivery_log.append((row["event_id"], row["url"], "dropped"))
        else:
            attempts = row["attempts"] + 1
            delay = self._backoff_s(attempts)
            log.info("outgoing webhook %s failed for %s (%s); retry %d in %.1fs", row["url"],
                     row["event_id"], reason, attempts, delay)
            await self.store.execute(
                "UPDATE webhook_queue SET attempts = ?, next_at = ? WHERE id = ?",
                [attempts, time.time() + delay, row["id"]])
            self.delivery_log.append((row["event_id"], row["url"], "retry"))
