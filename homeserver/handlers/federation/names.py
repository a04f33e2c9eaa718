"""Server names: 'host[:port]', split and checked (spec: "Server name" grammar)."""

from __future__ import annotations

import ipaddress


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
