"""Encryption at rest on disk: the key file (0600, generated once, reloaded when it changes),
keys from the environment, and sealed media files read with seeks (storage/sealed_files.py)."""

from __future__ import annotations

import hashlib
import io
import os
import stat

import pytest

from homeserver.crypto import keystore
from homeserver.crypto.at_rest import (AtRestError, DecryptionError, KeyFormatError,
                                       UnknownKeyError, format_entry, new_key)
from homeserver.crypto.keystore import LiveKeyring
from homeserver.storage.media import MediaStore
from homeserver.storage.sealed_files import file_key_id, open_plain, reseal


def test_key_file_is_generated_once_with_mode_0600(tmp_path):
    path = tmp_path / "data" / "at_rest.key"
    live = LiveKeyring.load(path, environ={})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith("#") and live.ring.current_id in text
    again = LiveKeyring.load(path, environ={})
    assert again.ring.entries == live.ring.entries  # loaded, not replaced
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


def test_a_second_process_never_replaces_a_new_key_file(tmp_path):
    path = tmp_path / "at_rest.key"
    first, created = keystore.load_or_generate(path)
    assert created
    with pytest.raises(FileExistsError):
        keystore.save_keys(path, [("other", new_key())], create_only=True)
    second, created = keystore.load_or_generate(path)
    assert not created and second.entries == first.entries
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_environment_keys_win_and_no_file_is_made(tmp_path):
    path = tmp_path / "at_rest.key"
    env = {keystore.ENV_VAR: f"{format_entry('e1', new_key())},{format_entry('e2', new_key())}"}
    live = LiveKeyring.load(path, environ=env)
    assert live.ring.ids == ["e1", "e2"] and live.ring.current_id == "e2"
    assert live.source == keystore.ENV_VAR and not path.exists()
    with pytest.raises(KeyFormatError):
        LiveKeyring.load(path, environ={keystore.ENV_VAR: "e1:not-a-key"})


def test_live_keyring_follows_the_file(tmp_path, monkeypatch):
    path = tmp_path / "at_rest.key"
    server = LiveKeyring.load(path, environ={})
    old_id = server.ring.current_id
    # Another process (nexa rotate-key) adds a key and seals with it.
    rotated = keystore.add_key(path)
    new_id = rotated.current_id
    sealed_new = rotated.seal(b"{}", b"x")
    # Meeting the unknown key ID makes the server reload at once.
    assert server.open(sealed_new, b"x") == b"{}"
    assert server.ring.current_id == new_id
    # The server now seals with the new key too.
    assert server.seal(b"{}", b"x").startswith(f"nxe1:{new_id}:")
    # Retiring: the old key is gone after the next periodic check.
    keystore.retire_old_keys(path, new_id)
    monkeypatch.setattr(keystore, "CHECK_INTERVAL_S", 0.0)
    server.seal(b"{}", b"x")
    assert server.ring.ids == [new_id] and old_id not in server.ring
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Not the newest any more: refuse to retire.
    keystore.add_key(path)
    with pytest.raises(AtRestError):
        keystore.retire_old_keys(path, new_id)


def test_broken_key_file_keeps_the_loaded_keys(tmp_path, monkeypatch):
    path = tmp_path / "at_rest.key"
    server = LiveKeyring.load(path, environ={})
    sealed = server.seal(b"{}", b"x")
    path.write_text("garbage\n")
    monkeypatch.setattr(keystore, "CHECK_INTERVAL_S", 0.0)
    assert server.seal(b"{}", b"x")
    assert server.open(sealed, b"x") == b"{}"
    with pytest.raises(UnknownKeyError):
        server.open(sealed.replace(server.ring.current_id, "knope", 1), b"x")


async def _write(store: MediaStore, data: bytes) -> str:
    async def chunks():
        for i in range(0, len(data), 10_000):
            yield data[i:i + 10_000]

    sha, size = await store.write_stream(chunks(), 10**9)
    assert size == len(data) and sha == hashlib.sha256(data).hexdigest()
    return sha


async def test_sealed_media_reads_with_seeks(tmp_path):
    live = LiveKeyring.load(tmp_path / "k", environ={})
    store = MediaStore(tmp_path / "media", lambda: live)
    await store.prepare()
    data = os.urandom(300_000)  # several 64 KiB segments, the last one partial
    sha = await _write(store, data)
    raw = store.path_for(sha).read_bytes()
    assert data[:64] not in raw and data[-64:] not in raw
    assert file_key_id(store.path_for(sha)) == live.ring.current_id
    with store.open(sha) as fh:
        assert fh.read() == data
        for start, n in ((0, 10), (65_530, 20), (131_072, 1), (299_990, 100), (300_000, 5)):
            fh.seek(start)
            assert fh.read(n) == data[start:start + n]
        fh.seek(-7, io.SEEK_END)
        assert fh.read() == data[-7:]
    assert b"".join([c async for c in store.iter_file(sha, chunk_size=70_000)]) == data
    # Empty files work too.
    empty = await _write(store, b"")
    assert await store.read(empty) == b""


async def test_tampered_media_is_refused(tmp_path):
    live = LiveKeyring.load(tmp_path / "k", environ={})
    store = MediaStore(tmp_path / "media", lambda: live)
    sha = await _write(store, os.urandom(200_000))
    path = store.path_for(sha)
    raw = bytearray(path.read_bytes())
    raw[100_000] ^= 1  # inside the second segment
    path.write_bytes(bytes(raw))
    with store.open(sha) as fh:
        fh.read(1000)  # the first segment is intact
        with pytest.raises(DecryptionError):
            fh.read()
    path.write_bytes(bytes(raw[:-20]))  # truncated
    with pytest.raises(AtRestError):
        with store.open(sha) as fh:
            fh.read()


async def test_legacy_plaintext_media_is_served_and_resealed(tmp_path):
    live = LiveKeyring.load(tmp_path / "k", environ={})
    store = MediaStore(tmp_path / "media", lambda: live)
    await store.prepare()
    # A file from before encryption at rest, even one that starts like a sealed header.
    for data in (b"plain old bytes" * 1000, b"NXS1\x02k1" + os.urandom(500)):
        sha = hashlib.sha256(data).hexdigest()
        path = store.path_for(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        assert await store.read(sha) == data
        assert store.reseal(sha) is True
        assert data[:32] not in path.read_bytes()
        assert file_key_id(path) == live.ring.current_id
        assert await store.read(sha) == data
        assert store.reseal(sha) is False  # already under the newest key
    # A damaged sealed file is not mistaken for plaintext (its hash does not match).
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(AtRestError):
        open_plain(path, live, sha)


async def test_reseal_moves_files_to_the_new_key(tmp_path):
    key_file = tmp_path / "k"
    live = LiveKeyring.load(key_file, environ={})
    store = MediaStore(tmp_path / "media", lambda: live)
    data = os.urandom(70_000)
    sha = await _write(store, data)
    old = live.ring.current_id
    new = keystore.add_key(key_file).current_id
    live.reload_if_changed()
    with store.open(sha) as reader_before:  # a download in progress keeps its file
        assert reseal(store.path_for(sha), store.tmp, live, sha) is True
        assert reader_before.read() == data
    assert file_key_id(store.path_for(sha)) == new != old
    assert [s for s, _ in store.iter_blobs()] == [sha]
    keystore.retire_old_keys(key_file, new)
    assert await MediaStore(tmp_path / "media",
                            lambda: LiveKeyring.load(key_file, environ={})).read(sha) == data
