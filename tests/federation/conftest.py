"""Several real homeservers federating over plain HTTP on loopback."""

from __future__ import annotations

import pytest

from tests.client import Api
from tests.servers import start_server

FED = {"plain_http": True, "allow": ["localhost:*", "127.0.0.*:*"],
       "retry_base_ms": 50, "retry_max_ms": 1000}


@pytest.fixture
async def servers(backend, tmp_path):
    started = []

    async def make(n: int = 3, host: str = "127.0.0.1"):
        for _ in range(n):
            started.append(await start_server(tmp_path, backend, host=host, federation=FED))
        return started

    yield make
    for srv in started:
        await srv.destroy()


@pytest.fixture
async def apis(servers):
    """(server, Api) pairs for three federating servers."""
    srvs = await servers(3)
    clients = [Api(s) for s in srvs]
    for c in clients:
        await c.__aenter__()
    yield list(zip(srvs, clients))
    for c in clients:
        await c.__aexit__(None, None, None)
