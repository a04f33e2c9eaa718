"""Fixtures for matrix-nio scenarios: registered nio clients against the module's server."""

from __future__ import annotations

import pytest

import nio

from tests.e2e.nio_helpers import new_client, ok, random_name


@pytest.fixture
async def nio_user(server):
    """Factory: `await nio_user("alice")` registers a fresh account through nio (m.login.dummy
    UIA) and returns the logged-in AsyncClient. Every client is closed after the test."""
    clients: list[nio.AsyncClient] = []

    async def make(prefix: str = "nio", password: str = "correct horse battery 9",
                   username: str | None = None) -> nio.AsyncClient:
        client = new_client(server.base_url)
        clients.append(client)
        name = username or random_name(prefix)
        ok(await client.register(name, password, device_name="nio e2e"), nio.RegisterResponse)
        client.test_password = password  # type: ignore[attr-defined]
        return client

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def nio_client(server):
    """Factory for unauthenticated nio clients (login, errors); closed after the test."""
    clients: list[nio.AsyncClient] = []

    def make(user: str = "") -> nio.AsyncClient:
        c = new_client(server.base_url)
        c.user = user
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()
