"""Server discovery's decision (handlers/federation/discovery.py), step by step as the spec
lists them, with the /.well-known and SRV lookups given as tables."""

from __future__ import annotations

import random

import pytest

from homeserver.handlers.federation.discovery import (Route, discover, order_srv,
                                                      parse_dns_server)


def lookups(well_known: dict[str, str] | None = None,
            srv: dict[str, list[tuple[int, int, int, str]]] | None = None):
    asked: list[str] = []

    async def wk(host: str) -> str | None:
        asked.append(f"wk {host}")
        return (well_known or {}).get(host)

    async def srv_lookup(name: str):
        asked.append(f"srv {name}")
        return (srv or {}).get(name, [])

    return wk, srv_lookup, asked


@pytest.mark.parametrize("name, route", [
    # 1. an IP literal: itself, its port or 8448; certificate and Host for the literal
    ("192.0.2.7", Route("192.0.2.7", 8448, "192.0.2.7", "192.0.2.7")),
    ("[2001:db8::1]:8000", Route("2001:db8::1", 8000, "2001:db8::1", "[2001:db8::1]:8000")),
    # 2. a name with a port: no lookups; Host includes the port
    ("example.org:8443", Route("example.org", 8443, "example.org", "example.org:8443")),
])
async def test_literal_or_explicit_port_needs_no_lookup(name, route):
    wk, srv, asked = lookups()
    assert await discover(name, wk, srv) == route
    assert asked == []


async def test_delegation_to_an_ip_or_a_name_with_a_port():
    wk, srv, asked = lookups(well_known={"a.org": "192.0.2.9", "b.org": "fed.b.org:443"})
    assert await discover("a.org", wk, srv) == Route("192.0.2.9", 8448, "192.0.2.9",
                                                     "192.0.2.9")
    assert await discover("b.org", wk, srv) == Route("fed.b.org", 443, "fed.b.org",
                                                     "fed.b.org:443")
    assert asked == ["wk a.org", "wk b.org"]  # 3.1 and 3.2: no SRV lookup


async def test_delegated_name_without_port_is_looked_up_as_srv():
    wk, srv, asked = lookups(
        well_known={"c.org": "matrix.c.org"},
        srv={"_matrix-fed._tcp.matrix.c.org": [(10, 0, 8765, "host1.c.org.")]})
    # 3.3: connect to the SRV target, but certificate and Host are the delegated name
    assert await discover("c.org", wk, srv) == Route("host1.c.org", 8765, "matrix.c.org",
                                                     "matrix.c.org")
    assert asked == ["wk c.org", "srv _matrix-fed._tcp.matrix.c.org"]


async def test_deprecated_srv_then_port_8448_for_a_delegated_name():
    wk, srv, asked = lookups(
        well_known={"d.org": "m.d.org", "e.org": "m.e.org"},
        srv={"_matrix._tcp.m.d.org": [(0, 0, 9000, "old.d.org")]})
    assert await discover("d.org", wk, srv) == Route("old.d.org", 9000, "m.d.org", "m.d.org")
    assert await discover("e.org", wk, srv) == Route("m.e.org", 8448, "m.e.org", "m.e.org")
    assert asked[-3:] == ["wk e.org", "srv _matrix-fed._tcp.m.e.org", "srv _matrix._tcp.m.e.org"]


async def test_without_delegation_the_server_name_itself_is_looked_up():
    wk, srv, asked = lookups(srv={"_matrix-fed._tcp.f.org": [(0, 0, 1234, "srv.f.org")]})
    # 4: SRV for the server name; certificate and Host are the server name
    assert await discover("f.org", wk, srv) == Route("srv.f.org", 1234, "f.org", "f.org")
    # 6: nothing found: port 8448 (Host without the port)
    assert await discover("g.org", wk, srv) == Route("g.org", 8448, "g.org", "g.org")
    assert asked == ["wk f.org", "srv _matrix-fed._tcp.f.org",
                     "wk g.org", "srv _matrix-fed._tcp.g.org", "srv _matrix._tcp.g.org"]


async def test_malformed_delegation_is_ignored_and_malformed_names_refused():
    wk, srv, _ = lookups(well_known={"h.org": "bad name:99999"})
    assert await discover("h.org", wk, srv) == Route("h.org", 8448, "h.org", "h.org")
    with pytest.raises(ValueError):
        await discover("bad name", wk, srv)


def test_srv_order_priority_then_weight():
    records = [(20, 5, 1, "late"), (10, 1, 2, "light"), (10, 3, 3, "heavy"),
               (10, 0, 4, "zero-weight")]
    orders = [[r[3] for r in order_srv(records, random.Random(seed))] for seed in range(400)]
    assert all(o[-1] == "late" for o in orders)  # the lower priority value always first
    firsts = [o[0] for o in orders]
    # RFC 2782: weighted random within a priority; weight 0 only when nothing else is left
    assert set(firsts) == {"light", "heavy"}
    assert firsts.count("heavy") > firsts.count("light")
    assert all(o[2] == "zero-weight" for o in orders)


def test_srv_single_dot_target_means_no_service():
    assert order_srv([(0, 0, 0, ".")]) == []
    assert order_srv([]) == []


def test_dns_server_entries():
    assert parse_dns_server("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_dns_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_dns_server("::1") == ("::1", 53)
    assert parse_dns_server("[::1]:5353") == ("::1", 5353)
    for bad in ("dns.example", "1.2.3.4:0", ""):
        with pytest.raises(ValueError):
            parse_dns_server(bad)
