"""Media storage: content-addressed files on disk, and the rows that map mxc:// URIs to them.

Files live at `<data_dir>/media/<aa>/<bb>/<sha256>` (aa, bb: the first hex pairs of the hash
of the plaintext), so the same bytes uploaded twice are stored once. With the server's at-rest
keys the file holds the bytes sealed in segments (storage/sealed_files.py): a copy of the media
directory shows no content, and reads (Range requests too) decrypt on the fly. A file is written
to `media/tmp/` first and renamed into place only when complete and fsynced: a reader never sees
half a file, and a crash leaves at most a temporary file, removed at the next start. Every disk
operation runs in a worker thread; the event loop only awaits it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any, AsyncIterable, BinaryIO, Callable, Iterator

from homeserver.files import fsync_dir
from homeserver.storage import sql
from homeserver.storage.sealed_files import FileSealer, open_plain, reseal

log = logging.getLogger(__name__)

# Chunks from the network are gathered into writes of about this size (fewer thread hops).
WRITE_BATCH = 1024 * 1024
READ_CHUNK = 256 * 1024


class TooLarge(Exception):
    """The stream went over the size limit; nothing was stored."""


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class MediaStore:
    """The content-addressed file store of one homeserver."""

    def __init__(self, root: Path, keyring: Callable[[], Any] | None = None) -> None:
        """`keyring` returns the server's LiveKeyring; without one (tools, tests of the file
        layout) files are stored as plaintext."""
        self.root = root
        self.tmp = root / "tmp"
        self._keyring = keyring or (lambda: None)

    def path_for(self, sha256: str) -> Path:
        if not _is_sha256(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def _prepare(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            try:
                leftover.unlink()
            except OSError as e:
                log.warning("could not remove leftover temporary media file %s: %s", leftover, e)

    async def prepare(self) -> None:
        """Create the directories and remove temporary files a crash may have left."""
        await asyncio.to_thread(self._prepare)

    def _new_temp(self) -> tuple[Path, Any]:
        self.tmp.mkdir(parents=True, exist_ok=True)
        path = self.tmp / f"{secrets.token_hex(16)}.part"
        return path, open(path, "xb")

    def _commit(self, tmp_path: Path, fh: Any, sha256: str) -> None:
        """fsync and move a finished temporary file to its content address (or drop it when
        those bytes are already stored)."""
        try:
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fh.close()
        final = self.path_for(sha256)
        if final.exists():
            tmp_path.unlink(missing_ok=True)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_path, final)
        fsync_dir(final.parent)

    @staticmethod
    def _discard(tmp_path: Path, fh: Any) -> None:
        try:
            fh.close()
        finally:
            tmp_path.unlink(missing_ok=True)

    @staticmethod
    def _write(out: Any, hasher: Any, data: bytes) -> None:
        hasher.update(data)  # the content address is the hash of the plaintext
        out.write(data)

    async def write_stream(self, chunks: AsyncIterable[bytes], max_bytes: int) -> tuple[str, int]:
        """Store everything `chunks` yields; (sha256, size). TooLarge as soon as the total goes
        over `max_bytes`, and then nothing is kept. Any other failure also keeps nothing."""
        # A cancellation (the uploader went away) while the worker thread creates the file
        # must not leave it behind: the creation runs to its end and is then discarded.
        creating = asyncio.ensure_future(asyncio.to_thread(self._new_temp))
        try:
            tmp_path, fh = await asyncio.shield(creating)
        except asyncio.CancelledError:
            await asyncio.to_thread(self._discard, *(await creating))
            raise
        live = self._keyring()
        out = fh
        hasher = hashlib.sha256()
        size = 0
        pending: list[bytes] = []
        pending_len = 0
        try:
            if live is not None:  # sealed as it streams in: plaintext never reaches the disk
                out = await asyncio.to_thread(FileSealer, fh, live)
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"more than {max_bytes} bytes")
                pending.append(chunk)
                pending_len += len(chunk)
                if pending_len >= WRITE_BATCH:
                    data = b"".join(pending)
                    pending, pending_len = [], 0
                    await asyncio.to_thread(self._write, out, hasher, data)
            if pending:
                await asyncio.to_thread(self._write, out, hasher, b"".join(pending))
            if out is not fh:
                await asyncio.to_thread(out.close_stream)
            sha256 = hasher.hexdigest()
            await asyncio.to_thread(self._commit, tmp_path, fh, sha256)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self._discard, tmp_path, fh))
            raise
        return sha256, size

    async def write_bytes(self, data: bytes) -> str:
        """Store a small blob (a thumbnail); its sha256."""

        async def one():
            yield data

        sha256, _ = await self.write_stream(one(), len(data))
        return sha256

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self.path_for(sha256).is_file)

    def open(self, sha256: str) -> BinaryIO:
        """Blocking (call it in a worker thread): a seekable file of the plaintext.
        FileNotFoundError when absent."""
        return open_plain(self.path_for(sha256), self._keyring(), sha256)

    async def read(self, sha256: str) -> bytes:
        def whole() -> bytes:
            with self.open(sha256) as fh:
                return fh.read()

        return await asyncio.to_thread(whole)

    async def iter_file(self, sha256: str, chunk_size: int = READ_CHUNK):
        """The file's plaintext in chunks, each read in a worker thread."""
        fh = await asyncio.to_thread(self.open, sha256)
        try:
            while True:
                chunk = await asyncio.to_thread(fh.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            await asyncio.to_thread(fh.close)


    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        """(sha256, path) of every stored file (media and thumbnails). Blocking."""
        for first in sorted(self.root.iterdir()):
            if not (first.is_dir() and len(first.name) == 2):
                continue
            for second in sorted(first.iterdir()):
                for path in sorted(second.iterdir()):
                    if _is_sha256(path.name) and path.is_file():
                        yield path.name, path

    def reseal(self, sha256: str) -> bool:
        """Re-seal one file under the newest key (legacy plaintext too); False when it already
        is. Blocking (nexa rotate-key runs it in worker threads)."""
        live = self._keyring()
        if live is None:
            raise RuntimeError("no at-rest keys to seal with")
        try:
            return reseal(self.path_for(sha256), self.tmp, live, sha256)
        except FileNotFoundError:
            return False


# --- media rows ------------------------------------------------------------------------------

_MEDIA_COLUMNS = ("server_name, media_id, sha256, content_type, size, upload_name, user_id, "
                  "created_ts, unused_expires_ts")


async def get_media(server_name: str, media_id: str) -> dict[str, Any] | None:
    rows = await sql.fetch(
        f"SELECT {_MEDIA_COLUMNS} FROM media WHERE server_name = ? AND media_id = ?",
        [server_name, media_id],
    )
    return rows[0] if rows else None


async def insert_media(server_name: str, media_id: str, *, sha256: str | None,
                       content_type: str | None, size: int | None, upload_name: str | None,
                       user_id: str | None, created_ts: int,
                       unused_expires_ts: int | None = None) -> bool:
    """Insert a row; False when that mxc:// URI already has one (nothing changed then)."""
    rows = await sql.fetch(
        f"INSERT INTO media ({_MEDIA_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (server_name, media_id) DO NOTHING RETURNING media_id",
        [server_name, media_id, sha256, content_type, size, upload_name, user_id, created_ts,
         unused_expires_ts],
    )
    return bool(rows)


async def complete_pending(server_name: str, media_id: str, *, sha256: str, content_type: str,
                           size: int, upload_name: str | None) -> bool:
    """Attach content to an ID made by /create; False when it already had content."""
    rows = await sql.fetch(
        "UPDATE media SET sha256 = ?, content_type = ?, size = ?, upload_name = ?, "
        "unused_expires_ts = NULL WHERE server_name = ? AND media_id = ? AND sha256 IS NULL "
        "RETURNING media_id",
        [sha256, content_type, size, upload_name, server_name, media_id],
    )
    return bool(rows)


async def count_pending(user_id: str, now_ms: int) -> int:
    rows = await sql.fetch(
        "SELECT COUNT(*) AS n FROM media WHERE user_id = ? AND sha256 IS NULL "
        "AND unused_expires_ts > ?",
        [user_id, now_ms],
    )
    return int(rows[0]["n"]) if rows else 0


async def delete_expired_pending(now_ms: int) -> None:
    await sql.execute(
        "DELETE FROM media WHERE sha256 IS NULL AND unused_expires_ts IS NOT NULL "
        "AND unused_expires_ts <= ?",
        [now_ms],
    )


# --- thumbnails ------------------------------------------------------------------------------

async def get_thumbnail(server_name: str, media_id: str, width: int, height: int,
                        method: str) -> dict[str, Any] | None:
    rows = await sql.fetch(
        "SELECT sha256, content_type, size FROM media_thumbnails WHERE server_name = ? "
        "AND media_id = ? AND width = ? AND height = ? AND method = ?",
        [server_name, media_id, width, height, method],
    )
    return rows[0] if rows else None


async def count_thumbnails(server_name: str, media_id: str) -> int:
    rows = await sql.fetch(
        "SELECT COUNT(*) AS n FROM media_thumbnails WHERE server_name = ? AND media_id = ?",
        [server_name, media_id],
    )
    return int(rows[0]["n"]) if rows else 0


async def insert_thumbnail(server_name: str, media_id: str, width: int, height: int, method: str,
                           *, sha256: str, content_type: str, size: int, created_ts: int) -> None:
    await sql.execute(
        "INSERT INTO media_thumbnails (server_name, media_id, width, height, method, sha256, "
        "content_type, size, created_ts) VALUES (?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (server_name, media_id, width, height, method) DO NOTHING",
        [server_name, media_id, width, height, method, sha256, content_type, size, created_ts],
    )
