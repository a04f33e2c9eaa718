"""End-to-end encryption API: key upload/query/claim, cross-signing, to-device, device lists in
/sync and /keys/changes, key backup — and bad input answered with clear errors, storing nothing.

Keys are made here with `cryptography` and signed over canonical JSON (the spec's "Signing
JSON"), independently of the server's own code."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from typing import Iterator

import canonicaljson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.client import User


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


class SigningKey:
    def __init__(self) -> None:
        self.sk = Ed25519PrivateKey.generate()
        self.pub = b64(self.sk.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw))

    def sign(self, obj: dict, user_id: str, key_id: str) -> dict:
        signable = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
        sig = b64(self.sk.sign(canonicaljson.encode_canonical_json(signable)))
        out = dict(obj)
        sigs = {u: dict(v) for u, v in (obj.get("signatures") or {}).items()}
        sigs.setdefault(user_id, {})[key_id] = sig
        out["signatures"] = sigs
        return out


class Device:
    """A fake client device: its ed25519 identity key signs what it uploads."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.key = SigningKey()
        self.curve = b64(secrets.token_bytes(32))
        self.n = 0

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.user.device_id}"

    def device_keys(self) -> dict:
        return self.key.sign({
            "user_id": self.user.user_id, "device_id": self.user.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"curve25519:{self.user.device_id}": self.curve,
                     self.key_id: self.key.pub},
        }, self.user.user_id, self.key_id)

    def otks(self, n: int) -> dict:
        out = {}
        for _ in range(n):
            self.n += 1
            out[f"signed_curve25519:K{self.n:04d}"] = self.key.sign(
                {"key": b64(secrets.token_bytes(32))}, self.user.user_id, self.key_id)
        return out

    def fallback(self, name: str = "FB1") -> dict:
        return {f"signed_curve25519:{name}": self.key.sign(
            {"key": b64(secrets.token_bytes(32)), "fallback": True}, self.user.user_id,
            self.key_id)}

    async def upload(self, otks: int = 0, **extra) -> dict:
        body = {"device_keys": self.device_keys(), **extra}
        if otks:
            body["one_time_keys"] = self.otks(otks)
        r = await self.user.post("/keys/upload", body)
        assert r.status == 200, r
        return r.json


async def query(user: User, *targets: str) -> dict:
    r = await user.post("/keys/query", {"device_keys": {t: [] for t in targets}})
    assert r.status == 200, r
    return r.json


async def claim(user: User, target: User, algorithm: str = "signed_curve25519") -> dict:
    r = await user.post("/keys/claim", {
        "one_time_keys": {target.user_id: {target.device_id: algorithm}}})
    assert r.status == 200, r
    return r.json["one_time_keys"].get(target.user_id, {}).get(target.device_id, {})


# --- upload and query ------------------------------------------------------------------------

async def test_upload_query_and_counts(api):
    alice, bob = await api.register(), await api.register()
    dev = Device(alice)
    res = await dev.upload(otks=5)
    assert res["one_time_key_counts"]["signed_curve25519"] == 5
    got = await query(bob, alice.user_id)
    keys = got["device_keys"][alice.user_id][alice.device_id]
    assert keys["keys"][dev.key_id] == dev.key.pub
    assert keys["signatures"][alice.user_id][dev.key_id] == \
        dev.device_keys()["signatures"][alice.user_id][dev.key_id]
    assert "unsigned" not in keys  # no display name set
    r = await alice.put(f"/devices/{alice.device_id}", {"display_name": "Alice's phone"})
    assert r.status == 200
    keys = (await query(bob, alice.user_id))["device_keys"][alice.user_id][alice.device_id]
    assert keys["unsigned"] == {"device_display_name": "Alice's phone"}
    # Only the devices asked for.
    r = await bob.post("/keys/query", {"device_keys": {alice.user_id: ["NOPE"]}})
    assert r.status == 200 and r.json["device_keys"][alice.user_id] == {}
    # /sync reports the count to the device itself.
    s = await alice.sync()
    assert s["device_one_time_keys_count"]["signed_curve25519"] == 5
    assert s["device_unused_fallback_key_types"] == []
    # Uploading the same keys again changes nothing; more keys add up.
    r = await alice.post("/keys/upload", {"device_keys": dev.device_keys()})
    assert r.status == 200 and r.json["one_time_key_counts"]["signed_curve25519"] == 5
    r = await alice.post("/keys/upload", {"one_time_keys": dev.otks(3)})
    assert r.status == 200 and r.json["one_time_key_counts"]["signed_curve25519"] == 8


async def test_device_cannot_upload_keys_for_another_device_or_user(api):
    alice, bob = await api.register(), await api.register()
    dev = Device(alice)
    other = dict(dev.device_keys(), device_id="SOMEONEELSE")
    r = await alice.post("/keys/upload", {"device_keys": dev.key.sign(
        {k: v for k, v in other.items() if k != "signatures"}, alice.user_id, dev.key_id),
        "one_time_keys": dev.otks(2)})
    assert r.status == 400 and r.json["errcode"] == "M_INVALID_PARAM", r
    r = await bob.post("/keys/upload", {"device_keys": dev.device_keys()})
    assert r.status == 400 and r.json["errcode"] == "M_INVALID_PARAM", r
    got = await query(bob, alice.user_id, bob.user_id)
    assert got["device_keys"] == {alice.user_id: {}, bob.user_id: {}}
    assert (await alice.sync())["device_one_time_keys_count"]["signed_curve25519"] == 0


async def test_bad_signatures_are_refused_and_nothing_is_stored(api):
    alice = await api.register()
    dev = Device(alice)
    forged = dev.device_keys()
    forged["keys"][f"curve25519:{alice.device_id}"] = b64(secrets.token_bytes(32))
    r = await alice.post("/keys/upload", {"device_keys": forged, "one_time_keys": dev.otks(2)})
    assert r.status == 400 and r.json["errcode"] == "M_INVALID_SIGNATURE", r
    # Signed by some other key than the device's own.
    stranger = SigningKey()
    unsigned = {k: v for k, v in dev.device_keys().items() if k != "signatures"}
    r = await alice.post("/keys/upload", {
        "device_keys": stranger.sign(unsigned, alice.user_id, dev.key_id)})
    assert r.status == 400 and r.json["errcode"] == "M_INVALID_SIGNATURE", r
    assert (await query(alice, alice.user_id))["device_keys"][alice.user_id] == {}
    # A one-time key signed by someone else, next to valid device keys: all refused.
    bad_otk = {"signed_curve25519:X1": stranger.sign({"key": "abc"}, alice.user_id,
                                                     dev.key_id)}
    r = await alice.post("/keys/upload", {"device_keys": dev.device_keys(),
                                          "one_time_keys": {**dev.otks(1), **bad_otk}})
    assert r.status == 400 and r.json["errcode"] == "M_INVALID_SIGNATURE", r
    assert (await query(alice, alice.user_id))["device_keys"][alice.user_id] == {}
    assert (await alice.sync())["device_one_time_keys_count"]["signed_curve25519"] == 0


@pytest.mark.parametrize("body", [
    {"device_keys": "nope"},
    {"device_keys": {"user_id": "@x:y"}},
    {"one_time_keys": []},
    {"one_time_keys": {"no_colon": "abc"}},
    {"one_time_keys": {"curve25519:": "abc"}},
    {"one_time_keys": {"curve25519:A": 5}},
    {"one_time_keys": {"signed_curve25519:A": {"key": "abc"}}},
    {"one_time_keys": {"curve25519:A": {"key": 1.5, "signatures": {}}}},
    {"fallback_keys": {"curve25519:A": ["x"]}},
    {"one_time_keys": {"signed_curve25519:A": {"key": "abc", "signatures": {}, "x": 1.5}}},
    {"one_time_keys": {"curve25519:A": "k", "curve25519:B": {"key": "k", "signatures": []}}},
])
async def test_malformed_uploads(api, body):
    alice = await api.register()
    r = await alice.post("/keys/upload", body)
    assert r.status == 400 and r.json["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), r
    assert (await alice.sync())["device_one_time_keys_count"] == {"signed_curve25519": 0,
                                                                   "curve25519": 0}


async def test_upload_limits_and_conflicts(api):
    alice = await api.register()
    dev = Device(alice)
    await dev.upload()
    too_many = {f"curve25519:K{i}": "abc" for i in range(1001)}
    r = await alice.post("/keys/upload", {"one_time_keys": too_many})
    assert r.status == 413 and r.json["errcode"] == "M_TOO_LARGE", r
    r = await alice.post("/keys/upload", {"one_time_keys": {"curve25519:A": "one"}})
    assert r.status == 200
    # The same key ID with a different key: refused (the old one may already be in use).
    r = await alice.post("/keys/upload", {"one_time_keys": {"curve25519:A": "two",
                                                            "curve25519:B": "three"}})
    assert r.status == 400 and r.json["errcode"] == "M_INVALID_PARAM", r
    r = await alice.post("/keys/upload", {"one_time_keys": {"curve25519:A": "one"}})
    assert r.status == 200 and r.json["one_time_key_counts"]["curve25519"] == 1
    # At most one fallback key per algorithm.
    two = {**dev.fallback("F1"), **dev.fallback("F2")}
    r = await alice.post("/keys/upload", {"fallback_keys": two})
    assert r.status == 400, r
    r = await alice.post("/keys/upload", {})
    assert r.status == 200
    r = await api.request("POST", "/keys/upload", {"device_keys": dev.device_keys()},
                          token="nope")
    assert r.status == 401


# --- claim -----------------------------------------------------------------------------------

async def test_one_time_keys_are_handed_out_once_then_the_fallback(api):
    alice, bob = await api.register(), await api.register()
    dev = Device(alice)
    uploaded = dev.otks(3)
    await dev.upload(one_time_keys=uploaded, fallback_keys=dev.fallback())
    seen = []
    for _ in range(3):
        got = await claim(bob, alice)
        assert len(got) == 1
        (key_id, key), = got.items()
        assert key == uploaded[key_id]
        seen.append(key_id)
    assert len(set(seen)) == 3  # never the same key twice
    s = await alice.sync()
    assert s["device_one_time_keys_count"]["signed_curve25519"] == 0
    assert s["device_unused_fallback_key_types"] == ["signed_curve25519"]
    # No one-time key left: the fallback key, reused, reported used.
    fb1, fb2 = await claim(bob, alice), await claim(bob, alice)
    assert list(fb1) == ["signed_curve25519:FB1"] and fb1 == fb2
    assert fb1["signed_curve25519:FB1"]["fallback"] is True
    s = await alice.sync(s["next_batch"])
    assert s["device_unused_fallback_key_types"] == []
    # A new fallback key is unused again.
    await dev.upload(fallback_keys=dev.fallback("FB2"))
    assert (await alice.sync())["device_unused_fallback_key_types"] == ["signed_curve25519"]
    # Unknown users, devices and algorithms give nothing (no error).
    r = await bob.post("/keys/claim", {"one_time_keys": {
        alice.user_id: {"NOPE": "signed_curve25519", alice.device_id: "other_alg"},
        "@nobody:" + api.server.server_name: {"X": "signed_curve25519"}}})
    assert r.status == 200 and r.json["one_time_keys"] == {}, r
    r = await bob.post("/keys/claim", {"one_time_keys": {"not-a-user": {}}})
    assert r.status == 400
    r = await bob.post("/keys/claim", {"one_time_keys": {alice.user_id: {"D": 5}}})
    assert r.status == 400
    r = await bob.post("/keys/claim", {"one_time_keys": {alice.user_id: {"D\u0000": "x"}}})
    assert r.status == 400


async def test_concurrent_claims_never_share_a_key(api):
    alice = await api.register()
    claimers = [await api.register() for _ in range(4)]
    dev = Device(alice)
    uploaded = dev.otks(20)
    await dev.upload(one_time_keys=uploaded)
    results = await asyncio.gather(*(claim(claimers[i % 4], alice) for i in range(30)))
    got = [k for r in results for k in r]
    assert len(got) == 20 and len(set(got)) == 20, got  # 20 distinct keys, 10 claims empty
    assert set(got) == set(uploaded)


# --- to-device -------------------------------------------------------------------------------

async def _login(api, user: User) -> User:
    r = await api.request("POST", "/login", {"type": "m.login.password", "password": user.password,
                                             "identifier": {"type": "m.id.user",
                                                            "user": user.user_id}})
    assert r.status == 200, r
    return User(api, user.user_id, r.json["access_token"], r.json["device_id"], user.password)


async def test_to_device_delivery_ack_wildcard_and_idempotency(api):
    alice, bob = await api.register(), await api.register()
    bob2 = await _login(api, bob)
    s_bob = await bob.sync()
    s_bob2 = await bob2.sync()
    r = await alice.put("/sendToDevice/m.test/t1", {"messages": {
        bob.user_id: {bob.device_id: {"n": 1}}}})
    assert r.status == 200 and r.json == {}
    # The same transaction again stores nothing.
    r = await alice.put("/sendToDevice/m.test/t1", {"messages": {
        bob.user_id: {bob.device_id: {"n": 1}}}})
    assert r.status == 200
    r = await alice.put("/sendToDevice/m.test/t2", {"messages": {bob.user_id: {"*": {"n": 2}}}})
    assert r.status == 200
    s1 = await bob.sync(s_bob["next_batch"])
    assert [(e["type"], e["sender"], e["content"]) for e in s1["to_device"]["events"]] == [
        ("m.test", alice.user_id, {"n": 1}), ("m.test", alice.user_id, {"n": 2})]
    s2 = await bob2.sync(s_bob2["next_batch"])
    assert [e["content"] for e in s2["to_device"]["events"]] == [{"n": 2}]
    # Not acknowledged yet: syncing from the same token delivers them again.
    again = await bob.sync(s_bob["next_batch"])
    assert len(again["to_device"]["events"]) == 2
    # Acknowledged by the next token: gone for good.
    s3 = await bob.sync(s1["next_batch"])
    assert s3["to_device"]["events"] == []
    s4 = await bob.sync(s_bob["next_batch"])
    assert s4["to_device"]["events"] == []
    # A device created later does not get messages sent before it existed.
    bob3 = await _login(api, bob)
    assert (await bob3.sync())["to_device"]["events"] == []


@contextlib.contextmanager
def long_poll_started(server, user_id: str) -> Iterator[asyncio.Event]:
    """Set once the in-process server has registered a /sync long-poll of user_id with its
    notifier: from then on, news for the user wakes it (sending earlier would not show that)."""
    notifier = server.hs.notifier
    started = asyncio.Event()
    listen = notifier.listen

    def probe(uid: str, rooms):
        if uid == user_id:
            started.set()
        return listen(uid, rooms)

    notifier.listen = probe  # the instance attribute shadows the method
    try:
        yield started
    finally:
        del notifier.listen


async def test_to_device_long_poll_wakes_and_paginates(api):
    alice, bob = await api.register(), await api.register()
    s = await bob.sync()
    with long_poll_started(api.server, bob.user_id) as started:
        poll = asyncio.create_task(bob.sync(s["next_batch"], timeout=10000))
        await asyncio.wait_for(started.wait(), 10)
    assert not poll.done(), f"the long-poll answered before anything was sent: {poll.result()}"
    r = await alice.put("/sendToDevice/m.ping/p", {"messages": {
        bob.user_id: {bob.device_id: {"ping": True}}}})
    assert r.status == 200
    res = await asyncio.wait_for(poll, 5)
    assert [e["content"] for e in res["to_device"]["events"]] == [{"ping": True}]
    # More than one response holds: 100 per sync, the rest follow.
    for i in range(130):
        r = await alice.put(f"/sendToDevice/m.n/n{i}", {"messages": {
            bob.user_id: {bob.device_id: {"i": i}}}})
        assert r.status == 200
    got: list[int] = []
    since = res["next_batch"]
    for _ in range(3):
        page = await bob.sync(since)
        got += [e["content"]["i"] for e in page["to_device"]["events"]]
        since = page["next_batch"]
    assert got == list(range(130))


async def test_to_device_bad_input(api):
    alice, bob = await api.register(), await api.register()
    s = await bob.sync()
    big = {"blob": "x" * (64 * 1024)}
    cases = [
        ({"messages": {bob.user_id: {bob.device_id: big}}}, 413, "M_TOO_LARGE"),
        ({"messages": {"not-a-user": {"D": {}}}}, 400, "M_INVALID_PARAM"),
        ({"messages": {bob.user_id: {bob.device_id: "text"}}}, 400, "M_BAD_JSON"),
        ({"messages": {bob.user_id: ["x"]}}, 400, "M_BAD_JSON"),
        ({"messages": []}, 400, "M_BAD_JSON"),
        ({}, 400, "M_MISSING_PARAM"),
    ]
    for i, (body, status, errcode) in enumerate(cases):
        # A good message next to the bad one is not stored either.
        if isinstance(body.get("messages"), dict):
            body["messages"].setdefault(alice.user_id, {alice.device_id: {"ok": 1}})
        r = await alice.put(f"/sendToDevice/m.bad/b{i}", body)
        assert (r.status, r.json.get("errcode")) == (status, errcode), (body.keys(), r)
    # Unknown devices and users are dropped silently (the spec has no way to report them).
    r = await alice.put("/sendToDevice/m.x/u1", {"messages": {
        bob.user_id: {"NODEVICE": {"a": 1}},
        "@ghost:" + api.server.server_name: {"*": {"a": 2}}}})
    assert r.status == 200
    assert (await bob.sync(s["next_batch"]))["to_device"]["events"] == []
    assert (await alice.sync())["to_device"]["events"] == []


# --- device lists ----------------------------------------------------------------------------

async def test_device_list_changes_in_sync_and_keys_changes(api):
    alice, bob, eve = await api.register(), await api.register(), await api.register()
    room_id = await alice.create_room()
    r = await alice.post(f"/rooms/{room_id}/invite", {"user_id": bob.user_id})
    assert r.status == 200
    await bob.join(room_id)
    s_bob = await bob.sync()
    s_eve = await eve.sync()
    await Device(alice).upload(otks=1)
    s = await bob.sync(s_bob["next_batch"])
    assert alice.user_id in s["device_lists"]["changed"]
    # Eve shares no room with alice: she is not told.
    assert alice.user_id not in (await eve.sync(s_eve["next_batch"]))["device_lists"]["changed"]
    r = await bob.get("/keys/changes", params={"from": s_bob["next_batch"],
                                               "to": s["next_batch"]})
    assert r.status == 200 and alice.user_id in r.json["changed"], r
    r = await bob.get("/keys/changes", params={"from": "garbage"})
    assert r.status == 400
    # Bob's second device deleted: alice is told bob changed; its keys are gone.
    bob2 = await _login(api, bob)
    await Device(bob2).upload(otks=2)
    assert bob2.device_id in (await query(alice, bob.user_id))["device_keys"][bob.user_id]
    s_alice = await alice.sync()
    r = await bob.post("/delete_devices", {"devices": [bob2.device_id], "auth": {
        "type": "m.login.password", "password": bob.password,
        "identifier": {"type": "m.id.user", "user": bob.user_id}}})
    assert r.status == 200, r
    assert bob.user_id in (await alice.sync(s_alice["next_batch"]))["device_lists"]["changed"]
    assert (await query(alice, bob.user_id))["device_keys"][bob.user_id] == {}
    r = await alice.post("/keys/claim", {"one_time_keys": {
        bob.user_id: {bob2.device_id: "signed_curve25519"}}})
    assert r.json["one_time_keys"] == {}
    # Bob leaves the only room they shared: alice sees him in device_lists.left.
    s_alice = await alice.sync()
    r = await bob.post(f"/rooms/{room_id}/leave")
    assert r.status == 200
    s = await alice.sync(s_alice["next_batch"])
    assert bob.user_id in s["device_lists"]["left"], s["device_lists"]
    # A user who joins a room with you appears in changed.
    carol = await api.register()
    s_alice = await alice.sync()
    await alice.post(f"/rooms/{room_id}/invite", {"user_id": carol.user_id})
    await carol.join(room_id)
    s = await alice.sync(s_alice["next_batch"])
    assert carol.user_id in s["device_lists"]["changed"]


# --- cross-signing ---------------------------------------------------------------------------

def _xkey(user: User, key: SigningKey, usage: str, signer: SigningKey | None = None) -> dict:
    obj = {"user_id": user.user_id, "usage": [usage], "keys": {f"ed25519:{key.pub}": key.pub}}
    if signer is not None:
        obj = signer.sign(obj, user.user_id, f"ed25519:{signer.pub}")
    return obj


async def test_cross_signing_upload_and_signatures(api):
    alice, bob = await api.register(), await api.register()
    dev = Device(alice)
    await dev.upload()
    master, ssk, usk = SigningKey(), SigningKey(), SigningKey()
    # A self-signing key not signed by the master key is refused; nothing is stored.
    r = await alice.post("/keys/device_signing/upload", {
        "master_key": _xkey(alice, master, "master"),
        "self_signing_key": _xkey(alice, ssk, "self_signing")})
    assert r.status == 400 and r.json["errcode"] == "M_INVALID_SIGNATURE", r
    assert (await query(bob, alice.user_id))["master_keys"] == {}
    r = await alice.post("/keys/device_signing/upload", {
        "self_signing_key": _xkey(alice, ssk, "self_signing", master)})
    assert r.status == 400 and r.json["errcode"] == "M_MISSING_PARAM", r
    r = await alice.post("/keys/device_signing/upload", {
        "master_key": _xkey(bob, master, "master")})
    assert r.status == 400, r
    keys = {"master_key": _xkey(alice, master, "master"),
            "self_signing_key": _xkey(alice, ssk, "self_signing", master),
            "user_signing_key": _xkey(alice, usk, "user_signing", master)}
    r = await alice.post("/keys/device_signing/upload", keys)
    assert r.status == 200, r
    # Idempotent; replacing keys needs user-interactive auth.
    assert (await alice.post("/keys/device_signing/upload", keys)).status == 200
    other = SigningKey()
    r = await alice.post("/keys/device_signing/upload", {"master_key": _xkey(alice, other,
                                                                             "master")})
    assert r.status == 401 and "flows" in r.json, r
    got = await query(bob, alice.user_id)
    assert got["master_keys"][alice.user_id]["keys"] == {f"ed25519:{master.pub}": master.pub}
    assert alice.user_id in got["self_signing_keys"]
    assert got["user_signing_keys"] == {}  # only the owner sees their user-signing key
    assert alice.user_id in (await query(alice, alice.user_id))["user_signing_keys"]

    # Alice's self-signing key signs her device; the signature shows up in queries.
    signed = ssk.sign(dev.device_keys(), alice.user_id, f"ed25519:{ssk.pub}")
    bad = SigningKey().sign(dev.device_keys(), alice.user_id, f"ed25519:{ssk.pub}")
    r = await alice.post("/keys/signatures/upload", {alice.user_id: {alice.device_id: signed}})
    assert r.status == 200 and r.json["failures"] == {}, r
    dk = (await query(bob, alice.user_id))["device_keys"][alice.user_id][alice.device_id]
    assert f"ed25519:{ssk.pub}" in dk["signatures"][alice.user_id]
    r = await alice.post("/keys/signatures/upload", {alice.user_id: {alice.device_id: bad}})
    assert r.json["failures"][alice.user_id][alice.device_id]["errcode"] == \
        "M_INVALID_SIGNATURE", r
    r = await alice.post("/keys/signatures/upload", {alice.user_id: {"NODEVICE": signed}})
    assert "NODEVICE" in r.json["failures"][alice.user_id]
    # Alice signs bob's master key with her user-signing key: only alice sees it.
    bob_master = SigningKey()
    r = await bob.post("/keys/device_signing/upload", {"master_key": _xkey(bob, bob_master,
                                                                           "master")})
    assert r.status == 200
    signed_bob = usk.sign(_xkey(bob, bob_master, "master"), alice.user_id,
                          f"ed25519:{usk.pub}")
    r = await alice.post("/keys/signatures/upload", {bob.user_id: {bob_master.pub: signed_bob}})
    assert r.status == 200 and r.json["failures"] == {}, r
    mine = (await query(alice, bob.user_id))["master_keys"][bob.user_id]
    assert f"ed25519:{usk.pub}" in mine["signatures"][alice.user_id]
    theirs = (await query(bob, bob.user_id))["master_keys"][bob.user_id]
    assert alice.user_id not in theirs.get("signatures", {})


# --- key backup ------------------------------------------------------------------------------

def _backup_key(fmi: int, fc: int, verified: bool, tag: str) -> dict:
    return {"first_message_index": fmi, "forwarded_count": fc, "is_verified": verified,
            "session_data": {"ephemeral": tag, "ciphertext": tag, "mac": tag}}


async def test_key_backup(api):
    alice = await api.register()
    r = await alice.get("/room_keys/version")
    assert r.status == 404 and r.json["errcode"] == "M_NOT_FOUND"
    algo = "m.megolm_backup.v1.curve25519-aes-sha2"
    r = await alice.post("/room_keys/version", {"algorithm": algo,
                                                "auth_data": {"public_key": "abc"}})
    assert r.status == 200, r
    v1 = r.json["version"]
    r = await alice.put("/room_keys/keys/!r:x/s1", _backup_key(5, 0, False, "a"),
                        params={"version": v1})
    assert r.status == 200 and r.json["count"] == 1, r
    etag = r.json["etag"]
    # A worse key does not replace a better one; a better one does.
    r = await alice.put("/room_keys/keys/!r:x/s1", _backup_key(9, 0, False, "worse"),
                        params={"version": v1})
    assert r.json["etag"] == etag
    r = await alice.put("/room_keys/keys/!r:x/s1", _backup_key(9, 0, True, "verified"),
                        params={"version": v1})
    assert r.json["etag"] != etag
    r = await alice.get("/room_keys/keys/!r:x/s1", params={"version": v1})
    assert r.status == 200 and r.json["session_data"]["ciphertext"] == "verified"
    r = await alice.put("/room_keys/keys", {"rooms": {"!q:x": {"sessions": {
        "s2": _backup_key(0, 0, False, "b")}}}}, params={"version": v1})
    assert r.status == 200 and r.json["count"] == 2
    r = await alice.get("/room_keys/keys", params={"version": v1})
    assert set(r.json["rooms"]) == {"!r:x", "!q:x"}
    r = await alice.get("/room_keys/version")
    assert r.json["version"] == v1 and r.json["count"] == 2 and r.json["algorithm"] == algo
    # A new version becomes current; the old one no longer takes keys.
    v2 = (await alice.post("/room_keys/version", {"algorithm": algo, "auth_data": {}})).json[
        "version"]
    r = await alice.put("/room_keys/keys/!r:x/s1", _backup_key(0, 0, True, "c"),
                        params={"version": v1})
    assert r.status == 403 and r.json["errcode"] == "M_WRONG_ROOM_KEYS_VERSION" \
        and r.json["current_version"] == v2, r
    # Bad input.
    r = await alice.put("/room_keys/keys/!r:x/s1", {"first_message_index": "0"},
                        params={"version": v2})
    assert r.status == 400
    r = await alice.post("/room_keys/version", {"algorithm": algo})
    assert r.status == 400
    r = await alice.put(f"/room_keys/version/{v2}", {"algorithm": "other", "auth_data": {}})
    assert r.status == 400 and r.json["errcode"] == "M_INVALID_PARAM"
    assert (await alice.get("/room_keys/version/999999")).status == 404
    assert (await alice.get("/room_keys/version/\u00b2")).status == 404
    r = await alice.post("/room_keys/version", {"algorithm": "a\u0000", "auth_data": {}})
    assert r.status == 400
    # Deleting: the keys go, deleting twice is fine, the other user sees nothing of it.
    r = await alice.request("DELETE", f"/room_keys/version/{v1}")
    assert r.status == 200
    assert (await alice.request("DELETE", f"/room_keys/version/{v1}")).status == 200
    assert (await alice.get("/room_keys/keys", params={"version": v1})).status == 404
    bob = await api.register()
    assert (await bob.get(f"/room_keys/version/{v2}")).status == 404


async def test_to_device_positions_survive_a_restart(api, server):
    """The inbox empties as messages are acknowledged; after a restart the stream must not
    hand out positions a client's token already covers (the message would be skipped)."""
    alice, bob = await api.register(), await api.register()
    dev = Device(bob)
    await dev.upload(otks=1)
    s = await bob.sync()
    r = await alice.put("/sendToDevice/m.x/r1", {"messages": {bob.user_id: {"*": {"n": 1}}}})
    assert r.status == 200
    s1 = await bob.sync(s["next_batch"])
    assert [e["content"] for e in s1["to_device"]["events"]] == [{"n": 1}]
    s2 = await bob.sync(s1["next_batch"])  # acknowledges: the inbox is empty now
    await server.stop()
    await server.start()
    r = await alice.put("/sendToDevice/m.x/r2", {"messages": {bob.user_id: {"*": {"n": 2}}}})
    assert r.status == 200
    s3 = await bob.sync(s2["next_batch"])
    assert [e["content"] for e in s3["to_device"]["events"]] == [{"n": 2}]
    # The retried transaction from before the restart is still recognised.
    r = await alice.put("/sendToDevice/m.x/r1", {"messages": {bob.user_id: {"*": {"n": 1}}}})
    assert r.status == 200
    assert (await bob.sync(s3["next_batch"]))["to_device"]["events"] == []
    # Device keys and the device list position survived too.
    assert bob.device_id in (await query(alice, bob.user_id))["device_keys"][bob.user_id]
