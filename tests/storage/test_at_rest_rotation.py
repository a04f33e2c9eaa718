"""`nexa rotate-key` against a running server: the command (a separate process, as an operator
runs it) adds a key and re-seals every row and media file while clients keep sending and
reading; the server picks up the new key by itself. Afterwards nothing is left under the old
key, --retire-old has removed it from the key file, and everything, old and new, still reads,
before and after a restart. Also: a database from before encryption at rest (plaintext rows
and media) is sealed by the same command, and `nexa check-config` warns about a key file
others can read."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sys
import traceback
from pathlib import Path

import pytest
import yaml

from homeserver.crypto.at_rest import parse_keys, sealed_key_id
from homeserver.storage import sql
from homeserver.storage.sealed import SEALED_COLUMNS
from homeserver.storage.sealed_files import file_key_id
from tests.client import Api, User
from tests.servers import start_server

MEDIA = "/_matrix/client/v1/media"


def key_ids(srv) -> list[str]:
    return [k for k, _ in parse_keys((srv.data_dir / "at_rest.key").read_text())]


def write_config(srv, tmp_path: Path) -> Path:
    path = tmp_path / f"nexa-{srv.port}.yaml"
    path.write_text(yaml.safe_dump(srv.config_data))
    return path


async def nexa(*args: str) -> tuple[int, str]:
    """Run the `nexa` command in its own process (NEXA_* test variables are not config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXA_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "homeserver", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    return proc.returncode, out.decode()


async def stored_values(srv) -> list[str]:
    token = srv.hs.db.activate()
    try:
        out = []
        for col in SEALED_COLUMNS:
            out += [r["v"] for r in await sql.fetch(
                f"SELECT {col.column} AS v FROM {col.table}") if r["v"] is not None]
        return out
    finally:
        srv.hs.db.deactivate(token)


async def bodies(user: User, room_id: str) -> list[str]:
    r = await user.get(f"/rooms/{room_id}/messages", params={"dir": "b", "limit": "1000"})
    assert r.status == 200, r
    return [e["content"]["body"] for e in reversed(r.json["chunk"])
            if e["type"] == "m.room.message"]


async def download(user: User, mxc: str) -> bytes:
    async with user.api.session.get(f"{user.api.server.base_url}{MEDIA}/download/"
                                    f"{mxc[len('mxc://'):]}",
                                    headers={"Authorization": f"Bearer {user.token}"}) as r:
        assert r.status == 200
        return await r.read()


async def upload(user: User, data: bytes) -> str:
    async with user.api.session.post(f"{user.api.server.base_url}/_matrix/media/v3/upload",
                                     data=data,
                                     headers={"Authorization": f"Bearer {user.token}",
                                              "Content-Type": "application/octet-stream"}) as r:
        assert r.status == 200
        return (await r.json())["content_uri"]


async def log_in_again(api: Api, user: User) -> User:
    """`user` on a new device of `api`'s server (after a restart, say)."""
    r = await api.request("POST", "/login", {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user.user_id},
        "password": user.password})
    assert r.status == 200, r
    return User(api, user.user_id, r.json["access_token"], r.json["device_id"], user.password)


def media_key_ids(srv) -> set[str | None]:
    root = srv.data_dir / "media"
    return {file_key_id(p) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] != "tmp"}


async def test_rotate_key_while_the_server_runs(backend, tmp_path):
    srv = await start_server(tmp_path, backend)
    try:
        async with Api(srv) as api:
            alice, bob = await api.register(), await api.register()
            room_id = await alice.create_room(invite=[bob.user_id])
            await bob.join(room_id)
            sent = [f"before {i}" for i in range(40)]
            for text in sent:
                await alice.send_text(room_id, text)
            blob = secrets.token_bytes(200_000)
            mxc = await upload(alice, blob)
            r = await alice.put(f"/user/{alice.user_id}/account_data/im.nexa.test", {"n": 1})
            assert r.status == 200
            # A to-device message bob's device has not fetched yet waits in its inbox.
            r = await alice.put(f"/sendToDevice/m.test/{secrets.token_hex(4)}",
                                {"messages": {bob.user_id: {bob.device_id: {"note": "hi"}}}})
            assert r.status == 200
            [old] = key_ids(srv)
            assert {sealed_key_id(v) for v in await stored_values(srv)} == {old}

            # Clients keep using the server during the rotation.
            stop = asyncio.Event()
            during: list[str] = []

            async def keep_talking() -> None:
                i = 0
                while not stop.is_set():
                    text = f"during {i}"
                    await alice.send_text(room_id, text)
                    during.append(text)
                    assert (await bodies(bob, room_id))[-1] == text
                    i += 1

            talker = asyncio.create_task(keep_talking())
            rc, out = await nexa("rotate-key", "-c", str(write_config(srv, tmp_path)),
                                 "--retire-old", "--batch-size", "7", "--grace-seconds", "1.5")
            stop.set()
            await talker  # raises if a request failed meanwhile
            assert rc == 0, out
            [new] = key_ids(srv)
            assert new != old and f"retired {old}" in out
            assert during, "no request was made while the rotation ran"

            # The running server seals with the new key now, and reads what is sealed with it.
            await alice.send_text(room_id, "after")
            assert srv.hs.db.at_rest.ring.current_id == new
            assert await bodies(bob, room_id) == sent + during + ["after"]
            assert {sealed_key_id(v) for v in await stored_values(srv)} == {new}
            assert media_key_ids(srv) == {new}
            assert await download(alice, mxc) == blob
            sync = await bob.sync()
            assert [m["content"] for m in sync["to_device"]["events"]] == [{"note": "hi"}]

        # Only the new key exists now, and a restarted server reads everything with it.
        await srv.stop()
        await srv.start()
        async with Api(srv) as api:
            alice = await api.register()
            bob = await log_in_again(api, bob)
            assert await bodies(bob, room_id) == sent + during + ["after"]
            assert await download(bob, mxc) == blob
    finally:
        await srv.destroy()


async def test_rotation_seals_a_database_from_before_encryption(backend, tmp_path):
    srv = await start_server(tmp_path, backend)
    try:
        async with Api(srv) as api:
            alice = await api.register()
            room_id = await alice.create_room()
            event_id = await alice.send_text(room_id, "an old plaintext message")
            data = b"an old plaintext file " * 1000
            mxc = await upload(alice, data)
        await srv.stop()
        # Make that history look like it was written before encryption at rest existed.
        await srv.start()
        token = srv.hs.db.activate()
        try:
            row = (await sql.fetch("SELECT json FROM events WHERE event_id = ?", [event_id]))[0]
            plain = srv.hs.db.at_rest.open(row["json"], f"events.json\x00{event_id}".encode())
            await sql.execute("UPDATE events SET json = ? WHERE event_id = ?",
                              [plain.decode(), event_id])
        finally:
            srv.hs.db.deactivate(token)
        sha = hashlib.sha256(data).hexdigest()
        srv.hs.media.store.path_for(sha).write_bytes(data)
        await srv.stop()
        await srv.start()  # a fresh process: no cached plaintext
        async with Api(srv) as api:
            alice = await log_in_again(api, alice)
            assert await bodies(alice, room_id) == ["an old plaintext message"]
            assert await download(alice, mxc) == data
            assert None in media_key_ids(srv)

            rc, out = await nexa("rotate-key", "-c", str(write_config(srv, tmp_path)),
                                 "--grace-seconds", "0")
            assert rc == 0, out
            old, new = key_ids(srv)  # not retired without --retire-old
            values = await stored_values(srv)
            assert values and {sealed_key_id(v) for v in values} == {new}
            assert b"old plaintext" not in srv.hs.media.store.path_for(sha).read_bytes()
            assert media_key_ids(srv) == {new}
            assert await bodies(alice, room_id) == ["an old plaintext message"]
            assert await download(alice, mxc) == data
    finally:
        await srv.destroy()


async def test_check_config_warns_about_a_readable_key_file(tmp_path):
    data_dir = tmp_path / "data"
    config = tmp_path / "nexa.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data_dir)}))
    rc, out = await nexa("check-config", "-c", str(config))
    assert rc == 0 and "will be generated at first start" in out
    data_dir.mkdir()
    rc, out = await nexa("rotate-key", "-c", str(config), "--grace-seconds", "0")
    assert rc == 0, out
    key_file = data_dir / "at_rest.key"
    assert key_file.stat().st_mode & 0o077 == 0
    rc, out = await nexa("check-config", "-c", str(config))
    assert rc == 0 and "readable by other users" not in out
    key_file.chmod(0o644)
    rc, out = await nexa("check-config", "-c", str(config))
    assert rc == 0 and f"warning: {key_file} (the at-rest encryption key) is readable" in out
    key_file.write_text("not a key\n")
    rc, out = await nexa("check-config", "-c", str(config))
    assert rc == 2 and "at-rest keys" in out


async def test_a_missing_key_file_stops_the_server_with_a_clear_error(backend, tmp_path):
    srv = await start_server(tmp_path, backend)
    try:
        async with Api(srv) as api:
            alice = await api.register()
            room_id = await alice.create_room()
            await alice.send_text(room_id, "kept under the key")
        await srv.stop()
        key_file = srv.data_dir / "at_rest.key"
        saved = key_file.read_bytes()
        key_file.unlink()  # e.g. the data directory restored without its key
        with pytest.raises(Exception) as e:
            await srv.start()
        assert "restore the key file" in "".join(
            traceback.format_exception(e.value))
        assert not key_file.exists()  # no stray new key left to be mistaken for the real one
        srv._task = None
        key_file.write_bytes(saved)
        key_file.chmod(0o600)
        await srv.start()
        async with Api(srv) as api:
            alice = await log_in_again(api, alice)
            assert await bodies(alice, room_id) == ["kept under the key"]
    finally:
        await srv.destroy()
