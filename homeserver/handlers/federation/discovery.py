"""Server discovery: where to connect for a server name, and which name to present there.

The steps are the spec's ("Resolving server names", server-server API): an IP literal or an
explicit port is used as it is; otherwise `/.well-known/matrix/server` may delegate to another
name, and a name without a port is looked up as an SRV record (`_matrix-fed._tcp`, then the
deprecated `_matrix._tcp`) before falling back to port 8448. What changes along the way is not
only the address: the certificate must be valid for, and the Host header name, the server name
or the delegated name — never the SRV target.

`discover` is the decision alone, with the lookups passed in (tested directly); `DnsLookups`
does SRV and address lookups with dnspython, against the system's resolver or the servers in
`federation.dns_servers`.
"""

from __future__ import annotations

import logging
import random
import socket
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import aiohttp.abc

from homeserver.types import is_ip_literal, split_server_name

log = logging.getLogger(__name__)

DEFAULT_FEDERATION_PORT = 8448
SRV_SERVICES = ("_matrix-fed._tcp", "_matrix._tcp")  # the second is deprecated, still served
DNS_TIMEOUT_S = 5.0

# (priority, weight, port, target) as found in DNS
SrvRecord = tuple[int, int, int, str]


@dataclass(frozen=True)
class Route:
    """How to reach a server: connect to `host`:`port` over HTTPS, check the certificate for
    `tls_name` and send `Host: host_header`."""

    host: str
    port: int
    tls_name: str
    host_header: str

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") \
            else self.host
        return f"https://{host}:{self.port}"

    def request_options(self, headers: dict[str, str]) -> dict[str, Any]:
        """aiohttp request arguments: the Host header and the name the TLS check uses."""
        out: dict[str, Any] = {"headers": {**headers, "Host": self.host_header}}
        if self.tls_name.strip("[]") != self.host.strip("[]"):
            out["server_hostname"] = self.tls_name
        return out


WellKnown = Callable[[str], Awaitable[str | None]]
SrvLookup = Callable[[str], Awaitable[list[SrvRecord]]]


async def discover(server_name: str, well_known: WellKnown, srv: SrvLookup,
                   rng: random.Random | None = None) -> Route:
    """The spec's steps for `server_name` (ValueError if it is malformed)."""
    host, port = split_server_name(server_name)
    if is_ip_literal(host) or port is not None:  # steps 1 and 2
        return Route(host.strip("[]"), port or DEFAULT_FEDERATION_PORT, host.strip("[]"),
                     server_name)
    delegated = await well_known(host)
    if delegated is not None:
        try:
            d_host, d_port = split_server_name(delegated)
        except ValueError:
            log.info("ignoring malformed m.server %r from %s", delegated, host)
        else:
            if is_ip_literal(d_host) or d_port is not None:  # 3.1 and 3.2
                return Route(d_host.strip("[]"), d_port or DEFAULT_FEDERATION_PORT,
                             d_host.strip("[]"), delegated)
            return await _by_srv(d_host, srv, rng)  # 3.3 to 3.5
    return await _by_srv(host, srv, rng)  # 4 to 6


async def _by_srv(name: str, srv: SrvLookup, rng: random.Random | None) -> Route:
    for service in SRV_SERVICES:
        records = order_srv(await srv(f"{service}.{name}"), rng)
        if records:
            _, _, port, target = records[0]
            return Route(target, port, name, name)
    return Route(name, DEFAULT_FEDERATION_PORT, name, name)


def order_srv(records: Sequence[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """RFC 2782 order: lowest priority first; within a priority, a weighted random order.
    A single record with target "." means the service is decidedly not available: none."""
    usable = [(p, w, port, t.rstrip(".")) for p, w, port, t in records if t.rstrip(".")]
    if len(records) == 1 and not usable:
        return []
    rng = rng or random.Random()
    out: list[SrvRecord] = []
    for priority in sorted({r[0] for r in usable}):
        group = [r for r in usable if r[0] == priority]
        while group:
            total = sum(r[1] for r in group)
            pick = rng.uniform(0, total) if total else 0
            for i, r in enumerate(group):
                pick -= r[1]
                if pick <= 0 or i == len(group) - 1:
                    out.append(group.pop(i))
                    break
    return out


class DnsLookups:
    """SRV and address lookups with dnspython: the system's resolver configuration, or the
    DNS servers given ("ip" or "ip:port"). dnspython is imported at the first lookup (3 MiB
    that a server talking only to names with ports, or to none, never needs)."""

    def __init__(self, servers: Sequence[str] = ()) -> None:
        self._servers = list(servers)
        self._resolver: Any = None

    def _get(self) -> Any:
        if self._resolver is None:
            import dns.asyncresolver
            import dns.nameserver

            if self._servers:
                r = dns.asyncresolver.Resolver(configure=False)
                r.nameservers = [dns.nameserver.Do53Nameserver(*parse_dns_server(s))
                                 for s in self._servers]
            else:
                r = dns.asyncresolver.Resolver()
            r.lifetime = DNS_TIMEOUT_S
            self._resolver = r
        return self._resolver

    async def srv(self, name: str) -> list[SrvRecord]:
        resolver = self._get()
        import dns.exception
        import dns.resolver

        try:
            answer = await resolver.resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as e:  # no answer at all: as if there were none
            log.info("SRV lookup for %s failed: %s", name, e)
            return []
        return [(r.priority, r.weight, r.port, r.target.to_text()) for r in answer]

    async def addresses(self, host: str) -> list[tuple[str, int]]:
        """(address, family) for a name: AAAA and A records (CNAMEs followed)."""
        resolver = self._get()
        import dns.exception
        import dns.resolver

        found: list[tuple[str, int]] = []
        for rdtype, family in (("AAAA", socket.AF_INET6), ("A", socket.AF_INET)):
            try:
                answer = await resolver.resolve(host, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as e:
                log.info("%s lookup for %s failed: %s", rdtype, host, e)
                continue
            found += [(r.address, family) for r in answer]
        return found


class DnsResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's connections resolved through DnsLookups (used when `federation.dns_servers`
    is set, so that the names found in SRV records resolve with the same servers)."""

    def __init__(self, lookups: DnsLookups) -> None:
        self._lookups = lookups

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        if is_ip_literal(host):
            addr = host.strip("[]")
            return [{"hostname": host, "host": addr, "port": port,
                     "family": socket.AF_INET6 if ":" in addr else socket.AF_INET,
                     "proto": 0, "flags": socket.AI_NUMERICHOST}]
        found = await self._lookups.addresses(host)
        if family in (socket.AF_INET, socket.AF_INET6):
            found = [a for a in found if a[1] == family] or found
        if not found:
            raise OSError(f"{host}: no address found")
        return [{"hostname": host, "host": a, "port": port, "family": f, "proto": 0,
                 "flags": socket.AI_NUMERICHOST} for a, f in found]

    async def close(self) -> None:
        return None


def parse_dns_server(value: str) -> tuple[str, int]:
    """"ip" or "ip:port" ("[v6]:port") -> (ip, port); ValueError if it is not that."""
    if is_ip_literal(value):  # a bare IPv6 address has colons of its own
        return value.strip("[]"), 53
    host, port = split_server_name(value)
    host = host.strip("[]")
    if not is_ip_literal(host):
        raise ValueError(f"{value!r} is not an IP address (with an optional port)")
    return host, port or 53
