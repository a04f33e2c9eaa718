"""Writing files so that a crash or a concurrent reader never sees half of one.

Blocking helpers: callers on the event loop run them in a worker thread.
"""

from __future__ import annotations

import os
import secrets


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename into `directory` durable; best effort (some filesystems refuse)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_secret_file(path: str | os.PathLike[str], text: str, *, encoding: str = "ascii",
                      create_only: bool = False) -> None:
    """Atomically (re)write `path` with `text`, never readable by other users.

    A temporary file beside it is created 0600 from the start (no chmod window), fsynced, then
    renamed over `path`, so a reader sees the old file or the new one. With `create_only`,
    FileExistsError if `path` exists (two processes starting at once make one file)."""
    path = os.fspath(path)
    tmp_path = f"{path}.tmp-{secrets.token_hex(6)}"
    # O_EXCL: never reuse (or follow a symlink planted at) the temporary name.
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if create_only:
            os.link(tmp_path, path)  # atomic, and never replaces an existing file
            os.unlink(tmp_path)
        else:
            os.replace(tmp_path, path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))
