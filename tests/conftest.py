"""Shared fixtures: real servers over loopback and an HTTP client.

The database backend is chosen per test process with NEXA_TEST_DB=sqlite|postgres (tortoise
binds model classes to one SQL dialect per process); .ci/run runs the suite once for each.
"""

from __future__ import annotations

import os

import pytest

from tests.client import Api
from tests.servers import REQUIRE_SERVICES, postgres_available, start_server

BACKEND = os.environ.get("NEXA_TEST_DB", "sqlite")


@pytest.fixture(scope="session")
async def backend():
    if BACKEND == "postgres":
        reason = await postgres_available()
        if reason:
            if REQUIRE_SERVICES:
                pytest.fail(reason)
            pytest.skip(reason)
    return BACKEND


@pytest.fixture(scope="module")
async def server(backend, tmp_path_factory):
    """One homeserver per test module."""
    srv = await start_server(tmp_path_factory.mktemp("hs"), backend)
    yield srv
    await srv.destroy()


@pytest.fixture
async def api(server):
    async with Api(server) as a:
        yield a
