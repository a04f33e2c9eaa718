"""The server under test: a fresh Nexa subprocess with a fresh data dir (and database)."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import aiohttp

from . import BenchError, is_loopback_host, log

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_pdeathsig() -> None:
    """In the child: die with SIGKILL when the benchmark process dies, whatever the cause."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class ServerProcess:
    """A fresh Nexa subprocess on a free loopback port with a fresh data dir (and database).

    federation=True switches plain-HTTP federation on between loopback servers only.
    """

    def __init__(self, args: argparse.Namespace, federation: bool = False) -> None:
        self.args = args
        self.federation = federation
        self.proc: subprocess.Popen | None = None
        self.tmp: Path | None = None
        self.port = 0
        self.base_url = ""
        self.pg_admin_url: str | None = args.database_url
        self.pg_db: str | None = None
        self.server_db_url: str | None = None
        self._log_file = None
        self._stopped = False

    @property
    def server_name(self) -> str:
        return f"localhost:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- database ---------------------------------------------------------------------------

    async def _create_pg(self) -> None:
        import asyncpg

        parsed = urllib.parse.urlsplit(self.pg_admin_url)
        if parsed.scheme not in ("postgres", "postgresql"):
            raise BenchError("--database-url must be a postgres:// URL")
        if not is_loopback_host(parsed.hostname):
            raise BenchError("--database-url must point at a loopback address")
        self.pg_db = f"nexa_bench_{secrets.token_hex(6)}"
        conn = await asyncpg.connect(self.pg_admin_url, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{self.pg_db}"')
        finally:
            await conn.close()
        self.server_db_url = urllib.parse.urlunsplit(
            (parsed.scheme, parsed.netloc, "/" + self.pg_db, parsed.query, ""))
        log(f"created PostgreSQL database {self.pg_db}")

    async def _drop_pg(self) -> None:
        if not self.pg_db:
            return
        import asyncpg

        name, self.pg_db = self.pg_db, None
        try:
            conn = await asyncpg.connect(self.pg_admin_url, timeout=10)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()
            log(f"dropped PostgreSQL database {name}")
        except Exception as e:
            log(f"warning: could not drop database {name}: {e}")

    # -- process ----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # Inherited NEXA_* variables would make the run depend on the caller's shell.
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXA_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        big = "1000000"
        env.update({
            "NEXA_LIMITS__MESSAGES__PER_SECOND": big,
            "NEXA_LIMITS__MESSAGES__BURST": big,
            "NEXA_LIMITS__REGISTRATION__PER_SECOND": big,
            "NEXA_LIMITS__REGISTRATION__BURST": big,
            "NEXA_LIMITS__LOGIN__PER_SECOND": big,
            "NEXA_LIMITS__LOGIN__BURST": big,
            "NEXA_SECURITY__BCRYPT_ROUNDS": "4",
            "NEXA_REGISTRATION__MODE": "open",
            "NEXA_LOGGING__LEVEL": self.args.server_log_level,
            "NEXA_LOGGING__ACCESS_LOG": "false",
            "NEXA_FEDERATION__ENABLED": "false",
        })
        if self.federation:
            env.update({
                "NEXA_FEDERATION__ENABLED": "true",
                # Same as `nexa run --insecure-federation-http`; the server refuses it unless
                # the listener is on loopback (it is: --host 127.0.0.1).
                "NEXA_FEDERATION__PLAIN_HTTP": "true",
                "NEXA_FEDERATION__ALLOW": '["localhost:*"]',  # only the other bench servers
                "NEXA_FEDERATION__RETRY_MAX_MS": "1000",  # a hiccup must not park a queue 60 s
            })
        for kv in self.args.env:  # the caller's --env wins
            k, sep, v = kv.partition("=")
            if not sep or not k.startswith("NEXA_"):
                raise BenchError(f"--env expects NEXA_KEY=VALUE, got {kv!r}")
            env[k] = v
        return env

    async def start(self) -> None:
        if self.pg_admin_url:
            await self._create_pg()
        self.tmp = Path(tempfile.mkdtemp(prefix="nexa-bench-"))
        env = self._env()
        for attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            self.base_url = f"http://127.0.0.1:{self.port}"
            data_dir = self.tmp / f"data-{self.port}"
            cmd = [sys.executable, "-m", "homeserver", "run", "--host", "127.0.0.1",
                   "--port", str(self.port), "--data-dir", str(data_dir),
                   "--server-name", self.server_name]
            if self.server_db_url:
                cmd += ["--database-url", self.server_db_url]
            self._log_path = self.tmp / f"server-{self.port}.log"
            self._log_file = open(self._log_path, "wb")
            # cwd is the empty temp dir, so no config.yaml is picked up: defaults + our env only.
            self.proc = subprocess.Popen(
                cmd, cwd=self.tmp, env=env, stdin=subprocess.DEVNULL, stdout=self._log_file,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_set_pdeathsig)
            log(f"started server pid {self.proc.pid} on {self.base_url} (data {data_dir})")
            if await self._wait_ready():
                return
            tail = self.log_tail()
            self._kill()
            if "address already in use" not in tail.lower() or attempt == 2:
                raise BenchError(f"server did not start; last log lines:\n{tail}")
            log("port was taken; retrying on another one")

    async def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.args.startup_timeout
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    async with s.get(f"{self.base_url}/_matrix/client/versions") as r:
                        if r.status == 200:
                            return True
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            if self._log_file:
                self._log_file.flush()
            text = self._log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def exit_problem(self) -> str | None:
        """Why the run is void if the server died under it."""
        if self.proc is not None and self.proc.poll() is not None:
            return f"server {self.server_name} exited with {self.proc.returncode}"
        return None

    def _kill(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            t = time.monotonic()
            try:
                os.killpg(p.pid, signal.SIGTERM)  # its own session: the group is just the server
            except OSError:
                pass
            try:
                p.wait(timeout=self.args.stop_timeout)
                log(f"server stopped {time.monotonic() - t:.1f}s after SIGTERM "
                    f"(exit status {p.returncode})")
            except subprocess.TimeoutExpired:
                log(f"server still running {self.args.stop_timeout:.0f}s after SIGTERM: SIGKILL")
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    log(f"warning: server pid {p.pid} did not die")
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def stop_sync(self) -> None:
        """Kill the server and remove its data (idempotent; safe from atexit)."""
        if self._stopped:
            return
        self._stopped = True
        self._kill()
        if self.tmp and not self.args.keep_data:
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.tmp:
            log(f"kept server data and log in {self.tmp}")

    async def stop(self) -> None:
        self.stop_sync()
        await self._drop_pg()


async def start_servers(args: argparse.Namespace, n: int, federation: bool = False,
                        into: list[ServerProcess] | None = None) -> list[ServerProcess]:
    """n fresh servers, each killed at exit whatever happens. `into` receives them as they are
    made, so that the caller can stop the ones started when a later start fails."""
    servers = into if into is not None else []
    for _ in range(n):
        srv = ServerProcess(args, federation)
        atexit.register(srv.stop_sync)
        servers.append(srv)
    # One at a time: each start probes a free port, and starts are cheap next to the run.
    for srv in servers:
        await srv.start()
    return servers


async def stop_servers(servers: list[ServerProcess], failure: str | None) -> None:
    """Stop every server; after a failure, show its last log lines (unless already shown)."""
    for srv in servers:
        if failure and srv.proc is not None and srv.log_tail() not in failure:
            log(f"server {srv.server_name} log tail:\n" + srv.log_tail())
        await srv.stop()
