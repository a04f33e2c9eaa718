"""Forged federation input is refused, and refusing it changes nothing.

One real Nexa server (the victim) and two fake remote servers (tests/federation/fake_server.py)
that publish real signing keys, join rooms through the real make_join/send_join API, and then
send hand-crafted PDUs and requests. Outcomes are checked where they matter: in the per-PDU
results of /send and in what the victim's own clients see (/messages, /sync, /event, /state).
The victim handles /send synchronously, so once a PUT returns its effects are final.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass
from typing import Any

import pytest

from homeserver.events.canonical import canonical_json, decode_b64, encode_b64
from homeserver.events.hashing import add_content_hash, compute_event_id
from homeserver.events.room_versions import RoomVersion
from homeserver.events.signing import SigningKey, sign_event
from tests.client import Api, User, by_state_key
from tests.federation.fake_server import FakeServer, path, xmatrix
from tests.servers import RunningServer, start_server

FED = {"plain_http": True, "allow": ["localhost:*", "127.0.0.1:*"],
       "retry_base_ms": 50, "retry_max_ms": 1000}


@dataclass
class Env:
    victim: RunningServer
    api: Api
    fake: FakeServer
    other: FakeServer  # a second remote server, for events claiming to come from elsewhere


@pytest.fixture(scope="module")
async def env(backend, tmp_path_factory):
    fake, other = FakeServer(), FakeServer()
    victim: RunningServer | None = None
    await fake.start()
    try:
        await other.start()
        victim = await start_server(tmp_path_factory.mktemp("victim"), backend, federation=FED)
        async with Api(victim) as api:
            yield Env(victim, api, fake, other)
    finally:
        if victim is not None:
            await victim.destroy()
        await other.stop()
        await fake.stop()


def txn() -> str:
    return "t" + secrets.token_hex(8)


def text(body: str) -> dict:
    return {"msgtype": "m.text", "body": body}


class Room:
    """A public room on the victim, created by a local admin, with the fake's user joined."""

    def __init__(self, env: Env, admin: User, room_id: str) -> None:
        self.env = env
        self.admin = admin
        self.room_id = room_id
        self.alice = env.fake.user("alice")
        self.alice_join = ""
        self.version: RoomVersion | None = None

    # --- what the victim's clients see -----------------------------------------------------

    async def state(self) -> dict[tuple[str, str], dict]:
        r = await self.admin.get(f"/rooms/{self.room_id}/state")
        assert r.status == 200, r
        return by_state_key(r.json)

    async def state_content(self, type_: str, state_key: str = "") -> Any:
        r = await self.admin.get(f"/rooms/{self.room_id}/state/{type_}/{state_key}")
        return r.json if r.status == 200 else None

    async def messages(self) -> list[dict]:
        r = await self.admin.get(f"/rooms/{self.room_id}/messages",
                                 params={"dir": "b", "limit": "200"})
        assert r.status == 200, r
        return r.json["chunk"]

    async def bodies(self) -> list[str]:
        return [e["content"].get("body") for e in await self.messages()
                if e["type"] == "m.room.message"]

    async def sync_token(self) -> str:
        return (await self.admin.sync())["next_batch"]

    async def timeline_since(self, since: str) -> list[dict]:
        res = await self.admin.sync(since)
        room = res["rooms"]["join"].get(self.room_id)
        return room["timeline"]["events"] if room else []

    async def client_event(self, event_id: str):
        return await self.admin.get(f"/rooms/{self.room_id}/event/{event_id}")

    async def assert_seen(self, since: str, event_id: str, body: str | None = None) -> dict:
        ev = await self.client_event(event_id)
        assert ev.status == 200, ev
        assert event_id in [e["event_id"] for e in await self.messages()]
        assert event_id in [e["event_id"] for e in await self.timeline_since(since)]
        if body is not None:
            assert ev.json["content"].get("body") == body
        return ev.json

    async def assert_unseen(self, since: str, event_id: str, *bodies: str,
                            by_id: bool = True) -> None:
        """Neither the event nor any of the bodies reaches a client: not in /messages, not in
        /sync since `since`, and (by_id) not by its ID through /event or /context."""
        chunk = await self.messages()
        assert event_id not in [e["event_id"] for e in chunk]
        timeline = await self.timeline_since(since)
        assert event_id not in [e["event_id"] for e in timeline]
        seen_bodies = {e["content"].get("body") for e in chunk + timeline}
        for body in bodies:
            assert body not in seen_bodies
        if by_id:
            await self.assert_not_served_by_id(event_id)

    async def assert_not_served_by_id(self, event_id: str) -> None:
        r = await self.client_event(event_id)
        assert r.status == 404, r
        r = await self.admin.get(f"/rooms/{self.room_id}/context/{event_id}")
        assert r.status == 404, r

    # --- crafting events as the fake -------------------------------------------------------

    async def head(self) -> tuple[list[str], int]:
        """The newest event (the forward extremity: tests never fork the room) and its depth."""
        newest = (await self.messages())[0]["event_id"]
        pdu = await self.env.fake.get_pdu(self.env.victim, newest)
        return [newest], pdu["depth"]

    async def auth_for(self, sender: str, type_: str, state_key: str | None = None) -> list[str]:
        """The auth events the victim's current state gives such an event."""
        state = await self.state()
        keys = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", sender)]
        if type_ == "m.room.member":
            keys += [("m.room.member", state_key), ("m.room.join_rules", "")]
        return sorted({state[k]["event_id"] for k in keys if k in state})

    async def event(self, sender: str, type_: str, content: dict, state_key: str | None = None,
                    *, server: FakeServer | None = None, auth_events: list[str] | None = None,
                    prev: tuple[list[str], int] | None = None,
                    key: SigningKey | None = None) -> tuple[dict, str]:
        """A well-formed PDU signed by `server` (the fake by default), current prev/auth."""
        server = server or self.env.fake
        prev_events, depth = prev or await self.head()
        if auth_events is None:
            auth_events = await self.auth_for(sender, type_, state_key)
        return server.build_event(self.version, room_id=self.room_id, sender=sender,
                                  type=type_, content=content, state_key=state_key,
                                  prev_events=prev_events, auth_events=auth_events,
                                  depth=depth + 1, key=key)

    async def send(self, *pdus: dict, txn_id: str | None = None) -> dict:
        """One transaction from the fake, correctly signed; the per-PDU results."""
        r = await self.env.fake.send_transaction(self.env.victim, txn_id or txn(), list(pdus))
        assert r.status == 200, r
        return r.json["pdus"]

    # --- local admin actions ---------------------------------------------------------------

    async def set_power(self, user_id: str, level: int, *,
                        power_levels_level: int | None = None) -> str:
        """The admin sets a user's power (and, optionally, the power to change power levels)."""
        pl = copy.deepcopy(await self.state_content("m.room.power_levels"))
        pl["users"][user_id] = level
        if power_levels_level is not None:
            pl.setdefault("events", {})["m.room.power_levels"] = power_levels_level
        r = await self.admin.put(f"/rooms/{self.room_id}/state/m.room.power_levels/", pl)
        assert r.status == 200, r
        return r.json["event_id"]


@pytest.fixture
async def room(env):
    admin = await env.api.register()
    room_id = await admin.create_room(preset="public_chat", name="forgery target")
    room = Room(env, admin, room_id)
    room.alice_join, room.version = await env.fake.join(env.victim, room_id, room.alice)
    assert (await room.state_content("m.room.member", room.alice))["membership"] == "join"
    return room


def assert_rejected(results: dict, event_id: str, *why: str) -> None:
    assert event_id in results, results
    error = results[event_id].get("error")
    assert error, results
    assert any(w in error.lower() for w in why), error


# --- the control case ---------------------------------------------------------------------------

async def test_valid_event_from_a_joined_remote_user_is_accepted(room):
    since = await room.sync_token()
    pdu, eid = await room.event(room.alice, "m.room.message", text("hello, genuinely"))
    assert await room.send(pdu) == {eid: {}}
    ev = await room.assert_seen(since, eid, "hello, genuinely")
    assert ev["sender"] == room.alice


# --- signatures ---------------------------------------------------------------------------------

def _alter_signature(pdu: dict, server: str) -> dict:
    forged = copy.deepcopy(pdu)
    sigs = forged["signatures"][server]
    key_id = next(iter(sigs))
    raw = bytearray(decode_b64(sigs[key_id]))
    raw[0] ^= 0x01
    sigs[key_id] = encode_b64(bytes(raw))
    return forged


@pytest.mark.parametrize("forgery", ["altered_bytes", "other_key_same_id", "unknown_key_id",
                                     "unsigned"])
async def test_event_with_a_bad_signature_is_rejected(room, forgery):
    fake = room.env.fake
    body = f"bad signature: {forgery}"
    if forgery == "altered_bytes":
        pdu, eid = await room.event(room.alice, "m.room.message", text(body))
        pdu = _alter_signature(pdu, fake.server_name)
    elif forgery == "other_key_same_id":
        impostor = SigningKey.generate(version=fake.key.version)
        pdu, eid = await room.event(room.alice, "m.room.message", text(body), key=impostor)
    elif forgery == "unknown_key_id":
        pdu, eid = await room.event(room.alice, "m.room.message", text(body),
                                    key=SigningKey.generate(version="nope"))
    else:
        pdu, eid = await room.event(room.alice, "m.room.message", text(body))
        pdu = {**pdu, "signatures": {}}
    assert compute_event_id(pdu, room.version) == eid
    since = await room.sync_token()
    assert_rejected(await room.send(pdu), eid, "signature", "signed")
    await room.assert_unseen(since, eid, body)


async def test_forged_copy_does_not_block_the_genuine_event(room):
    """Signatures are not part of the event ID: a copy with a broken signature has the genuine
    event's ID. Refusing the copy must not make the victim refuse the genuine event later."""
    genuine, eid = await room.event(room.alice, "m.room.message", text("the genuine one"))
    forged = _alter_signature(genuine, room.env.fake.server_name)
    since = await room.sync_token()
    assert_rejected(await room.send(forged), eid, "signature")
    await room.assert_unseen(since, eid, "the genuine one")
    assert await room.send(genuine) == {eid: {}}
    await room.assert_seen(since, eid, "the genuine one")


# --- content hashes -----------------------------------------------------------------------------

async def test_event_with_a_wrong_content_hash_is_kept_only_redacted(room):
    """The body is not covered by the (redacted-form) signature but is by the content hash:
    an event altered in transit still verifies, fails its hash, and per the spec is stored
    redacted — so the altered body never reaches a client."""
    pdu, eid = await room.event(room.alice, "m.room.message", text("what alice wrote"))
    forged = copy.deepcopy(pdu)
    forged["content"]["body"] = "words put in alice's mouth"
    assert compute_event_id(forged, room.version) == eid  # same ID, same valid signature
    since = await room.sync_token()
    assert await room.send(forged) == {eid: {}}
    ev = await room.assert_seen(since, eid)
    assert ev["content"] == {}
    bodies = await room.bodies()
    assert "words put in alice's mouth" not in bodies and "what alice wrote" not in bodies
    timeline = await room.timeline_since(since)
    assert all(e["content"] == {} for e in timeline if e["event_id"] == eid)


# --- origin and sender ----------------------------------------------------------------------------

async def test_event_for_a_local_user_signed_by_another_server_is_rejected(room):
    """The fake claims the room's admin (a user of the victim itself) raised alice to 100."""
    admin = room.admin.user_id
    pl_before = await room.state_content("m.room.power_levels")
    pl = copy.deepcopy(pl_before)
    pl["users"][room.alice] = 100
    since = await room.sync_token()
    pdu, eid = await room.event(admin, "m.room.power_levels", pl, "")
    assert_rejected(await room.send(pdu), eid, "signature", "signed")
    msg, msg_id = await room.event(admin, "m.room.message", text("admin never said this"))
    assert_rejected(await room.send(msg), msg_id, "signature", "signed")
    assert await room.state_content("m.room.power_levels") == pl_before
    await room.assert_unseen(since, eid)
    await room.assert_unseen(since, msg_id, "admin never said this")


@pytest.mark.parametrize("forgery", ["signed_by_origin_only", "origin_key_under_senders_name"])
async def test_event_for_a_user_of_a_third_server_needs_that_servers_signature(room, forgery):
    """`other` is a real (fake) server whose user bob is joined; the fake relays an event as
    bob's that `other` never signed."""
    env = room.env
    bob = env.other.user("bob")
    await env.other.join(env.victim, room.room_id, bob)
    body = f"bob never said this ({forgery})"
    if forgery == "signed_by_origin_only":
        pdu, eid = await room.event(bob, "m.room.message", text(body))
    else:
        # The fake's own private key, presented as `other`'s key ID under `other`'s name.
        masquerade = SigningKey.from_seed(env.fake.key.seed, env.other.key.version)
        pdu, eid = await room.event(bob, "m.room.message", text(body), server=env.other,
                                    key=masquerade)
    since = await room.sync_token()
    assert_rejected(await room.send(pdu), eid, "signature", "signed")
    await room.assert_unseen(since, eid, body)
    # Control: what bob's own server really signs is accepted, even relayed by the fake.
    real, real_id = await room.event(bob, "m.room.message", text("bob said this"),
                                     server=env.other)
    assert await room.send(real) == {real_id: {}}
    await room.assert_seen(since, real_id, "bob said this")


# --- auth rules -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cites", ["no_membership", "someone_elses_membership"])
async def test_non_member_cannot_post(room, cites):
    mallory = room.env.fake.user("mallory")  # on the fake's server, but never joined
    auth = await room.auth_for(mallory, "m.room.message")
    if cites == "someone_elses_membership":
        auth = sorted({*auth, room.alice_join})
    body = f"mallory was never here ({cites})"
    pdu, eid = await room.event(mallory, "m.room.message", text(body), auth_events=auth)
    since = await room.sync_token()
    assert_rejected(await room.send(pdu), eid, "auth")
    await room.assert_unseen(since, eid, body)
    assert await room.state_content("m.room.member", mallory) is None


@pytest.mark.parametrize("case", ["raise_self_from_0", "raise_self_from_50",
                                  "demote_admin_from_50"])
async def test_user_cannot_raise_own_power_or_demote_a_higher_user(room, case):
    """From 0, alice may not send power levels at all. From 50, with power levels editable at
    50, she may change them — but not raise herself above 50 or lower the admin's 100."""
    if case.endswith("_50"):
        await room.set_power(room.alice, 50, power_levels_level=50)
    pl_before = await room.state_content("m.room.power_levels")
    pl = copy.deepcopy(pl_before)
    if case.startswith("raise_self"):
        pl["users"][room.alice] = 100
    else:
        pl["users"][room.admin.user_id] = 0
    since = await room.sync_token()
    pdu, eid = await room.event(room.alice, "m.room.power_levels", pl, "")
    assert_rejected(await room.send(pdu), eid, "auth")
    assert await room.state_content("m.room.power_levels") == pl_before
    await room.assert_unseen(since, eid)
    if case.endswith("_50"):
        # Control: the same user and auth events, a change within her power: accepted.
        carol = room.env.fake.user("carol")
        allowed = copy.deepcopy(pl_before)
        allowed["users"][carol] = 50
        ok, ok_id = await room.event(room.alice, "m.room.power_levels", allowed, "")
        assert await room.send(ok) == {ok_id: {}}
        assert await room.state_content("m.room.power_levels") == allowed


async def test_event_citing_stale_auth_events_fails_against_the_state_before_it(room):
    """Alice had power 50 and lost it. An event citing the old power levels passes auth against
    its own auth events but not against the room state at its position: rejected."""
    old_pl = await room.set_power(room.alice, 50)
    await room.set_power(room.alice, 0)
    state = await room.state()
    auth = sorted([state[("m.room.create", "")]["event_id"], old_pl, room.alice_join])
    since = await room.sync_token()
    pdu, eid = await room.event(room.alice, "m.room.topic", {"topic": "stale power"}, "",
                                auth_events=auth)
    assert_rejected(await room.send(pdu), eid, "auth")
    assert await room.state_content("m.room.topic") is None
    await room.assert_unseen(since, eid)


@pytest.mark.parametrize("selection", ["two_power_levels_events", "unexpected_auth_event"])
async def test_event_citing_a_wrong_selection_of_auth_events_is_rejected(room, selection):
    """Auth rule 2: an event is rejected if it cites two auth events of one type and state key,
    or one that the auth events selection does not call for. Both citations here would allow
    the event on their own, so only rule 2 can refuse it."""
    first_pl = await room.set_power(room.alice, 50)
    state = await room.state()
    create = state[("m.room.create", "")]["event_id"]
    current_pl = await room.set_power(room.admin.user_id, 100)  # a second PL, same powers
    if selection == "two_power_levels_events":
        auth = [create, first_pl, current_pl, room.alice_join]
    else:
        auth = [create, current_pl, room.alice_join,
                state[("m.room.join_rules", "")]["event_id"]]
    since = await room.sync_token()
    pdu, eid = await room.event(room.alice, "m.room.topic", {"topic": selection}, "",
                                auth_events=auth)
    assert_rejected(await room.send(pdu), eid, "auth")
    assert await room.state_content("m.room.topic") is None
    await room.assert_unseen(since, eid)


async def _send_soft_failing_events(room: Room) -> tuple[str, str, str]:
    """Alice is banned, but her server sends events placed before the ban in the DAG: they pass
    auth against their auth events and at their position, and fail only against the current
    state. Returns (sync token from before they were sent, message ID, re-join ID)."""
    before_ban = await room.head()
    r = await room.admin.post(f"/rooms/{room.room_id}/ban", {"user_id": room.alice})
    assert r.status == 200, r
    since = await room.sync_token()
    state = await room.state()
    create = state[("m.room.create", "")]["event_id"]
    power = state[("m.room.power_levels", "")]["event_id"]
    msg, msg_id = await room.event(room.alice, "m.room.message", text("said while banned"),
                                   auth_events=sorted([create, power, room.alice_join]),
                                   prev=before_ban)
    results = await room.send(msg)
    assert "error" not in results.get(msg_id, {}), results  # soft-failed, not rejected
    # A re-join placed before the ban: applied, it would lift the ban.
    join_rules = state[("m.room.join_rules", "")]["event_id"]
    join, join_id = await room.event(
        room.alice, "m.room.member", {"membership": "join"}, room.alice, prev=before_ban,
        auth_events=sorted([create, power, join_rules, room.alice_join]))
    results = await room.send(join)
    assert "error" not in results.get(join_id, {}), results
    return since, msg_id, join_id


async def test_event_failing_only_against_current_state_is_soft_failed_never_applied(room):
    """Soft-failed events are stored but never shown, never current state, never built upon."""
    since, msg_id, join_id = await _send_soft_failing_events(room)
    await room.assert_unseen(since, msg_id, "said while banned", by_id=False)
    await room.assert_unseen(since, join_id, by_id=False)
    assert (await room.state_content("m.room.member", room.alice))["membership"] == "ban"
    r = await room.admin.get(f"/rooms/{room.room_id}/joined_members")
    assert room.alice not in r.json["joined"]

    new_id = await room.admin.send_text(room.room_id, "after the attempt")
    new_pdu = await room.env.fake.get_pdu(room.env.victim, new_id)
    assert not {msg_id, join_id} & set(new_pdu["prev_events"])


async def test_soft_failed_event_is_not_served_by_id(room):
    since, msg_id, join_id = await _send_soft_failing_events(room)
    await room.assert_not_served_by_id(msg_id)
    await room.assert_not_served_by_id(join_id)


# --- transaction authentication -------------------------------------------------------------------

@pytest.mark.parametrize("forgery", ["unknown_key_id", "other_key_same_id"])
async def test_transaction_signed_by_an_unknown_key_is_refused(room, forgery):
    env = room.env
    fake, victim = env.fake, env.victim
    pdu, eid = await room.event(room.alice, "m.room.message", text(f"unauthorised {forgery}"))
    txn_id = txn()
    body = {"origin": fake.server_name, "origin_server_ts": 1, "pdus": [pdu], "edus": []}
    uri = path("/_matrix/federation/v1/send/{}", txn_id)
    key = SigningKey.generate(version="nope" if forgery == "unknown_key_id" else fake.key.version)
    sig = fake.sign_request(victim.server_name, "PUT", uri, body, key=key)
    since = await room.sync_token()
    r = await fake.request(victim, "PUT", uri, body,
                           authorization=xmatrix(fake.server_name, victim.server_name,
                                                 key.key_id, sig))
    assert r.status == 401 and r.json["errcode"] == "M_UNAUTHORIZED", r
    await room.assert_unseen(since, eid, f"unauthorised {forgery}")
    await _assert_txn_not_recorded(room, txn_id, since, eid)


async def _assert_txn_not_recorded(room: Room, txn_id: str, since: str, refused_id: str) -> None:
    """The refused request left no trace: the same txnId, now properly signed with another
    PDU, is processed afresh (a recorded transaction would answer with its stored result)."""
    pdu, eid = await room.event(room.alice, "m.room.message", text(f"proper {txn_id}"))
    assert await room.send(pdu, txn_id=txn_id) == {eid: {}}
    await room.assert_seen(since, eid, f"proper {txn_id}")
    assert refused_id not in [e["event_id"] for e in await room.messages()]


async def test_replayed_transaction_returns_the_stored_result_and_applies_nothing_new(room):
    fake, victim = room.env.fake, room.env.victim
    txn_id = txn()
    first, first_id = await room.event(room.alice, "m.room.message", text("first delivery"))
    r1 = await fake.send_transaction(victim, txn_id, [first])
    assert r1.status == 200 and r1.json == {"pdus": {first_id: {}}}, r1
    since = await room.sync_token()

    # Same origin and txnId, different content: the stored answer, and nothing applied.
    second, second_id = await room.event(room.alice, "m.room.message", text("smuggled in"))
    r2 = await fake.send_transaction(victim, txn_id, [second])
    assert r2.status == 200 and r2.json == r1.json, r2
    await room.assert_unseen(since, second_id, "smuggled in")

    # An exact replay: the same answer, and the message is still there once.
    r3 = await fake.send_transaction(victim, txn_id, [first])
    assert r3.status == 200 and r3.json == r1.json, r3
    assert (await room.bodies()).count("first delivery") == 1


REQUEST_FORGERIES = [
    "no_header", "bearer_token", "wrong_destination", "signed_for_another_destination",
    "body_changed_after_signing", "signed_for_another_uri", "signed_for_another_method",
    "impersonates_another_server", "claims_to_be_the_victim", "garbage_signature",
]


@pytest.mark.parametrize("forgery", REQUEST_FORGERIES)
async def test_unsigned_wrongly_signed_or_misaddressed_transaction_gets_401(room, forgery):
    env = room.env
    fake, other, victim = env.fake, env.other, env.victim
    body_text = f"refused request: {forgery}"
    pdu, eid = await room.event(room.alice, "m.room.message", text(body_text))
    txn_id = txn()
    uri = path("/_matrix/federation/v1/send/{}", txn_id)
    body = {"origin": fake.server_name, "origin_server_ts": 1, "pdus": [pdu], "edus": []}
    me, dest, kid = fake.server_name, victim.server_name, fake.key.key_id
    raw = None
    if forgery == "no_header":
        auth: Any = False
    elif forgery == "bearer_token":
        auth = "Bearer " + secrets.token_hex(16)
    elif forgery == "wrong_destination":
        auth = xmatrix(me, other.server_name, kid,
                       fake.sign_request(other.server_name, "PUT", uri, body))
    elif forgery == "signed_for_another_destination":
        auth = xmatrix(me, dest, kid, fake.sign_request(other.server_name, "PUT", uri, body))
    elif forgery == "body_changed_after_signing":
        auth = fake.auth_header(dest, "PUT", uri, body)
        changed, _ = await room.event(room.alice, "m.room.message", text("changed"))
        raw = canonical_json({**body, "pdus": [changed]})
    elif forgery == "signed_for_another_uri":
        auth = fake.auth_header(dest, "PUT", path("/_matrix/federation/v1/send/{}", txn()), body)
    elif forgery == "signed_for_another_method":
        auth = fake.auth_header(dest, "POST", uri, body)
    elif forgery == "impersonates_another_server":
        # Claims to be `other`, with other's key ID, but the fake's own key made the signature.
        key = SigningKey.from_seed(fake.key.seed, other.key.version)
        auth = xmatrix(other.server_name, dest, key.key_id,
                       fake.sign_request(dest, "PUT", uri, body, key=key,
                                         origin=other.server_name))
        body = {**body, "origin": other.server_name}
    elif forgery == "claims_to_be_the_victim":
        auth = xmatrix(dest, dest, kid, fake.sign_request(dest, "PUT", uri, body, origin=dest))
        body = {**body, "origin": dest}
    else:
        auth = xmatrix(me, dest, kid, encode_b64(secrets.token_bytes(64)))
    since = await room.sync_token()
    r = await fake.request(victim, "PUT", uri, body, authorization=auth, raw=raw)
    assert r.status == 401 and r.json["errcode"] == "M_UNAUTHORIZED", r
    await room.assert_unseen(since, eid, body_text)
    await _assert_txn_not_recorded(room, txn_id, since, eid)


# --- joins ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("forgery", ["unsigned_request", "misaddressed_request",
                                     "bad_event_signature", "user_of_another_server"])
async def test_forged_join_changes_nothing(room, forgery):
    env = room.env
    fake, other, victim = env.fake, env.other, env.victim
    user = fake.user("joiner")
    pdu, eid, version = await fake.make_join_event(victim, room.room_id, user)
    auth: Any = True
    if forgery == "unsigned_request":
        auth = False
    elif forgery == "bad_event_signature":
        pdu = _alter_signature(pdu, fake.server_name)
    elif forgery == "user_of_another_server":
        user = other.user("joiner")
        pdu = {k: v for k, v in pdu.items() if k not in ("hashes", "signatures")}
        pdu.update(sender=user, state_key=user)
        pdu = sign_event(add_content_hash(pdu), fake.server_name, fake.key, version)
        eid = compute_event_id(pdu, version)
    uri = path("/_matrix/federation/v2/send_join/{}/{}", room.room_id, eid)
    if forgery == "misaddressed_request":
        auth = xmatrix(fake.server_name, other.server_name, fake.key.key_id,
                       fake.sign_request(other.server_name, "PUT", uri, pdu))
    since = await room.sync_token()
    r = await fake.request(victim, "PUT", uri, pdu, authorization=auth)
    expected = 401 if forgery.endswith("_request") else 403
    assert r.status == expected, r
    assert await room.state_content("m.room.member", user) is None
    r = await room.admin.get(f"/rooms/{room.room_id}/joined_members")
    assert user not in r.json["joined"]
    await room.assert_unseen(since, eid)


# --- EDUs ----------------------------------------------------------------------------------------

async def test_edus_speaking_for_users_of_other_servers_are_ignored(room):
    """A server may speak only for its own users: typing notices and read receipts the fake
    sends for the victim's admin or for `other`'s user bob change nothing; alice's do."""
    env = room.env
    bob = env.other.user("bob")
    await env.other.join(env.victim, room.room_id, bob)
    target = await room.admin.send_text(room.room_id, "read me")
    since = await room.sync_token()

    def typing(user_id: str) -> dict:
        return {"edu_type": "m.typing",
                "content": {"room_id": room.room_id, "user_id": user_id, "typing": True}}

    def receipt(user_id: str) -> dict:
        return {"edu_type": "m.receipt", "content": {room.room_id: {"m.read": {
            user_id: {"event_ids": [target], "data": {"ts": 1}}}}}}

    forged = [typing(bob), typing(room.admin.user_id), receipt(bob)]
    r = await env.fake.send_transaction(env.victim, txn(), [], forged)
    assert r.status == 200, r
    r = await env.fake.send_transaction(env.victim, txn(), [],
                                        [typing(room.alice), receipt(room.alice)])
    assert r.status == 200, r

    res = await room.admin.sync(since)
    ephemeral = res["rooms"]["join"][room.room_id]["ephemeral"]["events"]
    typers = {u for e in ephemeral if e["type"] == "m.typing" for u in e["content"]["user_ids"]}
    readers = {u for e in ephemeral if e["type"] == "m.receipt"
               for by_type in e["content"].values() for u in by_type.get("m.read", {})}
    assert typers == {room.alice}
    assert readers == {room.alice}
