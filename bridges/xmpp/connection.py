"""The component's connection to the XMPP server (XEP-0114), kept up with exponential backoff.

Each connection is a fresh slixmpp `ComponentXMPP` (nothing from a dead stream, such as
stanzas slixmpp queued for later, can leak into the next one). Stanzas are sent at once with
`send_raw` — when the stream is down the caller learns it immediately and keeps its queue row —
and incoming ones go, in order, to one handler. `barrier()` pings the server: because the
server handles a component's stanzas in order, its answer proves everything sent before it was
processed (and any error those stanzas caused has arrived). A ping every `ping_interval_s`
notices a dead stream that TCP has not reported.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import xml.etree.ElementTree as ET
from typing import Awaitable, Callable

from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.xmlstream import tostring
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from bridges.appservice.tasks import backoff_delay, cancel_tasks
from bridges.xmpp.stanzas import NS_COMPONENT, NS_DISCO_INFO, NS_PING, NS_STANZAS, _q

log = logging.getLogger(__name__)

StanzaHandler = Callable[[ET.Element], Awaitable[None]]


class NotConnected(Exception):
    pass


class IqError(Exception):
    def __init__(self, element: ET.Element) -> None:
        cond = ""
        err = element.find(_q(NS_COMPONENT, "error"))
        if err is not None:
            for c in err:
                if c.tag.startswith("{%s}" % NS_STANZAS) and not c.tag.endswith("}text"):
                    cond = c.tag.rsplit("}", 1)[1]
                    break
        super().__init__(cond or "error")
        self.condition = cond
        self.element = element


class ComponentConnection:
    def __init__(self, *, jid: str, secret: str, host: str, port: int, server_domain: str,
                 on_stanza: StanzaHandler, on_connected: Callable[[], Awaitable[None]],
                 on_disconnected: Callable[[], None], base_ms: int = 1000,
                 max_ms: int = 60_000, ping_interval_s: float = 60,
                 response_timeout_s: float = 15, identity_name: str = "Matrix bridge") -> None:
        self.jid = jid
        self.secret = secret
        self.host = host
        self.port = port
        self.server_domain = server_domain
        self.on_stanza = on_stanza
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.base_ms = base_ms
        self.max_ms = max_ms
        self.ping_interval_s = ping_interval_s
        self.response_timeout_s = response_timeout_s
        self.identity_name = identity_name
        self._xmpp: ComponentXMPP | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._iq_waiters: dict[str, asyncio.Future] = {}
        self._incoming: asyncio.Queue[ET.Element | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.generation = 0  # bumped on every new session
        self.attempts = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="xmpp-connection")

    async def stop(self) -> None:
        self._stopping = True
        xmpp = self._xmpp
        if xmpp is not None and xmpp.transport is not None:
            try:
                xmpp.send_raw(xmpp.stream_footer)
            except Exception:
                pass
            xmpp.abort()
        await cancel_tasks([self._task])
        self._task = None
        self._set_down()

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        if timeout is None:
            await self._connected.wait()
        else:
            await asyncio.wait_for(self._connected.wait(), timeout)

    def _backoff_s(self) -> float:
        return backoff_delay(self.base_ms, self.max_ms, self.attempts) / 1000

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._one_session()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("XMPP component connection failed")
            self._set_down()
            if self._stopping:
                return
            self.attempts += 1
            delay = self._backoff_s()
            log.info("reconnecting to the XMPP server in %.1fs (attempt %d)", delay,
                     self.attempts)
            await asyncio.sleep(delay)

    async def _one_session(self) -> None:
        xmpp = ComponentXMPP(self.jid, self.secret, self.host, self.port)
        for name in ("IM", "IMError", "Presence"):  # the bridge reads every stanza itself
            xmpp.remove_handler(name)
        for kind in ("message", "presence", "iq"):
            xmpp.register_handler(Callback(f"nexa-{kind}", MatchXPath(_q(NS_COMPONENT, kind)),
                                           lambda st: self._incoming.put_nowait(st.xml)))
        started = asyncio.Event()
        ended = asyncio.Event()
        errors: list[str] = []
        xmpp.add_event_handler("session_start", lambda _e: started.set())
        xmpp.add_event_handler("disconnected", lambda _e: ended.set())
        xmpp.add_event_handler("connection_failed", lambda e: (errors.append(str(e)),
                                                               ended.set()))
        xmpp.add_event_handler("stream_error", lambda e: errors.append(
            f"stream error {e['condition']} {e['text']}".strip()))
        self._xmpp = xmpp
        self._lost = asyncio.Event()
        consumer = asyncio.get_running_loop().create_task(self._consume(), name="xmpp-incoming")
        try:
            xmpp.connect(self.host, self.port)
            waiter = asyncio.ensure_future(started.wait())
            stopper = asyncio.ensure_future(ended.wait())
            done, _ = await asyncio.wait({waiter, stopper}, timeout=self.response_timeout_s * 2,
                                         return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if not started.is_set():
                what = "; ".join(errors) or "no answer"
                if any("not-authorized" in e for e in errors):
                    log.error("the XMPP server refused the component handshake for %s: check "
                              "the component secret (%s)", self.jid, what)
                else:
                    log.warning("cannot connect to the XMPP server at %s:%d: %s", self.host,
                                self.port, what)
                return
            log.info("connected to the XMPP server as component %s", self.jid)
            self.attempts = 0
            self.generation += 1
            self._connected.set()
            loop = asyncio.get_running_loop()
            hello = loop.create_task(self._call_connected(), name="xmpp-on-connected")
            pinger = loop.create_task(self._keepalive(), name="xmpp-keepalive")
            try:
                await ended.wait()
            finally:
                pinger.cancel()
                hello.cancel()
            log.warning("lost the connection to the XMPP server%s",
                        f" ({'; '.join(errors)})" if errors else "")
        finally:
            xmpp.cancel_connection_attempt()
            if xmpp.transport is not None:
                xmpp.abort()
            # slixmpp's send-queue task belongs to this stream object, which is dropped.
            filters = getattr(xmpp, "_run_out_filters", None)
            if filters is not None and not filters.done():
                filters.cancel()
                await asyncio.gather(filters, return_exceptions=True)
            self._incoming.put_nowait(None)
            await asyncio.gather(consumer, return_exceptions=True)
            self._xmpp = None

    async def _call_connected(self) -> None:
        try:
            await self.on_connected()
        except (NotConnected, asyncio.TimeoutError):
            pass
        except Exception:
            log.exception("XMPP session set-up failed")

    def _set_down(self) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._lost.set()
        for fut in self._iq_waiters.values():
            if not fut.done():
                fut.set_exception(NotConnected("connection lost"))
        self._iq_waiters.clear()
        if was:
            try:
                self.on_disconnected()
            except Exception:
                log.exception("on_disconnected failed")

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            try:
                await self.barrier()
            except (NotConnected, asyncio.TimeoutError):
                log.warning("the XMPP server did not answer a ping; reconnecting")
                self.drop()
                return

    def drop(self) -> None:
        """Abort the current stream (the run loop reconnects)."""
        if self._xmpp is not None and self._xmpp.transport is not None:
            self._xmpp.abort()

    # --- incoming ----------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            el = await self._incoming.get()
            if el is None:
                return
            if el.tag == _q(NS_COMPONENT, "iq"):
                self._on_iq(el)
                continue
            try:
                await self.on_stanza(el)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handling an incoming stanza failed")

    def _on_iq(self, el: ET.Element) -> None:
        typ = el.get("type")
        iq_id = el.get("id", "")
        if typ in ("result", "error"):
            fut = self._iq_waiters.pop(iq_id, None)
            if fut is not None and not fut.done():
                fut.set_result(el)
            return
        if typ not in ("get", "set"):
            return
        payload = el[0] if len(el) else None
        reply = ET.Element(_q(NS_COMPONENT, "iq"), {"type": "result", "id": iq_id,
                                                    "from": el.get("to", self.jid),
                                                    "to": el.get("from", "")})
        if typ == "get" and payload is not None and payload.tag == _q(NS_PING, "ping"):
            pass
        elif typ == "get" and payload is not None and payload.tag == _q(NS_DISCO_INFO, "query") \
                and not payload.get("node"):
            q = ET.SubElement(reply, _q(NS_DISCO_INFO, "query"))
            if "@" in el.get("to", ""):
                ET.SubElement(q, _q(NS_DISCO_INFO, "identity"),
                              {"category": "account", "type": "registered"})
            else:
                ET.SubElement(q, _q(NS_DISCO_INFO, "identity"),
                              {"category": "gateway", "type": "matrix",
                               "name": self.identity_name})
            for var in (NS_DISCO_INFO, NS_PING, "urn:xmpp:message-correct:0",
                        "urn:xmpp:reply:0", "jabber:x:oob", "http://jabber.org/protocol/xhtml-im"):
                ET.SubElement(q, _q(NS_DISCO_INFO, "feature"), {"var": var})
        else:
            reply.set("type", "error")
            err = ET.SubElement(reply, _q(NS_COMPONENT, "error"), {"type": "cancel"})
            ET.SubElement(err, _q(NS_STANZAS, "service-unavailable"))
        try:
            self.send(reply)
        except NotConnected:
            pass

    # --- outgoing ----------------------------------------------------------------------------

    def send(self, el: ET.Element) -> None:
        xmpp = self._xmpp
        if xmpp is None or xmpp.transport is None or not self._connected.is_set():
            raise NotConnected("not connected to the XMPP server")
        xmpp.send_raw(tostring(el, xmlns=NS_COMPONENT, stream=xmpp, top_level=True))

    async def iq(self, el: ET.Element, timeout: float | None = None) -> ET.Element:
        """Send an iq and wait for its answer; IqError for an error answer."""
        iq_id = el.get("id") or secrets.token_hex(8)
        el.set("id", iq_id)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._iq_waiters[iq_id] = fut
        try:
            self.send(el)
            res = await asyncio.wait_for(fut, timeout or self.response_timeout_s)
        finally:
            self._iq_waiters.pop(iq_id, None)
        if res.get("type") == "error":
            raise IqError(res)
        return res

    async def barrier(self) -> None:
        """Returns once the server processed everything sent before (NotConnected or
        TimeoutError when that cannot be known)."""
        el = ET.Element(_q(NS_COMPONENT, "iq"), {"type": "get", "from": self.jid,
                                                 "to": self.server_domain,
                                                 "id": "ping-" + secrets.token_hex(6)})
        ET.SubElement(el, _q(NS_PING, "ping"))
        try:
            await self.iq(el)
        except IqError:
            pass  # an error answer is an answer: everything before it was handled

    async def wait_lost(self) -> None:
        await self._lost.wait()
