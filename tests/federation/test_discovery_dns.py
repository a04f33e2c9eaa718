"""Server discovery over real DNS and TLS: a server named `b.test` is found through its SRV
record (`_matrix-fed._tcp.b.test` -> b-host.test:<port>), served by dnsmasq from Debian, and
reached over HTTPS with its certificate checked for `b.test` (the server name), not for the
SRV target. The other server (`localhost:<port>`, explicit port: no lookup) is reached back
over HTTPS the same way, so each fetches the other's signing keys."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess

import aiohttp
import pytest

from homeserver.handlers.federation.discovery import Route
from tests.servers import start_server
from tests.tls import self_signed_cert

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _dns_answers(port: int, name: str) -> bool:
    import dns.asyncresolver
    import dns.exception
    import dns.nameserver

    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", port)]
    r.lifetime = 1.0
    try:
        await r.resolve(name, "SRV")
        return True
    except dns.exception.DNSException:
        return False


@pytest.fixture
async def dnsmasq(tmp_path):
    """start(records) -> the port of a dnsmasq answering only for *.test from `records`."""
    if not os.path.exists(DNSMASQ):
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base; scripts/test "
                    "installs it)")
    procs: list[subprocess.Popen] = []

    async def start(*options: str) -> int:
        for _ in range(5):  # a free port can be taken between the probe and dnsmasq's bind
            port = _free_udp_port()
            proc = subprocess.Popen(
                [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                 "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1",
                 f"--port={port}", "--local=/test/", "--user=root", "--pid-file=",
                 "--log-facility=-", *options],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            procs.append(proc)
            async with asyncio.timeout(10):
                while proc.poll() is None:
                    if await _dns_answers(port, "_matrix-fed._tcp.b.test"):
                        return port
            # it exited: most likely the port was taken; try another
        pytest.fail("dnsmasq did not start: " + procs[-1].stderr.read().decode()[-500:])

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


async def test_srv_record_finds_a_server_checked_under_its_own_name(backend, tmp_path,
                                                                      dnsmasq):
    cert, key = self_signed_cert(tmp_path, ("b.test", "localhost", "127.0.0.1"))
    fed = {"plain_http": False, "allow": ["localhost:*", "b.test"], "ca_file": str(cert),
           "retry_base_ms": 50, "retry_max_ms": 1000}
    b = await start_server(tmp_path, backend, server_name="b.test", tls=(cert, key),
                           federation=fed)
    dns_port = await dnsmasq(f"--srv-host=_matrix-fed._tcp.b.test,b-host.test,{b.port},0,5",
                             "--host-record=b-host.test,127.0.0.1")
    a = await start_server(tmp_path, backend, tls=(cert, key),
                           federation={**fed, "dns_servers": [f"127.0.0.1:{dns_port}"]})
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as http:
            async def register(srv, name: str) -> str:
                async with http.post(f"{srv.base_url}/_matrix/client/v3/register",
                                     json={"username": name, "password": "Correct-Horse-42",
                                           "auth": {"type": "m.login.dummy"}}) as r:
                    assert r.status == 200, await r.text()
                    return (await r.json())["access_token"]

            bob = await register(b, "bob")
            async with http.put(f"{b.base_url}/_matrix/client/v3/profile/@bob:b.test/"
                                "displayname", json={"displayname": "Bob of b.test"},
                                headers={"Authorization": f"Bearer {bob}"}) as r:
                assert r.status == 200, await r.text()
            alice = await register(a, "alice")
            # Alice's server asks b.test for Bob's profile over federation.
            async with http.get(f"{a.base_url}/_matrix/client/v3/profile/@bob:b.test",
                                headers={"Authorization": f"Bearer {alice}"}) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["displayname"] == "Bob of b.test"
        # Found through the SRV record: connected to its target and port, with the server
        # name for the certificate and the Host header (the certificate is not valid for
        # b-host.test, so checking the wrong name would have failed the request).
        routes = a.hs.federation_client._routes
        assert routes["b.test"][1] == Route("b-host.test", b.port, "b.test", "b.test")
    finally:
        await a.destroy()
        await b.destroy()
