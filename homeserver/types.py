"""Identifiers and stream tokens: small value types shared by every layer."""

from __future__ import annotations

import ipaddress

import re
import secrets
import string
import time
from dataclasses import dataclass, fields, replace

from homeserver.errors import MatrixError

# Localparts for new users (spec "user identifiers"): lowercase, digits and ._=-/+
LOCALPART_RE = re.compile(r"^[a-z0-9._=\-/+]+$")
# Historical user IDs may contain any printable ASCII except ':'.
HISTORICAL_LOCALPART_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
SERVER_NAME_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+)(:[0-9]{1,5})?$")
MAX_ID_LENGTH = 255


def now_ms() -> int:
    return int(time.time() * 1000)


def random_string(n: int, alphabet: str = string.ascii_letters) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def is_valid_server_name(name: str) -> bool:
    return bool(SERVER_NAME_RE.match(name)) and len(name) <= MAX_ID_LENGTH


def split_server_name(server_name: str) -> tuple[str, int | None]:
    """'host[:port]' or '[v6]:port' -> (host, port); ValueError if malformed."""
    if not isinstance(server_name, str) or not server_name:
        raise ValueError("empty server name")
    if server_name.startswith("["):
        host, sep, rest = server_name.partition("]")
        host += "]"
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed server name {server_name!r}")
        port_s = rest[1:] if rest else ""
    elif server_name.count(":") == 1:
        host, _, port_s = server_name.partition(":")
    elif ":" in server_name:
        raise ValueError(f"malformed server name {server_name!r}")
    else:
        host, port_s = server_name, ""
    if not host or any(c.isspace() or c in "/@#?" for c in host):
        raise ValueError(f"malformed server name {server_name!r}")
    if not port_s:
        return host, None
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"bad port in server name {server_name!r}")
    return host, int(port_s)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def split_id(sigil: str, value: object) -> tuple[str, str] | None:
    """'@a:b' -> ('a', 'b'); None when the value is not a well-formed ID with that sigil."""
    if not isinstance(value, str) or len(value) > MAX_ID_LENGTH or not value.startswith(sigil):
        return None
    if "\x00" in value:  # no identifier grammar allows NUL (nor can PostgreSQL text hold it)
        return None
    local, sep, server = value[1:].partition(":")
    if not sep or not local or not is_valid_server_name(server):
        return None
    return local, server


def parse_user_id(value: object, *, param: str = "user_id") -> tuple[str, str]:
    parts = split_id("@", value)
    if parts is None or not HISTORICAL_LOCALPART_RE.match(parts[0]):
        raise MatrixError(400, "M_INVALID_PARAM", f"{param} is not a valid user ID")
    return parts


def is_valid_user_id(value: object) -> bool:
    parts = split_id("@", value)
    return parts is not None and bool(HISTORICAL_LOCALPART_RE.match(parts[0]))


def is_valid_room_id(value: object) -> bool:
    return split_id("!", value) is not None


def is_valid_room_alias(value: object) -> bool:
    return split_id("#", value) is not None


def server_of(identifier: str) -> str:
    return identifier.partition(":")[2]


def new_room_id(server_name: str) -> str:
    return f"!{random_string(18)}:{server_name}"


def new_device_id() -> str:
    return random_string(10, string.ascii_uppercase)


@dataclass(frozen=True)
class StreamToken:
    """Position in every stream /sync reads; serialised as s<events>_<receipts>_<...>.

    Incremental sync is "everything after these positions", so each component is a
    monotonically increasing per-server counter.
    """

    events: int = 0
    receipts: int = 0
    account_data: int = 0
    presence: int = 0
    typing: int = 0
    to_device: int = 0
    device_lists: int = 0

    def serialize(self) -> str:
        return "s" + "_".join(map(str, self.as_tuple()))

    def as_tuple(self) -> tuple[int, ...]:
        # Spelled out: this runs for every /sync wake-up, where dataclasses.fields() showed up.
        return (self.events, self.receipts, self.account_data, self.presence, self.typing,
                self.to_device, self.device_lists)

    @classmethod
    def parse(cls, token: object, *, param: str = "since") -> StreamToken:
        """Accepts sync tokens and the bare pagination tokens ("t<n>" / "s<n>")."""
        if not isinstance(token, str) or len(token) > 200 or token[:1] not in ("s", "t"):
            raise MatrixError(400, "M_INVALID_PARAM", f"{param} is not a valid token")
        parts = token[1:].split("_")
        names = _TOKEN_FIELDS
        # Pagination positions may be negative (history backfilled from other servers).
        if token[0] == "t" and len(parts) == 1 and parts[0].startswith("-"):
            parts = ["-" + parts[0][1:]] if parts[0][1:].isdigit() else ["x"]
        if len(parts) > len(names) or not all(
                (p[1:] if p.startswith("-") and token[0] == "t" else p).isdigit() and len(p) < 20
                for p in parts):
            raise MatrixError(400, "M_INVALID_PARAM", f"{param} is not a valid token")
        values = {n: int(p) for n, p in zip(names, parts)}
        if not all(-(2**63) <= v < 2**63 for v in values.values()):  # BIGINT positions
            raise MatrixError(400, "M_INVALID_PARAM", f"{param} is not a valid token")
        return cls(**values)

    def copy_with(self, **kw: int) -> StreamToken:
        return replace(self, **kw)

    def is_after(self, other: StreamToken) -> bool:
        """True when any stream has advanced past `other`."""
        return any(a > b for a, b in zip(self.as_tuple(), other.as_tuple()))


# Every /sync parses its since token: the field names once, not per call.
_TOKEN_FIELDS = tuple(f.name for f in fields(StreamToken))
