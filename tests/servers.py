"""Real homeservers for tests: hypercorn on a free loopback port, a fresh SQLite file or a fresh
PostgreSQL database each, several per process when a test needs them."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from hypercorn.asyncio import serve
from hypercorn.config import Config as HyperConfig

from homeserver.app import create_app
from homeserver.config import build_config

PG_ADMIN_DSN = os.environ.get("NEXA_TEST_PG", "postgres://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("NEXA_REQUIRE_SERVICES") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reserve_port(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound (not yet listening) socket: the port stays ours while the server starts.

    hypercorn binds its listener only after the app's start-up; with a port merely probed
    free, another test's server could take it meanwhile, and the start-up check would then
    be answered by that other server (seen in CI as a 401 from a server without the test's
    application service)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def postgres_available() -> str | None:
    """None when reachable, else the reason."""
    try:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        await conn.close()
        return None
    except Exception as e:  # any failure means: not usable here
        return f"PostgreSQL at {PG_ADMIN_DSN} not reachable: {e}"


async def create_pg_database() -> tuple[str, str]:
    import asyncpg

    name = f"nexa_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


async def drop_pg_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class LoopbackApp:
    """A fake remote service for tests (a push gateway, another homeserver, an application
    service): an aiohttp app on 127.0.0.1:`port`. Subclasses add their routes in `routes`."""

    port: int
    _runner: Any = None

    def routes(self, app: Any) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@asynccontextmanager
async def open_database(backend: str, tmp_path: Path, at_rest: Any = None):
    """A migrated, activated storage Database on a fresh SQLite file or PostgreSQL database,
    for tests of the storage layer without a server; dropped afterwards."""
    from homeserver.storage.database import Database

    name = None
    if backend == "postgres":
        name, url = await create_pg_database()
    else:
        url = f"sqlite://{tmp_path / 'nexa.db'}"
    database = Database(url, at_rest=at_rest)
    await database.open()
    token = database.activate()
    try:
        yield database
    finally:
        database.deactivate(token)
        await database.close()
        if name:
            await drop_pg_database(name)


async def in_db(srv: "RunningServer", fn, *args):
    """Run a storage function against a running test server's database, from the test."""
    token = srv.hs.db.activate()
    try:
        return await fn(*args)
    finally:
        srv.hs.db.deactivate(token)


@dataclass
class RunningServer:
    base_url: str
    server_name: str
    port: int
    data_dir: Path
    app: Any
    backend: str
    config_data: dict[str, Any]
    host: str = "127.0.0.1"
    tls: tuple[Path, Path] | None = None  # (cert, key): HTTPS, the cert also its own CA
    _shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task | None = None
    _pg_db: str | None = None
    _sock: socket.socket | None = None  # the reserved port, until hypercorn takes it

    @property
    def hs(self):
        return self.app.hs

    @property
    def client_url(self) -> str:
        return f"{self.base_url}/_matrix/client/v3"

    async def stop(self) -> None:
        self._shutdown.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def start(self) -> None:
        """(Re)start on the same port and data: a restart keeps everything stored."""
        cfg = build_config(self.config_data)
        self.app = create_app(cfg)
        self._shutdown = asyncio.Event()
        hc = HyperConfig()
        sock, self._sock = self._sock or reserve_port(self.host, self.port), None
        # hypercorn's own socket object owns the descriptor from here on (and closes it).
        hc.bind = [f"fd://{sock.detach()}"]
        if self.tls:
            hc.certfile, hc.keyfile = str(self.tls[0]), str(self.tls[1])
        hc.accesslog = None
        hc.errorlog = None
        hc.graceful_timeout = 1
        self._task = asyncio.create_task(serve(self.app, hc, shutdown_trigger=self._shutdown.wait))
        await wait_ready(self.base_url, self._task, ssl=False if self.tls else True)

    async def destroy(self) -> None:
        await self.stop()
        if self._pg_db:
            await drop_pg_database(self._pg_db)


async def wait_ready(base_url: str, task: asyncio.Task, ssl: bool = True) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl)) as s:
        for _ in range(500):
            if task.done():
                task.result()  # raises the start-up error
                raise RuntimeError("server stopped during start-up")
            try:
                async with s.get(f"{base_url}/_matrix/client/versions") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    raise RuntimeError(f"server at {base_url} did not become ready")


async def start_server(tmp_dir: Path, backend: str = "sqlite", host: str = "127.0.0.1",
                       server_name: str | None = None, tls: tuple[Path, Path] | None = None,
                       **config: Any) -> RunningServer:
    """A server named localhost:<port>, or <host>:<port> on another loopback address (or the
    name given); with `tls` (cert, key) it serves HTTPS."""
    sock = reserve_port(host)
    port = sock.getsockname()[1]
    server_name = server_name or (f"localhost:{port}" if host == "127.0.0.1"
                                  else f"{host}:{port}")
    data_dir = tmp_dir / f"hs-{port}"
    listener: dict[str, Any] = {"host": host, "port": port}
    if tls:
        listener.update(tls_cert=str(tls[0]), tls_key=str(tls[1]))
    data: dict[str, Any] = {
        "server_name": server_name,
        "data_dir": str(data_dir),
        "listeners": [listener],
        "security": {"bcrypt_rounds": 4},
        "database": {"sqlite_synchronous": "NORMAL"},
        # Tests make many requests quickly; limits are exercised by their own tests.
        "limits": {"login": {"per_second": 1000, "burst": 1000},
                   "registration": {"per_second": 1000, "burst": 1000},
                   "messages": {"per_second": 10000, "burst": 10000}},
        "logging": {"level": "WARNING"},
        # Tests never reach beyond this machine, whatever server names the input contains.
        "federation": {"plain_http": True, "allow": ["localhost:*", "127.0.0.*:*"]},
    }
    pg_db = None
    if backend == "postgres":
        pg_db, url = await create_pg_database()
        data["database"] = {"url": url}
    for k, v in config.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    srv = RunningServer(base_url=f"{'https' if tls else 'http'}://{host}:{port}",
                        server_name=server_name, port=port, host=host, tls=tls,
                        data_dir=data_dir, app=None, backend=backend, config_data=data,
                        _pg_db=pg_db, _sock=sock)
    await srv.start()
    return srv
