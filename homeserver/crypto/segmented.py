"""Segmented AES-256-GCM for files (media and thumbnails), pure: bytes in, bytes out.

A large file must stream in both directions and a Range request must start anywhere, so the
plaintext is cut into fixed-size segments each sealed on its own (the STREAM construction):

    header:  b"NXS1" | u8 len(key_id) | key_id | u32 segment_size | nonce_prefix[7]
    segment: AES-GCM(plaintext[i*size:(i+1)*size]) | tag[16], for i = 0, 1, ...

Segment i's nonce is nonce_prefix | u32 i | u8 last (1 only on the final segment) and its
associated data is the whole header, so segments cannot be reordered, dropped, moved between
files or cut off at the end without failing authentication. Every segment but the last holds
exactly segment_size bytes; an empty file is a single empty final segment. The nonce prefix is
random per file, so the same bytes sealed twice give unrelated ciphertexts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from homeserver.crypto.at_rest import KEY_ID_RE, DecryptionError

MAGIC = b"NXS1"
SEGMENT_SIZE = 64 * 1024
NONCE_PREFIX_BYTES = 7
TAG_BYTES = 16
MAX_HEADER_BYTES = len(MAGIC) + 1 + 32 + 4 + NONCE_PREFIX_BYTES
MAX_SEGMENTS = 2**32


class StreamFormatError(DecryptionError):
    """Not a well-formed sealed file (truncated header, bad sizes)."""


@dataclass(frozen=True)
class StreamHeader:
    key_id: str
    segment_size: int
    nonce_prefix: bytes
    raw: bytes

    @property
    def size(self) -> int:
        return len(self.raw)

    def nonce(self, index: int, last: bool) -> bytes:
        if not 0 <= index < MAX_SEGMENTS:
            raise StreamFormatError("segment index out of range")
        return self.nonce_prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def build_header(key_id: str, segment_size: int = SEGMENT_SIZE,
                 nonce_prefix: bytes | None = None) -> StreamHeader:
    if not KEY_ID_RE.match(key_id):
        raise ValueError("invalid key ID")
    if not 16 <= segment_size < 2**31:
        raise ValueError("segment size out of range")
    prefix = nonce_prefix if nonce_prefix is not None else os.urandom(NONCE_PREFIX_BYTES)
    if len(prefix) != NONCE_PREFIX_BYTES:
        raise ValueError("nonce prefix must be 7 bytes")
    kid = key_id.encode("ascii")
    raw = MAGIC + bytes([len(kid)]) + kid + segment_size.to_bytes(4, "big") + prefix
    return StreamHeader(key_id, segment_size, prefix, raw)


def parse_header(data: bytes) -> StreamHeader | None:
    """The header at the start of `data` (read at least MAX_HEADER_BYTES when the file is that
    long); None when the bytes do not start with the magic (a legacy plaintext file)."""
    if not data.startswith(MAGIC):
        return None
    pos = len(MAGIC)
    if len(data) < pos + 1:
        raise StreamFormatError("truncated header")
    n = data[pos]
    pos += 1
    end = pos + n + 4 + NONCE_PREFIX_BYTES
    if len(data) < end:
        raise StreamFormatError("truncated header")
    try:
        key_id = data[pos:pos + n].decode("ascii")
    except UnicodeDecodeError:
        raise StreamFormatError("bad key ID") from None
    if not KEY_ID_RE.match(key_id):
        raise StreamFormatError("bad key ID")
    pos += n
    segment_size = int.from_bytes(data[pos:pos + 4], "big")
    if not 16 <= segment_size < 2**31:
        raise StreamFormatError("bad segment size")
    prefix = data[pos + 4:end]
    return StreamHeader(key_id, segment_size, prefix, data[:end])


def layout(header: StreamHeader, file_size: int) -> tuple[int, int]:
    """(segment count, plaintext size) of a sealed file of `file_size` bytes."""
    body = file_size - header.size
    stride = header.segment_size + TAG_BYTES
    if body < TAG_BYTES:
        raise StreamFormatError("truncated file")
    count = -(-body // stride)
    last = body - (count - 1) * stride
    if last < TAG_BYTES:
        raise StreamFormatError("truncated segment")
    return count, body - count * TAG_BYTES


def segment_offset(header: StreamHeader, index: int) -> int:
    """Where segment `index` starts in the file."""
    return header.size + index * (header.segment_size + TAG_BYTES)


def open_segment(aead: AESGCM, header: StreamHeader, index: int, last: bool,
                 sealed: bytes) -> bytes:
    try:
        return aead.decrypt(header.nonce(index, last), sealed, header.raw)
    except InvalidTag:
        raise DecryptionError(f"file segment {index} does not authenticate (wrong key, "
                              "truncated or altered)") from None


class SegmentSealer:
    """Seals a byte stream as it arrives: `header.raw`, then whatever `update` and `finish`
    return, written in order, make the sealed file."""

    def __init__(self, aead: AESGCM, header: StreamHeader) -> None:
        self.aead = aead
        self.header = header
        self._buf = bytearray()
        self._index = 0
        self._done = False

    def _seal(self, chunk: bytes, last: bool) -> bytes:
        out = self.aead.encrypt(self.header.nonce(self._index, last), chunk, self.header.raw)
        self._index += 1
        return out

    def update(self, data: bytes) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        self._buf += data
        size = self.header.segment_size
        # A full segment is held back until more bytes arrive: only then is it known not to
        # be the last one.
        ready = (len(self._buf) - 1) // size if self._buf else 0
        if not ready:
            return b""
        out = [self._seal(bytes(self._buf[i * size:(i + 1) * size]), False)
               for i in range(ready)]
        del self._buf[:ready * size]
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        self._done = True
        out = self._seal(bytes(self._buf), True)
        self._buf.clear()
        return out


def seal_bytes(aead: AESGCM, header: StreamHeader, data: bytes) -> bytes:
    """A whole sealed file in memory (small blobs and tests)."""
    sealer = SegmentSealer(aead, header)
    return header.raw + sealer.update(data) + sealer.finish()


def open_bytes(aead: AESGCM, data: bytes) -> bytes:
    """The plaintext of a whole sealed file in memory."""
    header = parse_header(data[:MAX_HEADER_BYTES])
    if header is None:
        raise StreamFormatError("not a sealed file")
    count, _ = layout(header, len(data))
    stride = header.segment_size + TAG_BYTES
    out = []
    for i in range(count):
        start = segment_offset(header, i)
        out.append(open_segment(aead, header, i, i == count - 1, data[start:start + stride]))
    return b"".join(out)
