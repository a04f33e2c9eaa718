"""web/static/js/realtime.js — the hand-written Socket.IO v5 / Engine.IO v4 client — against the
real server: initial sync, live events, acknowledged emits, resume with `since`, and a refused
token."""

from __future__ import annotations

from tests.client import Api
from tests.web.conftest import new_username

CLIENT = """async ({token, since, ack = true}) => {
  const { Realtime } = await import('/static/js/realtime.js');
  window.__log = { syncs: [], statuses: [], authErrors: [] };
  window.__rt = new Realtime({ token, since, ack,
    onSync: (b) => window.__log.syncs.push(b),
    onStatus: (s) => window.__log.statuses.push(s),
    onAuthError: (e) => window.__log.authErrors.push(e.errcode) });
  window.__rt.start();
}"""


async def test_socketio_client_against_the_server(open_tab, api: Api):
    me = await api.register(new_username())
    room = await me.create_room(preset="private_chat", name="rt")
    tab = await open_tab("desktop")
    page = tab.page
    await page.goto(tab.base_url + "/#/login")
    await page.evaluate(CLIENT, {"token": me.token, "since": None})
    await page.wait_for_function("() => window.__log.syncs.length >= 1")
    first = await page.evaluate("window.__log.syncs[0]")
    assert room in first["rooms"]["join"]  # the initial sync
    assert await page.evaluate("window.__rt.connected && window.__log.statuses.includes('connected')")

    r = await me.put(f"/rooms/{room}/send/m.room.message/txn-rt-1",
                     {"msgtype": "m.text", "body": "over the socket"})
    assert r.status == 200
    await page.wait_for_function(
        """() => window.__log.syncs.some(s => Object.values(s.rooms.join).some(r =>
             r.timeline.events.some(e => e.content.body === 'over the socket')))""")
    # The sender's own device gets its transaction ID back (how the UI replaces its echo).
    txn = await page.evaluate("""() => window.__log.syncs.flatMap(s => Object.values(s.rooms.join))
        .flatMap(r => r.timeline.events).find(e => e.content.body === 'over the socket')
        .unsigned.transaction_id""")
    assert txn == "txn-rt-1"

    ack = await page.evaluate(
        "(room) => window.__rt.emit('typing', {room_id: room, typing: true, timeout: 5000})", room)
    assert ack == {}
    await page.wait_for_function(
        """(me) => window.__log.syncs.some(s => Object.values(s.rooms.join).some(r =>
             (r.ephemeral.events || []).some(e => e.type === 'm.typing' && e.content.user_ids.includes(me))))""",
        arg=me.user_id)
    bad = await page.evaluate("window.__rt.emit('typing', {room_id: 'nope', typing: true})")
    assert bad["errcode"] == "M_BAD_JSON"

    # Resume: a new client with the last next_batch gets only what came after it.
    since = await page.evaluate("window.__rt.since")
    await page.evaluate("window.__rt.stop()")
    await me.send_text(room, "while away")
    await page.evaluate(CLIENT, {"token": me.token, "since": since})
    await page.wait_for_function("() => window.__log.syncs.length >= 1")
    bodies = await page.evaluate("""() => window.__log.syncs.flatMap(s => Object.values(s.rooms.join)
        .flatMap(r => r.timeline.events.map(e => e.content.body)))""")
    assert "while away" in bodies and "over the socket" not in bodies
    await page.evaluate("window.__rt.stop()")

    # A token the server does not know: refused, and the client stops trying.
    await page.evaluate(CLIENT, {"token": "not-a-token", "since": None})
    await page.wait_for_function("() => window.__log.authErrors.length === 1")
    assert await page.evaluate("window.__log.authErrors[0]") == "M_UNKNOWN_TOKEN"
    assert await page.evaluate("window.__rt.status") == "unauthorized"

    # Logging out ends a live stream the same way (sync_error, then no reconnect).
    await page.evaluate(CLIENT, {"token": me.token, "since": None})
    await page.wait_for_function("() => window.__log.syncs.length >= 1")
    r = await me.post("/logout")
    assert r.status == 200
    await page.wait_for_function("() => window.__log.authErrors.length === 1", timeout=45_000)
    assert not tab.errors


async def test_socketio_client_without_acknowledgements(open_tab, api: Api):
    me = await api.register(new_username())
    room = await me.create_room(preset="private_chat")
    tab = await open_tab("desktop")
    page = tab.page
    await page.goto(tab.base_url + "/#/login")
    await page.evaluate(CLIENT, {"token": me.token, "since": None, "ack": False})
    await page.wait_for_function("() => window.__log.syncs.length >= 1")
    for i in range(3):
        await me.send_text(room, f"unacked {i}")
    await page.wait_for_function(
        """() => window.__log.syncs.flatMap(s => Object.values(s.rooms.join))
             .flatMap(r => r.timeline.events).filter(e => /^unacked/.test(e.content.body)).length === 3""")
    await page.evaluate("window.__rt.stop()")
    assert not tab.errors
