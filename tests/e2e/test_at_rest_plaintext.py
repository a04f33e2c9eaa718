"""Encryption at rest, end to end: matrix-nio clients talk in an unencrypted and an encrypted
room (on one server, then across two federating servers), set a room name, topic and per-room
display name, save a draft, upload a file and an image (and get a thumbnail made). Then the
servers stop and every byte they stored is searched: the SQLite file (and its -wal/-shm), or
every row of every PostgreSQL table, plus every file in the data directory (media and
thumbnails included). None of the text sent and none of the media bytes may be there.
"""

from __future__ import annotations

import io
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nio
from PIL import Image

from tests.e2e.nio_crypto import Crypto, encrypted_room, register, settle
from tests.e2e.nio_helpers import ok, raw
from tests.federation.conftest import FED
from tests.servers import start_server

DRAFT_TYPE = "im.nexa.draft"  # what the web UI saves drafts as


@dataclass
class Secrets:
    """What was sent: none of it may be found in a store."""

    texts: list[str] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)

    def text(self, kind: str) -> str:
        value = f"{kind}-{secrets.token_hex(8)}"
        self.texts.append(value)
        return value

    def needles(self) -> list[tuple[str, bytes]]:
        out = [(t, t.encode()) for t in self.texts]
        for i, blob in enumerate(self.blobs):
            # Windows from the start, middle and end of each blob (file headers included:
            # no plaintext media may be on disk at all).
            for start in sorted({0, max(0, len(blob) // 2 - 24), max(0, len(blob) - 48)}):
                out.append((f"media {i} bytes at {start}", blob[start:start + 48]))
        return out


def noise_png(width: int, height: int) -> bytes:
    img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --- what the clients do -------------------------------------------------------------------

async def message_and_reply(alice: Crypto, bob: Crypto, room_id: str, said: Secrets,
                            kind: str) -> None:
    """Alice says something, Bob sees it and answers, Alice sees the answer."""
    text = said.text(f"{kind}-message")
    await alice.send(room_id, text)
    await bob.wait_for_text(room_id, text)
    reply = said.text(f"{kind}-reply")
    await bob.send(room_id, reply)
    await alice.wait_for_text(room_id, reply)


async def unencrypted_room(alice: Crypto, bob: Crypto, said: Secrets) -> str:
    resp = ok(await alice.client.room_create(name=said.text("room-name"),
                                             topic=said.text("room-topic"),
                                             invite=[bob.user_id]), nio.RoomCreateResponse)
    ok(await bob.client.join(resp.room_id), nio.JoinResponse)
    room_id = resp.room_id
    await settle(alice, bob)
    ok(await alice.client.room_put_state(
        room_id, "m.room.member", {"membership": "join", "displayname": said.text("nick")},
        state_key=alice.user_id), nio.RoomPutStateResponse)
    await message_and_reply(alice, bob, room_id, said, "plain")
    return room_id


async def encrypted_exchange(alice: Crypto, bob: Crypto, said: Secrets) -> str:
    room_id = await encrypted_room(alice, bob)
    await settle(alice, bob)
    await message_and_reply(alice, bob, room_id, said, "e2e")
    return room_id


async def two_rooms(alice_server: str, bob_server: str, clients: list[Crypto]
                    ) -> tuple[Crypto, Crypto, Secrets, str]:
    """alice and bob register (into `clients`, to be closed) and talk in an unencrypted and an
    encrypted room; (alice, bob, what they said, the unencrypted room)."""
    alice = await register(alice_server, "alice")
    clients.append(alice)
    bob = await register(bob_server, "bob")
    clients.append(bob)
    said = Secrets()
    room_id = await unencrypted_room(alice, bob, said)
    await encrypted_exchange(alice, bob, said)
    return alice, bob, said, room_id


async def save_draft(user: Crypto, room_id: str, said: Secrets) -> None:
    path = f"/user/{user.user_id}/rooms/{room_id}/account_data/{DRAFT_TYPE}"
    draft = {"body": said.text("draft"), "ts": 1}
    status, _ = await raw(user.client, "PUT", path, draft)
    assert status == 200
    status, body = await raw(user.client, "GET", path)
    assert (status, body) == (200, draft)


async def share_media(user: Crypto, room_id: str, said: Secrets) -> tuple[str, str]:
    """Uploads a file and an image, posts them, checks both download byte-identical and a
    thumbnail of the image is made; (file mxc, image mxc)."""
    blob = b"media-" + secrets.token_bytes(150_000) + said.text("inside-media").encode()
    image = noise_png(64, 48)
    said.blobs += [blob, image]
    uris = []
    for data, ctype, msgtype in ((blob, "application/octet-stream", "m.file"),
                                 (image, "image/png", "m.image")):
        up, _ = await user.client.upload(io.BytesIO(data), ctype, "upload", filesize=len(data))
        up = ok(up, nio.UploadResponse)
        uris.append(up.content_uri)
        ok(await user.client.room_send(room_id, "m.room.message", {
            "msgtype": msgtype, "body": said.text("caption"), "url": up.content_uri}),
            nio.RoomSendResponse)
        got = ok(await user.client.download(mxc=up.content_uri), nio.DownloadResponse)
        assert got.body == data
    server_name, media_id = uris[1][len("mxc://"):].split("/")
    thumb = ok(await user.client.thumbnail(server_name, media_id, 32, 32),
               nio.ThumbnailResponse)
    assert Image.open(io.BytesIO(thumb.body)).size == (32, 24)
    said.blobs.append(thumb.body)
    return uris[0], uris[1]


# --- what the stores hold ------------------------------------------------------------------

def data_files(srv) -> dict[str, bytes]:
    """Every file in the server's data directory: SQLite file, -wal/-shm, media, keys."""
    root = Path(srv.data_dir)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def postgres_rows(srv) -> dict[str, bytes]:
    """Every value of every row of every table of the server's database, per table."""
    import asyncpg

    conn = await asyncpg.connect(srv.config_data["database"]["url"])
    try:
        tables = [r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_type = 'BASE TABLE'")]
        out = {}
        for table in tables:
            parts = []
            for row in await conn.fetch(f'SELECT * FROM "{table}"'):
                for value in row.values():
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        parts.append(bytes(value))
                    elif value is not None:
                        parts.append(str(value).encode())
            out[f"table {table}"] = b"\x00".join(parts)
        return out
    finally:
        await conn.close()


async def assert_nothing_readable(srv, said: Secrets, known_plain: str) -> None:
    """The server is stopped; search all it stored."""
    stores = data_files(srv)
    if srv.backend == "postgres":
        stores.update(await postgres_rows(srv))
    else:
        assert "nexa.db" in stores
    # The search does see stored data: user IDs are kept in clear.
    assert any(known_plain.encode() in content for content in stores.values())
    assert any(name.startswith("media/") for name in stores)
    found = [(what, where) for what, needle in said.needles()
             for where, content in stores.items() if needle in content]
    assert not found, f"plaintext found at rest: {found}"


# --- the scenarios -------------------------------------------------------------------------

async def test_one_server_stores_no_plaintext(backend, tmp_path):
    srv = await start_server(tmp_path, backend)
    clients: list[Crypto] = []
    try:
        alice, bob, said, room_id = await two_rooms(srv.base_url, srv.base_url, clients)
        await save_draft(alice, room_id, said)
        await share_media(alice, room_id, said)
        for c in clients:
            await c.close()
        clients.clear()
        await srv.stop()  # SQLite folds the WAL into the file on close
        await assert_nothing_readable(srv, said, alice.user_id)
    finally:
        for c in clients:
            await c.close()
        await srv.destroy()


async def test_federated_servers_store_no_plaintext(backend, tmp_path):
    s1 = await start_server(tmp_path, backend, federation=FED)
    s2 = await start_server(tmp_path, backend, federation=FED)
    clients: list[Crypto] = []
    try:
        alice, bob, said, room_id = await two_rooms(s1.base_url, s2.base_url, clients)
        await save_draft(bob, room_id, said)
        file_uri, image_uri = await share_media(alice, room_id, said)
        # Bob's server fetches alice's media over federation and keeps a (sealed) copy, and
        # makes a thumbnail of the image itself.
        headers = {"Authorization": f"Bearer {bob.client.access_token}"}
        async with aiohttp.ClientSession() as http:
            for uri, blob in ((file_uri, said.blobs[0]), (image_uri, said.blobs[1])):
                path = uri[len("mxc://"):]
                async with http.get(f"{s2.base_url}/_matrix/client/v1/media/download/{path}",
                                    headers=headers) as r:
                    assert r.status == 200 and await r.read() == blob
            async with http.get(f"{s2.base_url}/_matrix/client/v1/media/thumbnail/"
                                f"{image_uri[len('mxc://'):]}",
                                params={"width": "16", "height": "16"}, headers=headers) as r:
                assert r.status == 200
                said.blobs.append(await r.read())
        for c in clients:
            await c.close()
        clients.clear()
        await s1.stop()
        await s2.stop()
        await assert_nothing_readable(s1, said, alice.user_id)
        await assert_nothing_readable(s2, said, bob.user_id)
    finally:
        for c in clients:
            await c.close()
        await s1.destroy()
        await s2.destroy()
