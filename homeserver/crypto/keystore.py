"""Where the at-rest keys live: a key file (0600, generated on first start) or the
NEXA_AT_REST_KEY environment variable, and the live keyring a running server uses.

The file is written the way the signing key is (homeserver/files.py): a temporary file created
0600 from the start, fsynced, renamed over the old one, so a reader sees the old file or the
new one, never half of one. `nexa rotate-key` adds keys to it while the server runs; the
server notices (a stat at most once a second when it seals, and at once when it meets a key
ID it does not know) and reloads, so rows sealed under the new key are readable right away
and new rows are sealed under it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Mapping

from homeserver.crypto.at_rest import (AtRestError, Keyring, KeyFormatError, UnknownKeyError,
                                       format_keys, new_key, new_key_id, parse_keys)
from homeserver.files import write_secret_file

log = logging.getLogger(__name__)

ENV_VAR = "NEXA_AT_REST_KEY"
# How often a running server looks at the key file's mtime when it seals something.
CHECK_INTERVAL_S = 1.0


def save_keys(path: str | os.PathLike[str], entries: list[tuple[str, bytes]],
              *, create_only: bool = False) -> None:
    """Atomically (re)write the key file, never readable by other users. With `create_only`,
    FileExistsError if there is one already (two processes starting at once make one key)."""
    write_secret_file(path, format_keys(entries), create_only=create_only)


def read_key_file(path: str | os.PathLike[str]) -> Keyring:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise KeyFormatError(f"at-rest key file {path} is not ASCII text") from None
    return Keyring(parse_keys(text, f"at-rest key file {path}"))


def load_or_generate(path: str | os.PathLike[str]) -> tuple[Keyring, bool]:
    """The keyring in `path`, and whether this call created the file (with one fresh key)
    because there was none."""
    try:
        return read_key_file(path), False
    except FileNotFoundError:
        pass
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    entries = [(new_key_id(), new_key())]
    try:
        save_keys(path, entries, create_only=True)
    except FileExistsError:  # another process made it first: use that one
        return read_key_file(path), False
    log.warning("generated at-rest encryption key file %s: back it up, without it the stored "
                "history cannot be read", path)
    return Keyring(entries), True


def add_key(path: str | os.PathLike[str]) -> Keyring:
    """Append a fresh key (it becomes the one that seals); the new keyring."""
    ring = read_key_file(path).with_new_key()
    save_keys(path, list(ring.entries))
    return ring


def retire_old_keys(path: str | os.PathLike[str], keep: str) -> Keyring:
    """Keep only key `keep` (which must be the newest) in the file."""
    ring = read_key_file(path)
    if ring.current_id != keep:
        raise AtRestError(f"key {keep!r} is no longer the newest in {path}; not retiring")
    new = ring.newest_only()
    save_keys(path, list(new.entries))
    return new


def env_keys(environ: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if environ is None else environ).get(ENV_VAR)
    return value if value and value.strip() else None


def _file_signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class LiveKeyring:
    """The keyring of a running process, reloaded when its file changes.

    Keys from the environment never change while the process runs (a new key there needs a
    restart, see docs/at-rest-encryption.md)."""

    def __init__(self, ring: Keyring, path: str | os.PathLike[str] | None = None,
                 generated: bool = False) -> None:
        self.ring = ring
        self.path = os.fspath(path) if path is not None else None
        # True when this process made the key file (there was none).
        self.generated = generated
        self._signature = _file_signature(self.path) if self.path else None
        self._checked = time.monotonic()
        # Media work runs in worker threads: one reload at a time.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, key_file: str | os.PathLike[str],
             environ: Mapping[str, str] | None = None) -> LiveKeyring:
        """From NEXA_AT_REST_KEY when set (the file is then neither read nor made), else from
        the key file, generated on first use."""
        text = env_keys(environ)
        if text is not None:
            return cls(Keyring(parse_keys(text, ENV_VAR)))
        ring, created = load_or_generate(key_file)
        if not created and os.stat(key_file).st_mode & 0o077:
            log.warning("at-rest key file %s is readable by other users: chmod 600 it",
                        key_file)
        return cls(ring, key_file, generated=created)

    @property
    def source(self) -> str:
        return self.path or ENV_VAR

    @property
    def current_id(self) -> str:
        self._maybe_reload()
        return self.ring.current_id

    def reload_if_changed(self) -> bool:
        """Re-read the key file if it changed since last read; True when it did."""
        if self.path is None:
            return False
        with self._lock:
            self._checked = time.monotonic()
            sig = _file_signature(self.path)
            if sig == self._signature or sig is None:
                return False
            try:
                ring = read_key_file(self.path)
            except (OSError, AtRestError) as e:
                log.error("at-rest key file %s changed but cannot be used (%s); keeping the "
                          "keys already loaded", self.path, e)
                return False
            missing = [k for k in self.ring.ids if k not in ring]
            self.ring, self._signature = ring, sig
            log.info("at-rest keys reloaded from %s: sealing with %s%s", self.path,
                     ring.current_id, f", retired {missing}" if missing else "")
            return True

    def _maybe_reload(self) -> None:
        if self.path is not None and time.monotonic() - self._checked >= CHECK_INTERVAL_S:
            self.reload_if_changed()

    def keyring_for(self, key_id: str) -> Keyring:
        """A keyring that has `key_id`, reloading once if this one does not."""
        ring = self.ring
        if key_id in ring:
            return ring
        self.reload_if_changed()
        if key_id not in self.ring:
            raise UnknownKeyError(key_id)
        return self.ring

    def sealing_ring(self) -> Keyring:
        self._maybe_reload()
        return self.ring

    def seal(self, plaintext: bytes, aad: bytes) -> str:
        self._maybe_reload()
        return self.ring.seal(plaintext, aad)

    def open(self, value: str, aad: bytes) -> bytes:
        try:
            return self.ring.open(value, aad)
        except UnknownKeyError as e:
            return self.keyring_for(e.key_id).open(value, aad)

    def __repr__(self) -> str:
        return f"LiveKeyring({self.ring!r}, source={self.source!r})"
