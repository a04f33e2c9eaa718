"""Ephemeral data pushed to application services that ask for it (receive_ephemeral, MSC2409):
typing, read receipts and presence in `ephemeral` (and the unstable MSC2409 key) for the rooms
and users a service cares about, nothing for a service that did not ask, coalesced and kept
across a restart while the service is down, and resent unchanged under the same txnId."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter

import pytest
import yaml

from homeserver.config import AppServiceRegistration
from homeserver.storage import sql
from tests.bridges.fake_as import FakeAppService
from tests.bridges.test_appservice_cli import nexa
from tests.client import Api

UNSTABLE = "de.sorunome.msc2409.ephemeral"


def reg(fake: FakeAppService, id: str, prefix: str, **kw) -> dict:
    return dict(id=id, url=fake.url, as_token=f"as_{id}_{secrets.token_hex(8)}",
                hs_token=fake.hs_token, sender=f"{id}bot", users=[(f"@{prefix}_.*", True)], **kw)


async def as_member(api: Api, srv, registration: dict, local: str, room_id: str) -> str:
    """Register one of the service's users and join it to the room."""
    token = registration["as_token"]
    r = await api.request("POST", "/register", {"type": "m.login.application_service",
                                                "username": local, "inhibit_login": True},
                          token=token)
    assert r.status == 200, r
    user_id = r.json["user_id"]
    r = await api.request("POST", f"/join/{room_id}", {}, token=token,
                          params={"user_id": user_id})
    assert r.status == 200, r
    return user_id


async def in_db(srv, query: str, args: list) -> list[dict]:
    token = srv.hs.db.activate()
    try:
        return await sql.fetch(query, args)
    finally:
        srv.hs.db.deactivate(token)


async def until(pred, timeout: float = 15.0):
    """Poll pred() (sync or async) until it is truthy; its value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        res = pred()
        if asyncio.iscoroutine(res):
            res = await res
        if res:
            return res
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def typing_in(fake: FakeAppService, room_id: str, key: str = "ephemeral") -> list[list[str]]:
    return [e["content"]["user_ids"] for e in fake.ephemeral(key)
            if e["type"] == "m.typing" and e.get("room_id") == room_id]


def receipts_in(fake: FakeAppService, room_id: str, user_id: str) -> list[str]:
    """Event IDs of the user's m.read receipts in the room, in delivery order."""
    return [eid for e in fake.ephemeral() if e["type"] == "m.receipt" and e["room_id"] == room_id
            for eid, by_type in e["content"].items() if user_id in by_type.get("m.read", {})]


def presence_of(fake: FakeAppService, user_id: str) -> list[dict]:
    return [e["content"] for e in fake.ephemeral()
            if e["type"] == "m.presence" and e.get("sender") == user_id]


def bodies(fake: FakeAppService) -> list[str]:
    return [e["content"].get("body") for e in fake.events() if e["type"] == "m.room.message"]


@pytest.fixture
async def fakes():
    made: list[FakeAppService] = []

    async def make() -> FakeAppService:
        fake = FakeAppService("hs_" + secrets.token_hex(12))
        await fake.start()
        made.append(fake)
        return fake

    yield make
    for f in made:
        await f.stop()


async def test_typing_receipts_and_presence_reach_only_services_that_asked(hs_with, fakes):
    eph, unstable, plain = await fakes(), await fakes(), await fakes()
    regs = [reg(eph, "eph", "eph", receive_ephemeral=True),
            reg(unstable, "old", "old", **{"de.sorunome.msc2409.push_ephemeral": True}),
            reg(plain, "plain", "plain")]
    srv = await hs_with(*regs)
    async with Api(srv) as api:
        human = await api.register()
        room = await human.create_room(preset="public_chat")
        for r, local in zip(regs, ("eph_a", "old_a", "plain_a")):
            await as_member(api, srv, r, local, room)
        event_id = await human.send_text(room, "read me")

        r = await human.put(f"/rooms/{room}/typing/{human.user_id}",
                            {"typing": True, "timeout": 30000})
        assert r.status == 200, r
        r = await human.post(f"/rooms/{room}/receipt/m.read/{event_id}", {})
        assert r.status == 200, r
        r = await human.put(f"/presence/{human.user_id}/status",
                            {"presence": "unavailable", "status_msg": "lunch"})
        assert r.status == 200, r

        await eph.wait_for(lambda: [human.user_id] in typing_in(eph, room))
        await eph.wait_for(lambda: event_id in receipts_in(eph, room, human.user_id))
        await eph.wait_for(lambda: any(p["presence"] == "unavailable"
                                       for p in presence_of(eph, human.user_id)))
        # The spec's shape: room-scoped items carry room_id; a receipt has its timestamp.
        receipt = next(e for e in eph.ephemeral() if e["type"] == "m.receipt")
        assert receipt["room_id"] == room
        assert isinstance(receipt["content"][event_id]["m.read"][human.user_id]["ts"], int)
        status = next(p for p in presence_of(eph, human.user_id) if p["presence"] == "unavailable")
        assert status["status_msg"] == "lunch"
        # Bridges written against MSC2409 read the unstable key: the same items.
        for _txn, body in eph.bodies.items():
            assert body.get(UNSTABLE) == body.get("ephemeral")
        # A registration with only the unstable key opted in too.
        await unstable.wait_for(lambda: [human.user_id] in typing_in(unstable, room, UNSTABLE))

        r = await human.put(f"/rooms/{room}/typing/{human.user_id}", {"typing": False})
        assert r.status == 200, r
        await eph.wait_for(lambda: typing_in(eph, room)[-1:] == [[]])

        # The service that did not ask: its events arrive, ephemeral data never does (it was
        # never even queued: written in the same database transaction as eph's rows).
        await human.send_text(room, "the end")
        await plain.wait_for(lambda: "the end" in bodies(plain))
        assert "read me" in bodies(plain)
        assert all("ephemeral" not in b and UNSTABLE not in b for b in plain.bodies.values())
        assert await in_db(srv, "SELECT id FROM appservice_ephemeral WHERE appservice_id = ?",
                           ["plain"]) == []
        # A txnId always carried the same content.
        seen: dict[str, dict] = {}
        for txn_id, body in eph.attempt_bodies:
            assert seen.setdefault(txn_id, body) == body


async def test_only_rooms_and_users_the_service_cares_about(hs_with, fakes):
    eph = await fakes()
    registration = reg(eph, "eph", "eph", receive_ephemeral=True)
    srv = await hs_with(registration)
    async with Api(srv) as api:
        human, stranger = await api.register(), await api.register()
        bridged = await human.create_room(preset="public_chat")
        await as_member(api, srv, registration, "eph_a", bridged)
        elsewhere = await human.create_room()
        lonely = await stranger.create_room()
        other_event = await human.send_text(elsewhere, "not bridged")

        # In a room without the service's users, by someone sharing no room with them.
        r = await human.put(f"/rooms/{elsewhere}/typing/{human.user_id}", {"typing": True})
        assert r.status == 200, r
        r = await human.post(f"/rooms/{elsewhere}/receipt/m.read/{other_event}", {})
        assert r.status == 200, r
        r = await stranger.put(f"/presence/{stranger.user_id}/status", {"presence": "online"})
        assert r.status == 200, r
        r = await stranger.put(f"/rooms/{lonely}/typing/{stranger.user_id}", {"typing": True})
        assert r.status == 200, r
        # A private receipt never leaves the server.
        event_id = await human.send_text(bridged, "private read")
        r = await human.post(f"/rooms/{bridged}/receipt/m.read.private/{event_id}", {})
        assert r.status == 200, r
        # Then something it does care about: the data above was queued before this (one
        # writer, in order), so once this arrived anything of the above would have too.
        r = await human.put(f"/rooms/{bridged}/typing/{human.user_id}", {"typing": True})
        assert r.status == 200, r
        await eph.wait_for(lambda: [human.user_id] in typing_in(eph, bridged))

        assert typing_in(eph, elsewhere) == [] and typing_in(eph, lonely) == []
        assert receipts_in(eph, elsewhere, human.user_id) == []
        assert receipts_in(eph, bridged, human.user_id) == []
        assert presence_of(eph, stranger.user_id) == []
        # Presence of a user sharing a room with the service's users does arrive.
        r = await human.put(f"/presence/{human.user_id}/status", {"presence": "online"})
        assert r.status == 200, r
        await eph.wait_for(lambda: presence_of(eph, human.user_id))


async def test_queued_while_down_coalesced_and_kept_across_a_restart(hs_with, fakes):
    eph = await fakes()
    registration = reg(eph, "eph", "eph", receive_ephemeral=True)
    srv = await hs_with(registration)
    async with Api(srv) as api:
        human = await api.register()
        room = await human.create_room(preset="public_chat")
        await as_member(api, srv, registration, "eph_a", room)
        ids = [await human.send_text(room, f"m{i}") for i in range(5)]
        await eph.wait_for(lambda: "m4" in bodies(eph))
        await eph.stop()  # connection refused from now on

        for i, event_id in enumerate(ids):
            r = await human.put(f"/rooms/{room}/typing/{human.user_id}", {"typing": i % 2 == 0})
            assert r.status == 200, r
            r = await human.post(f"/rooms/{room}/receipt/m.read/{event_id}", {})
            assert r.status == 200, r

        async def queued():
            rows = await in_db(srv, "SELECT edu_json FROM appservice_ephemeral "
                               "WHERE appservice_id = ?", ["eph"])
            return rows if any(ids[-1] in r["edu_json"] for r in rows) else None

        # Ten changes, but at most one row for the room's typing and one for the user's
        # receipt (the first transaction to fail may have taken the first ones with it).
        rows = await until(queued)
        assert len(rows) <= 2, rows

        await srv.stop()
        await srv.start()
        eph.fail_next = 2
        await eph.start()
        await eph.wait_for(lambda: ids[-1] in receipts_in(eph, room, human.user_id), timeout=20)
        # The latest of each arrived, and last (the last change, i = 4, started typing).
        assert receipts_in(eph, room, human.user_id)[-1] == ids[-1]
        assert typing_in(eph, room)[-1] == [human.user_id]
        # Two failed attempts and the accepted one: one txnId, the same body each time.
        assert max(Counter(t for t, _b in eph.attempt_bodies).values()) >= 3
        seen: dict[str, dict] = {}
        for txn_id, body in eph.attempt_bodies:
            assert seen.setdefault(txn_id, body) == body
        assert await in_db(srv, "SELECT id FROM appservice_ephemeral WHERE appservice_id = ?",
                           ["eph"]) == []


def test_registration_accepts_receive_ephemeral(tmp_path):
    base = dict(id="x", url=None, as_token="a", hs_token="b", sender_localpart="x")
    assert not AppServiceRegistration.model_validate(base).receive_ephemeral
    assert AppServiceRegistration.model_validate({**base, "receive_ephemeral": True}) \
        .receive_ephemeral
    unstable = {**base, "de.sorunome.msc2409.push_ephemeral": True}
    assert AppServiceRegistration.model_validate(unstable).receive_ephemeral
    # The stable key wins when both are given.
    assert not AppServiceRegistration.model_validate(
        {**unstable, "receive_ephemeral": False}).receive_ephemeral
    out = nexa("appservice", "new", "--id", "x", "--url", "http://127.0.0.1:9",
               "--sender-localpart", "bot", "--receive-ephemeral", "--protocol", "irc",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    assert data["receive_ephemeral"] is True and data["protocols"] == ["irc"]
    assert AppServiceRegistration.model_validate(data).receive_ephemeral
