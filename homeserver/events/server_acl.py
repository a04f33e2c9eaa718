"""m.room.server_acl: which servers may take part in a room (pure logic)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from homeserver.types import is_ip_literal


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern:
    # '*' matches any run of characters, '?' exactly one; nothing else is special.
    parts = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in pattern)
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE)


def _host(server_name: str) -> str:
    if server_name.startswith("["):
        return server_name[: server_name.find("]") + 1]
    return server_name.rsplit(":", 1)[0] if server_name.count(":") == 1 else server_name


def server_allowed_by_acl(content: Any, server_name: str) -> bool:
    """The spec's check: IP literals, then deny globs, then allow globs (port ignored)."""
    if not isinstance(content, dict):
        return True
    host = _host(server_name)
    if content.get("allow_ip_literals", True) is False and is_ip_literal(host):
        return False
    deny = [p for p in content.get("deny", []) if isinstance(p, str)] \
        if isinstance(content.get("deny"), list) else []
    allow = [p for p in content.get("allow", []) if isinstance(p, str)] \
        if isinstance(content.get("allow"), list) else []
    if any(_glob(p).match(host) for p in deny):
        return False
    return any(_glob(p).match(host) for p in allow)
