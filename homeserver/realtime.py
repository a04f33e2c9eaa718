"""Socket.IO at /_nexa/socket.io/: the /sync stream, pushed to browsers as it happens.

Protocol (namespace "/"):

- connect with ``auth={"token": <access token>, "since": <next_batch or null>,
  "filter": <filter ID string, inline filter JSON string or object, optional>,
  "ack": <bool, optional>}``.
  A missing or unknown token, a malformed ``since`` or an unusable filter refuses the
  connection: the client's ``connect_error`` carries ``{"message": <text>, "data":
  {"errcode": ..., "error": ...}}`` (M_MISSING_TOKEN, M_UNKNOWN_TOKEN, M_INVALID_PARAM,
  M_NOT_JSON, M_LIMIT_EXCEEDED).
- server → client ``sync``: exactly a /sync response body. The first one after a connect
  without ``since`` is the initial sync; after that (and after a connect with ``since``) one
  arrives whenever there is something new. Remember its ``next_batch`` and pass it as
  ``since`` when reconnecting: the stream resumes with no gap and no duplicate.
  Without ``ack`` the server pushes without waiting, and, since nothing proves a push was
  received, it leaves out what /sync hands over only once (to_device messages and one-time
  key counts: the stream is read as a device-less requester), and the ``next_batch`` it hands
  out keeps the to-device position it started from, so that a later /sync (or "ack" stream)
  from such a token still gets every pending to-device message. With ``"ack": true`` every
  ``sync`` asks for an acknowledgement (JS: ``socket.on("sync", (data, ack) => {...; ack()})``);
  the next one is computed only from the acknowledged ``next_batch``, exactly like the next
  /sync request, so the full device-specific /sync data is included; an acknowledgement
  missing for ACK_TIMEOUT_S drops the transport (the client reconnects and resumes).
- server → client ``sync_error``: ``{"errcode", "error"}`` just before the server ends the
  session (M_UNKNOWN_TOKEN after a logout or deactivation: do not reconnect with that token;
  M_UNKNOWN: retry later with the last next_batch).
- client → server ``typing`` ``{"room_id", "typing", "timeout"?}`` and ``ping``; both
  acknowledge (``{}`` / ``{"ts": <server ms>}``, or ``{"errcode", "error"}``). Any other
  event is acknowledged with M_UNRECOGNIZED; everything else goes through the REST API.

One background task per connection runs SyncHandler.sync in a loop (so the same notifier
wakes it as wakes /sync long-polls); it is cancelled on disconnect and on server stop.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from homeserver.errors import MatrixError
from homeserver.handlers.auth import Requester
from homeserver.types import StreamToken, now_ms
from homeserver.lean_imports import import_without

# python-socketio's package imports its client and its Redis/Kafka/AMQP/ZeroMQ managers eagerly;
# they pull in requests and redis (~20 MiB resident) that the server side never uses. Those are
# optional imports inside socketio, so hiding them while it loads leaves the server intact.
socketio = import_without("socketio", hidden=(
    "requests", "redis", "websocket", "kombu", "aio_pika", "zmq", "kafka", "confluent_kafka"))
from socketio.exceptions import ConnectionRefusedError as Refused  # noqa: E402

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

SOCKETIO_PATH = "/_nexa/socket.io"
NAMESPACE = "/"
SYNC_TIMEOUT_MS = 30_000
# Client → server messages are tiny (typing, ping).
MAX_INCOMING_BYTES = 64 * 1024
MAX_CONNECTIONS_PER_USER = 32
# Packets queued for a client that is not reading: past this, the stream waits for it to catch
# up, and after BACKLOG_WAIT_S drops the transport (the client reconnects with its next_batch).
MAX_PENDING_PACKETS = 16
BACKLOG_WAIT_S = 60.0
BACKLOG_POLL_S = 0.25
# With "ack": how long a client may take to acknowledge one push.
ACK_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 2.0
# Unexpected errors in the stream: retry with backoff, then give up on the session.
FAILURE_BACKOFF_S = (0.5, 1, 2, 4, 8, 15)


def _error(errcode: str, error: str) -> dict[str, Any]:
    return {"errcode": errcode, "error": error}


@dataclass(eq=False)
class Connection:
    sid: str
    requester: Requester
    # Kept to re-check the session before every push (logout, deactivation). Never logged.
    token: str = field(repr=False)
    since: str | None
    filter: dict[str, Any] | None = field(repr=False)
    ack: bool = False
    task: asyncio.Task | None = field(default=None, repr=False)


class Realtime:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        # Same-origin only (the engine.io default), checked against Host / X-Forwarded-*.
        # Handlers run inline (async_handlers=False): one message at a time per connection, so
        # a client cannot pile up handler tasks.
        self.sio = socketio.AsyncServer(
            async_mode="asgi", cors_allowed_origins=None, logger=False, engineio_logger=False,
            async_handlers=False, max_http_buffer_size=MAX_INCOMING_BYTES)
        self._conns: dict[str, Connection] = {}
        self._per_user: dict[str, int] = {}
        self._closing = False
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("typing", self._on_typing)
        self.sio.on("ping", self._on_ping)
        self.sio.on("*", self._on_other)

    def mount(self, other_asgi_app: Any) -> socketio.ASGIApp:
        """An ASGI app serving Socket.IO at SOCKETIO_PATH and everything else (lifespan too)
        with `other_asgi_app`."""
        return socketio.ASGIApp(self.sio, other_asgi_app=other_asgi_app,
                                socketio_path=SOCKETIO_PATH)

    def connection_count(self) -> int:
        return len(self._conns)

    # --- connection lifecycle --------------------------------------------------------------

    async def _on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        if self._closing:
            raise Refused("Server is shutting down", _error("M_UNKNOWN", "Server is shutting down"))
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get("token")
        if not isinstance(token, str) or not token:
            raise Refused("Missing access token", _error("M_MISSING_TOKEN", "Missing access token"))
        db = self.hs.db.activate()
        try:
            requester = await self.hs.auth.requester_for_token(token)
            since = auth.get("since")
            if since is not None:
                StreamToken.parse(since)
            flt = await self._resolve_filter(requester.user_id, auth.get("filter"))
            ack = auth.get("ack", False)
            if not isinstance(ack, bool):
                raise MatrixError(400, "M_INVALID_PARAM", "ack must be a boolean")
        except MatrixError as e:
            raise Refused(e.error, e.to_json()) from None
        except Exception:
            request_id = uuid.uuid4().hex[:12]
            log.exception("realtime: connect failed (request %s)", request_id)
            raise Refused("Internal error",
                          _error("M_UNKNOWN", f"Internal error (request {request_id})")) from None
        finally:
            self.hs.db.deactivate(db)
        user_id = requester.user_id
        if self._per_user.get(user_id, 0) >= MAX_CONNECTIONS_PER_USER:
            raise Refused("Too many connections",
                          _error("M_LIMIT_EXCEEDED", "Too many realtime connections for this user"))
        conn = Connection(sid, requester, token, since, flt, ack)
        self._conns[sid] = conn
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        conn.task = asyncio.create_task(self._run(conn), name=f"nexa-realtime-{sid}")
        log.info("realtime: %s connected (sid %s, resume %s, ack %s)", user_id, sid,
                 since is not None, ack)

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self._forget(sid)
        if conn is None:
            return
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()
        log.info("realtime: %s disconnected (sid %s, %s)", conn.requester.user_id, sid, reason)

    def _forget(self, sid: str) -> Connection | None:
        conn = self._conns.pop(sid, None)
        if conn is not None:
            user_id = conn.requester.user_id
            left = self._per_user.get(user_id, 1) - 1
            if left > 0:
                self._per_user[user_id] = left
            else:
                self._per_user.pop(user_id, None)
        return conn

    async def stop(self) -> None:
        """Refuse new connections, end every stream and close every transport: clients see a
        transport close, so they reconnect (to the restarted server) and resume."""
        self._closing = True
        tasks = [c.task for c in self._conns.values() if c.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(self._close_transport(s) for s in list(self.sio.eio.sockets)))
        self._conns.clear()
        self._per_user.clear()
        try:
            await self.sio.shutdown()
        except Exception:
            log.exception("realtime: Socket.IO shutdown failed")

    # --- the stream ----------------------------------------------------------------------------

    async def _run(self, conn: Connection) -> None:
        db = self.hs.db.activate()
        try:
            await self._connected(conn.sid)
            initial = conn.since is None
            failures = 0
            # Unacknowledged pushes may be lost: read as no device, so that nothing handed out
            # once (to-device messages) is consumed by a push nobody confirmed, and keep the
            # to-device position of the tokens handed out where it was, so that a later /sync
            # (or "ack" stream) from one of them still gets every pending to-device message.
            requester = conn.requester if conn.ack else replace(conn.requester, device_id=None)
            to_device_base = StreamToken.parse(conn.since).to_device if conn.since else 0
            while True:
                try:
                    result = await self.hs.sync.sync(requester, conn.since, SYNC_TIMEOUT_MS,
                                                     False, conn.filter)
                    # Nothing is pushed for a session that ended meanwhile.
                    await self.hs.auth.requester_for_token(conn.token)
                except MatrixError as e:
                    await self._end(conn, e.to_json())
                    return
                except Exception:
                    request_id = uuid.uuid4().hex[:12]
                    log.exception("realtime: stream of %s failed (request %s)",
                                  conn.requester.user_id, request_id)
                    if failures >= len(FAILURE_BACKOFF_S):
                        await self._end(conn, _error("M_UNKNOWN",
                                                     f"Internal error (request {request_id})"))
                        return
                    await asyncio.sleep(FAILURE_BACKOFF_S[failures])
                    failures += 1
                    continue
                failures = 0
                if not conn.ack:
                    result["next_batch"] = StreamToken.parse(result["next_batch"]).copy_with(
                        to_device=to_device_base).serialize()
                if initial or self.hs.sync._has_content(result):
                    if not await self._push(conn, result):
                        return
                    initial = False
                conn.since = result["next_batch"]
        finally:
            self.hs.db.deactivate(db)

    async def _connected(self, sid: str) -> None:
        """The connect handler has returned but the CONNECT packet may not be out yet; an
        event sent before it would be dropped by the client. A few loop turns suffice."""
        for _ in range(1000):
            if self.sio.manager.is_connected(sid, NAMESPACE):
                return
            await asyncio.sleep(0)

    async def _push(self, conn: Connection, result: dict[str, Any]) -> bool:
        """Send one sync; False when the client was dropped instead."""
        if not conn.ack:
            if not await self._wait_for_room(conn):
                return False
            await self.sio.emit("sync", result, to=conn.sid, namespace=NAMESPACE)
            return True
        # (sio.call() refuses to run with async_handlers=False; this is the same thing.)
        acked = asyncio.Event()
        await self.sio.emit("sync", result, to=conn.sid, namespace=NAMESPACE,
                            callback=lambda *_: acked.set())
        try:
            await asyncio.wait_for(acked.wait(), ACK_TIMEOUT_S)
            return True
        except asyncio.TimeoutError:
            await self._drop(conn, "did not acknowledge")
            return False

    def _pending(self, sid: str) -> int:
        try:
            eio_sid = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
            sock = self.sio.eio.sockets.get(eio_sid)
            return sock.queue.qsize() if sock is not None else 0
        except Exception:  # library internals changed: no flow control rather than no stream
            return 0

    async def _wait_for_room(self, conn: Connection) -> bool:
        """Bound what is queued for one client. False when it was dropped for not reading."""
        if self._pending(conn.sid) < MAX_PENDING_PACKETS:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BACKLOG_WAIT_S
        while loop.time() < deadline:
            await asyncio.sleep(BACKLOG_POLL_S)
            if self._pending(conn.sid) < MAX_PENDING_PACKETS:
                return True
        await self._drop(conn, "is not reading")
        return False

    async def _drop(self, conn: Connection, why: str) -> None:
        """Close the transport under a client that stopped reading: unlike a Socket.IO
        disconnect, the client's reconnection logic then resumes from its last next_batch."""
        log.warning("realtime: %s %s its stream; dropping the transport (sid %s)",
                    conn.requester.user_id, why, conn.sid)
        self._forget(conn.sid)
        try:
            eio_sid = self.sio.manager.eio_sid_from_sid(conn.sid, NAMESPACE)
        except Exception:
            return
        await self._close_transport(eio_sid)

    async def _close_transport(self, eio_sid: str) -> None:
        # The close waits for the queue to drain, which a client that does not read never does.
        try:
            await asyncio.wait_for(self.sio.eio.disconnect(eio_sid), CLOSE_TIMEOUT_S)
        except Exception:  # already gone, or stuck: it is marked closed either way
            pass

    async def _end(self, conn: Connection, error: dict[str, Any]) -> None:
        """Tell the client why, then disconnect it (from inside its own stream task)."""
        log.info("realtime: ending stream of %s (sid %s): %s", conn.requester.user_id, conn.sid,
                 error.get("errcode"))
        self._forget(conn.sid)
        try:
            await self.sio.emit("sync_error", {"errcode": error.get("errcode", "M_UNKNOWN"),
                                               "error": error.get("error", "")},
                                to=conn.sid, namespace=NAMESPACE)
            await self.sio.disconnect(conn.sid, namespace=NAMESPACE)
        except Exception:
            pass

    # --- client → server -------------------------------------------------------------------

    async def _on_typing(self, sid: str, data: Any = None, *_extra: Any) -> dict[str, Any]:
        conn = self._conns.get(sid)
        if conn is None:
            return _error("M_FORBIDDEN", "Not connected")
        if not isinstance(data, dict):
            return _error("M_BAD_JSON", "typing takes an object {room_id, typing, timeout}")
        room_id, typing, timeout = data.get("room_id"), data.get("typing"), data.get("timeout")
        if not isinstance(room_id, str) or not room_id.startswith("!") or len(room_id) > 255:
            return _error("M_BAD_JSON", "room_id must be a room ID")
        if not isinstance(typing, bool):
            return _error("M_BAD_JSON", "typing must be a boolean")
        if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)):
            return _error("M_BAD_JSON", "timeout must be an integer (milliseconds)")
        db = self.hs.db.activate()
        try:
            requester = await self.hs.auth.requester_for_token(conn.token)
            await self.hs.typing.set_typing(requester.user_id, requester.user_id, room_id, typing,
                                            timeout)
            return {}
        except MatrixError as e:
            return e.to_json()
        except Exception:
            request_id = uuid.uuid4().hex[:12]
            log.exception("realtime: typing failed (request %s)", request_id)
            return _error("M_UNKNOWN", f"Internal error (request {request_id})")
        finally:
            self.hs.db.deactivate(db)

    async def _on_ping(self, sid: str, *_args: Any) -> dict[str, Any]:
        return {"ts": now_ms()}

    async def _on_other(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        return _error("M_UNRECOGNIZED", "Unknown event; use the REST API")

    # --- helpers -------------------------------------------------------------------------------

    async def _resolve_filter(self, user_id: str, value: Any) -> dict[str, Any] | None:
        """Like /sync's `filter` parameter; an object is taken as an inline filter."""
        if value is None:
            return None
        if isinstance(value, dict):
            try:
                return self.hs.filters.parse_filter(value).raw
            except MatrixError as e:
                raise MatrixError(400, "M_INVALID_PARAM",
                                  f"filter is not valid: {e.error}") from None
        if isinstance(value, str):
            return await self.hs.filters.resolve(user_id, value) if value else None
        raise MatrixError(400, "M_INVALID_PARAM",
                          "filter must be a filter ID, or a filter as JSON text or an object")
