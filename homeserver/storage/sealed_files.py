"""Files sealed at rest (crypto/segmented.py) on disk: a seekable plaintext reader over a sealed
file, a writer that seals while bytes stream in, and re-sealing under a newer key.

All of it is blocking file I/O: callers run it in worker threads. A file that does not start
with a sealed header is legacy plaintext (stored before encryption at rest) and is read as it
is; `nexa rotate-key` seals it.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, BinaryIO

from homeserver.crypto.at_rest import AtRestError
from homeserver.crypto.segmented import (MAX_HEADER_BYTES, TAG_BYTES, SegmentSealer,
                                         StreamHeader, build_header, layout, open_segment,
                                         parse_header, segment_offset)

# Reads of the underlying file and of plaintext for re-sealing.
COPY_CHUNK = 1024 * 1024


class SealedReader(io.RawIOBase):
    """The plaintext of a sealed file, with seek (Range requests start anywhere, Pillow seeks).
    One decrypted segment is kept, so sequential reads decrypt each segment once."""

    def __init__(self, fh: BinaryIO, header: StreamHeader, aead: Any) -> None:
        super().__init__()
        self._fh = fh
        self.header = header
        self._aead = aead
        self._count, self.length = layout(header, os.fstat(fh.fileno()).st_size)
        self._pos = 0
        self._cached_index = -1
        self._cached = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.length + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def segment(self, index: int) -> bytes:
        if index != self._cached_index:
            stride = self.header.segment_size + TAG_BYTES
            self._fh.seek(segment_offset(self.header, index))
            sealed = self._fh.read(stride)
            self._cached = open_segment(self._aead, self.header, index,
                                        index == self._count - 1, sealed)
            self._cached_index = index
        return self._cached

    def readinto(self, buf: Any) -> int:
        if self._pos >= self.length:
            return 0
        size = self.header.segment_size
        index, offset = divmod(self._pos, size)
        plain = self.segment(index)
        n = min(len(buf), len(plain) - offset)
        buf[:n] = plain[offset:offset + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


def _is_legacy(fh: BinaryIO, sha256: str | None) -> bool:
    """A file that does not open as sealed is plaintext from before encryption at rest only if
    it still hashes to its content address."""
    if sha256 is None:
        return False
    fh.seek(0)
    h = hashlib.sha256()
    while chunk := fh.read(COPY_CHUNK):
        h.update(chunk)
    return h.hexdigest() == sha256


def open_plain(path: Path, live: Any, sha256: str | None = None) -> BinaryIO:
    """A readable, seekable file of the plaintext at `path` (sealed or legacy plaintext).
    `live` is the LiveKeyring (None: only plaintext files can be read). Blocking."""
    fh = open(path, "rb")
    try:
        head = fh.read(MAX_HEADER_BYTES)
        try:
            header = parse_header(head)
            if header is None:
                fh.seek(0)
                return fh
            if live is None:
                raise AtRestError(f"{path} is sealed and no at-rest keys are loaded")
            reader = SealedReader(fh, header, live.keyring_for(header.key_id).aead(
                header.key_id))
            reader.segment(0)  # fails here, before any byte is served, if the key is wrong
        except AtRestError:
            if _is_legacy(fh, sha256):
                fh.seek(0)
                return fh
            raise
        return io.BufferedReader(reader, buffer_size=COPY_CHUNK)
    except BaseException:
        fh.close()
        raise


def file_key_id(path: Path) -> str | None:
    """The key a file is sealed under; None for plaintext. Blocking."""
    with open(path, "rb") as fh:
        try:
            header = parse_header(fh.read(MAX_HEADER_BYTES))
        except AtRestError:
            return None
    return header.key_id if header else None


class FileSealer:
    """Seals bytes written to an open file: write() as they come, then close_stream()."""

    def __init__(self, fh: BinaryIO, live: Any) -> None:
        ring = live.sealing_ring()
        header = build_header(ring.current_id)
        self._fh = fh
        self._sealer = SegmentSealer(ring.aead(ring.current_id), header)
        fh.write(header.raw)

    def write(self, data: bytes) -> None:
        out = self._sealer.update(data)
        if out:
            self._fh.write(out)

    def close_stream(self) -> None:
        self._fh.write(self._sealer.finish())


def reseal(path: Path, tmp_dir: Path, live: Any, sha256: str | None = None) -> bool:
    """Re-seal the file under the newest key (sealing legacy plaintext too), replacing it
    atomically; False when it already is under that key. A reader that has the old file open
    keeps reading the old one. Blocking."""
    current = live.sealing_ring().current_id
    if file_key_id(path) == current:
        return False
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"reseal-{os.urandom(8).hex()}.part"
    try:
        with open_plain(path, live, sha256) as src, open(tmp, "xb") as out:
            sealer = FileSealer(out, live)
            while chunk := src.read(COPY_CHUNK):
                sealer.write(chunk)
            sealer.close_stream()
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True
