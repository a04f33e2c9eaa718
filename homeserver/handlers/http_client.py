"""Outbound HTTP for the senders (application services, push gateways): one aiohttp session
each, made when first needed so that a server with no bridges or pushers opens none, and a
resolver that keeps user-chosen URLs out of the server's own network."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Callable

import aiohttp
import aiohttp.abc


def is_public_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_global
    except ValueError:
        return True  # a name: its addresses are checked when connecting


class PublicOnlyResolver(aiohttp.abc.AbstractResolver):
    """Resolves gateway names to public addresses only. Any user may add a pusher, so without
    this the server could be made to POST into its own network (SSRF); checked at connection
    time, so a name that later resolves elsewhere (DNS rebinding) is caught too."""

    def __init__(self) -> None:
        self._inner = aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        found = await self._inner.resolve(host, port, family)
        public = [a for a in found if is_public_address(a["host"])]
        if not public:
            raise OSError(f"push gateway {host} has no public address "
                          "(push.allow_private_gateways is off)")
        return public

    async def close(self) -> None:
        await self._inner.close()


class LazySession:
    def __init__(self, resolver: Callable[[], Any] | None = None, limit: int = 100) -> None:
        self._resolver, self._limit = resolver, limit
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit, resolver=self._resolver() if self._resolver else None)
            self._session = aiohttp.ClientSession(headers={"User-Agent": "Nexa"},
                                                  connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
