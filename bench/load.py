#!/usr/bin/env python3
"""Nexa load benchmark: N users in one public room, M messages, long-poll /sync delivery latency.

    python bench/load.py                      # fresh server on SQLite, 20 users, 2000 messages
    python bench/load.py -n 5 -m 200          # small run
    python bench/load.py --database-url postgres://postgres@127.0.0.1:5432/postgres
    python bench/load.py --url http://127.0.0.1:8008 --server-pid 1234

Only a client (aiohttp); not part of the test suite. See bench/README.md for the figures.
Everything here talks to loopback addresses only, every loop is bounded, and the server
subprocess (when this script started one) is killed on every way out.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ctypes
import ipaddress
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

try:  # the server depends on orjson, so it is normally there; parse faster when it is
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    _loads = json.loads

REPO = Path(__file__).resolve().parent.parent
CLIENT = "/_matrix/client/v3"
BENCH_KEY = "nexa.bench"  # custom content field carrying (run id, message index, send time)


class BenchError(Exception):
    """A failure that stops the run (set-up, server start, unexpected responses)."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(sorted_vals: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no data."""
    if not sorted_vals:
        return None
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def _proc_children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (bounded walk)."""
    seen: list[int] = []
    todo = [pid]
    while todo and len(seen) < 10_000:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_proc_children(p))
    return seen


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mib(pid: int) -> tuple[float | None, int]:
    """Sum of VmHWM (peak resident set) over the process and its descendants, in MiB."""
    total, n = 0, 0
    for p in process_tree(pid):
        kib = _status_kib(p, "VmHWM")
        if kib is not None:
            total += kib
            n += 1
    return (total / 1024.0 if n else None), n


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process and its descendants (as far as /proc shows them)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, found = 0.0, False
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields_ = f.read().rsplit(")", 1)[1].split()
            total += (int(fields_[11]) + int(fields_[12])) / tick
            found = True
        except (OSError, ValueError, IndexError):
            pass
    return total if found else None


def host_busy_seconds() -> float | None:
    """Non-idle CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    busy = sum(vals[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _set_pdeathsig() -> None:
    """In the child: die with SIGKILL when the benchmark process dies, whatever the cause."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# --------------------------------------------------------------------------------------------
# the server under test
# --------------------------------------------------------------------------------------------

class ServerProcess:
    """A fresh Nexa subprocess on a free loopback port with a fresh data dir (and database)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.tmp: Path | None = None
        self.port = 0
        self.base_url = ""
        self.pg_admin_url: str | None = args.database_url
        self.pg_db: str | None = None
        self.server_db_url: str | None = None
        self._log_file = None
        self._stopped = False

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
        for kv in self.args.env:
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
                   "--server-name", f"localhost:{self.port}"]
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

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

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


# --------------------------------------------------------------------------------------------
# a minimal Matrix client
# --------------------------------------------------------------------------------------------

class HttpError(BenchError):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {str(body)[:300]}")
        self.status = status
        self.body = body


class Api:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, deadline: float) -> None:
        self.s = session
        self.base = base_url.rstrip("/")
        self.deadline = deadline  # monotonic time after which nothing retries any more

    async def call(self, method: str, path: str, *, token: str | None = None,
                   body: Any = None, params: dict | None = None, timeout: float = 30,
                   ok: tuple[int, ...] = (200,), retries: int = 5) -> tuple[int, Any, int]:
        """One request with retry on 429 (honouring retry_after_ms), 5xx and transport errors.

        Returns (status, parsed JSON body, perf_counter_ns when the body was read).
        """
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = self.base + path
        last: Exception | None = None
        for attempt in range(retries + 1):
            try:
                async with self.s.request(method, url, data=data, params=params, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                    raw = await r.read()
                    t_read = time.perf_counter_ns()
                    try:
                        parsed = _loads(raw) if raw else {}
                    except ValueError:
                        parsed = {"raw": raw[:200].decode(errors="replace")}
                    if r.status in ok:
                        return r.status, parsed, t_read
                    err = HttpError(method, path, r.status, parsed)
                    if r.status == 429:
                        wait = (parsed.get("retry_after_ms") or 500) / 1000 if isinstance(
                            parsed, dict) else 0.5
                        last = err
                        await self._sleep(min(wait, 5.0))
                        continue
                    if r.status >= 500:
                        last = err
                        await self._sleep(0.2 * (attempt + 1))
                        continue
                    raise err
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                last = BenchError(f"{method} {path}: {type(e).__name__}: {e}")
                await self._sleep(0.2 * (attempt + 1))
        raise last or BenchError(f"{method} {path} failed")

    async def _sleep(self, seconds: float) -> None:
        if time.monotonic() + seconds > self.deadline:
            raise BenchError("overall time limit reached")
        await asyncio.sleep(seconds)


@dataclass
class User:
    index: int
    user_id: str = ""
    token: str = ""
    since: str | None = None
    # message index -> delivery latency (ns), for messages sent by *other* users
    seen: dict[int, int] = field(default_factory=dict)
    own_echoes: int = 0
    syncs: int = 0
    sync_errors: int = 0
    backfills: int = 0
    last_error: str = ""
    polling: asyncio.Event = field(default_factory=asyncio.Event)


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, base_url: str, deadline: float) -> None:
        self.args = args
        self.base_url = base_url
        self.deadline = deadline
        self.run_id = secrets.token_hex(4)
        self.users = [User(i) for i in range(args.users)]
        self.room_id = ""
        self.sync_filter = json.dumps(json.loads(args.sync_filter), separators=(",", ":"))
        self.send_lat_ns: list[int] = []
        self.sender_of: dict[int, int] = {}  # message index -> sender index, accepted only
        self.send_errors: list[str] = []
        self.send_wall_s = 0.0
        self.send_start_ns = 0
        self.last_delivery_ns = 0
        self.stopping = False
        self.progress = asyncio.Event()
        self.initial_sync_without_room = 0

    # -- set-up -----------------------------------------------------------------------------

    async def register(self, api: Api, u: User) -> None:
        username = f"bench{self.run_id}_{u.index}"
        body: dict[str, Any] = {"username": username, "password": secrets.token_urlsafe(12),
                                "initial_device_display_name": "bench"}
        # User-interactive auth: the first request answers 401 with the flows and a session.
        status, res, _ = await api.call("POST", f"{CLIENT}/register", body=body, ok=(200, 401))
        if status == 401:
            flows = [f.get("stages") for f in res.get("flows", [])]
            if ["m.login.dummy"] not in flows:
                raise BenchError(f"registration needs {flows}, not m.login.dummy")
            body["auth"] = {"type": "m.login.dummy"}
            if res.get("session"):
                body["auth"]["session"] = res["session"]
            status, res, _ = await api.call("POST", f"{CLIENT}/register", body=body)
        u.user_id, u.token = res["user_id"], res["access_token"]

    async def setup(self, api: Api) -> None:
        sem = asyncio.Semaphore(self.args.concurrency)

        async def bounded(coro):
            async with sem:
                return await coro

        t = time.monotonic()
        await asyncio.gather(*(bounded(self.register(api, u)) for u in self.users))
        log(f"registered {len(self.users)} users in {time.monotonic() - t:.1f}s")
        owner = self.users[0]
        _, res, _ = await api.call("POST", f"{CLIENT}/createRoom", token=owner.token,
                                   body={"preset": "public_chat", "name": f"bench {self.run_id}"})
        self.room_id = res["room_id"]
        quoted = urllib.parse.quote(self.room_id, safe="")
        await asyncio.gather(*(
            bounded(api.call("POST", f"{CLIENT}/join/{quoted}", token=u.token, body={}))
            for u in self.users[1:]))
        log(f"room {self.room_id} created, {len(self.users) - 1} users joined")
        # Initial sync: each user's starting since token (and a check the room is there).
        await asyncio.gather(*(bounded(self.initial_sync(api, u)) for u in self.users))
        if self.initial_sync_without_room:
            log(f"warning: {self.initial_sync_without_room} initial /sync responses did not "
                "list the joined room")
        log("initial syncs done")

    async def initial_sync(self, api: Api, u: User) -> None:
        params = {"filter": self.sync_filter, "timeout": "0"}
        _, res, _ = await api.call("GET", f"{CLIENT}/sync", token=u.token, params=params,
                                   timeout=60)
        if self.room_id not in (res.get("rooms") or {}).get("join", {}):
            # Wrong per the spec, but messages may still arrive: note it and carry on.
            self.initial_sync_without_room += 1
        u.since = res["next_batch"]

    # -- receiving --------------------------------------------------------------------------

    def _take(self, u: User, events: list[dict], t_recv: int) -> None:
        for ev in events:
            if ev.get("type") != "m.room.message":
                continue
            meta = (ev.get("content") or {}).get(BENCH_KEY)
            if not isinstance(meta, dict) or meta.get("run") != self.run_id:
                continue
            i, t0 = meta.get("i"), meta.get("t0")
            if not isinstance(i, int) or not isinstance(t0, int):
                continue
            if ev.get("sender") == u.user_id:
                u.own_echoes += 1
                continue
            if i not in u.seen:
                u.seen[i] = t_recv - t0
                if t_recv > self.last_delivery_ns:
                    self.last_delivery_ns = t_recv

    async def _backfill(self, api: Api, u: User, prev_batch: str, until: str) -> None:
        """A limited timeline skipped events: page back with /messages to the previous token."""
        quoted = urllib.parse.quote(self.room_id, safe="")
        frm = prev_batch
        for _ in range(200):  # bounded: 200 pages x 1000 events
            _, res, t_recv = await api.call(
                "GET", f"{CLIENT}/rooms/{quoted}/messages", token=u.token,
                params={"dir": "b", "from": frm, "to": until, "limit": "1000"}, timeout=60)
            chunk = res.get("chunk") or []
            self._take(u, chunk, t_recv)
            u.backfills += 1
            end = res.get("end")
            if not chunk or not end or end == frm:
                return
            frm = end

    async def sync_loop(self, api: Api, u: User) -> None:
        consecutive_errors = 0
        while not self.stopping and time.monotonic() < self.deadline:
            params = {"filter": self.sync_filter, "since": u.since,
                      "timeout": str(self.args.sync_timeout_ms)}
            u.polling.set()  # the first long-poll is on its way
            try:
                _, res, t_recv = await api.call(
                    "GET", f"{CLIENT}/sync", token=u.token, params=params,
                    timeout=self.args.sync_timeout_ms / 1000 + 30, retries=2)
                room = ((res.get("rooms") or {}).get("join") or {}).get(self.room_id)
                if room:
                    tl = room.get("timeline") or {}
                    self._take(u, tl.get("events") or [], t_recv)
                    if tl.get("limited") and tl.get("prev_batch"):
                        await self._backfill(api, u, tl["prev_batch"], u.since)
                u.since = res["next_batch"]
                u.syncs += 1
                consecutive_errors = 0
                self.progress.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep syncing; a run with a broken /sync reports missing
                u.sync_errors += 1
                u.last_error = str(e)[:300]
                consecutive_errors += 1
                if consecutive_errors >= self.args.max_sync_errors:
                    log(f"{u.user_id}: giving up /sync after {consecutive_errors} errors: "
                        f"{u.last_error}")
                    return
                await asyncio.sleep(min(0.1 * consecutive_errors, 2.0))

    # -- sending ----------------------------------------------------------------------------

    async def send_all(self, api: Api) -> None:
        m, n = self.args.messages, len(self.users)
        quoted = urllib.parse.quote(self.room_id, safe="")
        counter = iter(range(m))

        async def worker() -> None:
            for i in counter:  # shared iterator: each index is taken exactly once
                if time.monotonic() > self.deadline:
                    self.send_errors.append(f"message {i}: overall time limit reached")
                    continue
                sender = self.users[i % n]
                t0 = time.perf_counter_ns()
                content = {"msgtype": "m.text", "body": f"bench message {i} t0={t0}",
                           BENCH_KEY: {"run": self.run_id, "i": i, "t0": t0}}
                txn = f"{self.run_id}-{i}"  # same txn on retry: the server deduplicates
                try:
                    await api.call("PUT", f"{CLIENT}/rooms/{quoted}/send/m.room.message/{txn}",
                                   token=sender.token, body=content, timeout=60)
                except Exception as e:
                    self.send_errors.append(f"message {i}: {e}")
                    continue
                self.send_lat_ns.append(time.perf_counter_ns() - t0)
                self.sender_of[i] = sender.index

        self.send_start_ns = time.perf_counter_ns()
        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        self.send_wall_s = (time.perf_counter_ns() - self.send_start_ns) / 1e9

    # -- the run ----------------------------------------------------------------------------

    def missing(self) -> int:
        # Every requested message should reach every user except its sender.
        n = len(self.users)
        expected = self.args.messages * (n - 1)
        return expected - sum(len(u.seen) for u in self.users)

    async def run(self) -> dict[str, Any]:
        n_conn = len(self.users) + self.args.concurrency + 8
        connector = aiohttp.TCPConnector(limit=n_conn, limit_per_host=n_conn)
        async with aiohttp.ClientSession(connector=connector) as session:
            api = Api(session, self.base_url, self.deadline)
            await self.setup(api)
            tasks = [asyncio.create_task(self.sync_loop(api, u)) for u in self.users]
            try:
                await asyncio.gather(*(u.polling.wait() for u in self.users))
                await asyncio.sleep(0.2)  # let the first long-polls reach the server
                log(f"sending {self.args.messages} messages, concurrency {self.args.concurrency}")
                await self.send_all(api)
                log(f"send phase: {self.send_wall_s:.2f}s, {len(self.send_errors)} errors; "
                    "waiting for deliveries")
                wait_until = min(self.deadline, time.monotonic() + self.args.delivery_timeout)
                while self.missing() > 0 and time.monotonic() < wait_until:
                    if all(t.done() for t in tasks):
                        break  # every sync loop gave up
                    self.progress.clear()
                    try:
                        await asyncio.wait_for(self.progress.wait(), timeout=0.5)
                    except asyncio.TimeoutError:
                        pass
            finally:
                self.stopping = True
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return self.results()

    def results(self) -> dict[str, Any]:
        n = len(self.users)
        send = sorted(v / 1e6 for v in self.send_lat_ns)
        deliv = sorted(v / 1e6 for u in self.users for v in u.seen.values())
        accepted = len(self.send_lat_ns)
        r2 = lambda x: None if x is None else round(x, 2)  # noqa: E731
        last = ((self.last_delivery_ns - self.send_start_ns) / 1e9
                if self.last_delivery_ns else None)
        return {
            "users": n,
            "messages": self.args.messages,
            "concurrency": self.args.concurrency,
            "accepted": accepted,
            "send_errors": len(self.send_errors),
            "send_phase_s": r2(self.send_wall_s),
            "msgs_per_s": r2(accepted / self.send_wall_s) if self.send_wall_s else None,
            "send_p50_ms": r2(percentile(send, 50)),
            "send_p99_ms": r2(percentile(send, 99)),
            "deliveries": len(deliv),
            "deliveries_expected": self.args.messages * (n - 1),
            "deliveries_missing": self.missing(),
            "delivery_p50_ms": r2(percentile(deliv, 50)),
            "delivery_p99_ms": r2(percentile(deliv, 99)),
            "delivery_max_ms": r2(deliv[-1] if deliv else None),
            "all_delivered_s": r2(last),
            "syncs": sum(u.syncs for u in self.users),
            "sync_errors": sum(u.sync_errors for u in self.users),
            "backfills": sum(u.backfills for u in self.users),
        }


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------

def print_table(r: dict[str, Any]) -> None:
    def f(v: Any, unit: str = "") -> str:
        if v is None:
            return "n/a"
        return f"{v:,.1f}{unit}" if isinstance(v, float) else f"{v:,}{unit}"

    rows = [
        ("workload", f"{r['users']} users, {r['messages']} messages, concurrency "
                     f"{r['concurrency']}, {r['backend']}"),
        ("accepted messages/s", f"{f(r['msgs_per_s'])}  ({r['accepted']} accepted in "
                                f"{f(r['send_phase_s'], ' s')}, {r['send_errors']} send errors)"),
        ("send latency p50 / p99", f"{f(r['send_p50_ms'], ' ms')} / {f(r['send_p99_ms'], ' ms')}"),
        ("delivery latency p50 / p99", f"{f(r['delivery_p50_ms'], ' ms')} / "
                                       f"{f(r['delivery_p99_ms'], ' ms')}  (max "
                                       f"{f(r['delivery_max_ms'], ' ms')})"),
        ("deliveries missing", f"{r['deliveries_missing']} of {r['deliveries_expected']:,}"),
        ("all delivered after", f"{f(r['all_delivered_s'], ' s')} from the first send"),
        ("server peak RSS", f"{f(r['peak_rss_mib'], ' MiB')}"),
        ("CPU server / client / other", f"{f(r['server_cpu_s'], ' s')} / "
                                        f"{f(r['client_cpu_s'], ' s')} / "
                                        f"{f(r.get('other_cpu_s'), ' s')}  (over "
                                        f"{f(r.get('wall_s'), ' s')} on {r.get('cpus')} CPUs)"),
        ("syncs (errors, backfills)", f"{r['syncs']:,} ({r['sync_errors']}, {r['backfills']})"),
    ]
    w = max(len(k) for k, _ in rows)
    print("-" * (w + 50))
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    print("-" * (w + 50))


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-n", "--users", type=int, default=20, help="users in the room (>= 2)")
    p.add_argument("-m", "--messages", type=int, default=2000, help="messages to send")
    p.add_argument("-c", "--concurrency", type=int, default=10, help="sends in flight at once")
    p.add_argument("--url", help="benchmark an already running server (loopback only) "
                                 "instead of starting one; its rate limits must allow the load")
    p.add_argument("--server-pid", type=int, help="with --url: pid to read peak RSS/CPU from")
    p.add_argument("--database-url", help="PostgreSQL admin URL on loopback, e.g. "
                   "postgres://postgres@127.0.0.1:5432/postgres: a fresh database is created "
                   "next to it for the run and dropped afterwards (default: SQLite)")
    p.add_argument("--env", action="append", default=[], metavar="NEXA_KEY=VALUE",
                   help="extra config override for the started server (repeatable), e.g. "
                        "NEXA_DATABASE__SQLITE_SYNCHRONOUS=NORMAL")
    p.add_argument("--sync-timeout-ms", type=int, default=30000, help="/sync long-poll timeout")
    p.add_argument("--sync-filter", default='{"room":{"timeline":{"limit":500},'
                   '"state":{"lazy_load_members":true}}}', help="inline /sync filter JSON")
    p.add_argument("--delivery-timeout", type=float, default=60.0,
                   help="seconds to wait after the send phase for every delivery")
    p.add_argument("--time-limit", type=float, default=900.0,
                   help="overall cap in seconds for the whole run")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="server start-up cap")
    p.add_argument("--max-sync-errors", type=int, default=20,
                   help="consecutive /sync failures after which a user's sync loop gives up")
    p.add_argument("--server-log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--stop-timeout", type=float, default=10.0,
                   help="seconds between SIGTERM and SIGKILL when stopping the server")
    p.add_argument("--keep-data", action="store_true", help="keep the temp data dir and log")
    p.add_argument("--hold", type=float, default=0.0,
                   help="seconds to keep the started server running after the run (for "
                        "py-spy etc.)")
    a = p.parse_args(argv)
    if a.users < 2 or a.messages < 1 or a.concurrency < 1:
        p.error("need --users >= 2, --messages >= 1, --concurrency >= 1")
    if a.url:
        host = urllib.parse.urlsplit(a.url).hostname
        if not is_loopback_host(host):
            p.error("--url must point at a loopback address")
        if a.database_url:
            p.error("--database-url only applies to a server this script starts")
    try:
        json.loads(a.sync_filter)
    except ValueError:
        p.error("--sync-filter is not JSON")
    return a


async def amain(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    deadline = t_start + args.time_limit
    server: ServerProcess | None = None
    result: dict[str, Any] | None = None
    failure: str | None = None
    pid = args.server_pid
    try:
        if args.url:
            base_url = args.url
        else:
            server = ServerProcess(args)
            atexit.register(server.stop_sync)
            await server.start()
            base_url, pid = server.base_url, server.pid
        cpu0 = cpu_seconds(pid) if pid else None
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        host0, wall0 = host_busy_seconds(), time.monotonic()
        bench = Bench(args, base_url, deadline)
        try:
            # Watchdog: every request has its own timeout, this caps their sum.
            result = await asyncio.wait_for(bench.run(), max(1.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            failure = f"overall time limit of {args.time_limit:.0f}s reached"
            result = bench.results()
        except BenchError as e:
            failure = str(e)
            result = bench.results()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        host1, wall1 = host_busy_seconds(), time.monotonic()
        rss, _ = peak_rss_mib(pid) if pid else (None, 0)
        cpu1 = cpu_seconds(pid) if pid else None
        if server and server.proc.poll() is not None:
            failure = (failure or "") + f" (server exited with {server.proc.returncode})"
        result.update({
            "backend": "postgres" if args.database_url else ("sqlite" if not args.url else "url"),
            "peak_rss_mib": None if rss is None else round(rss, 1),
            "server_cpu_s": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 2),
            "client_cpu_s": round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 2),
        })
        # CPU the rest of the machine used meanwhile: on a shared box this explains bad runs.
        other = None
        if host0 is not None and host1 is not None:
            other = (host1 - host0) - (result["server_cpu_s"] or 0) - result["client_cpu_s"]
        result["other_cpu_s"] = None if other is None else round(max(other, 0.0), 2)
        result["wall_s"] = round(wall1 - wall0, 2)
        result["cpus"] = os.cpu_count()
        if other is not None and other > 0.1 * (wall1 - wall0) * (os.cpu_count() or 1):
            log(f"warning: other processes used {other:.0f} CPU-seconds during this "
                f"{wall1 - wall0:.0f}s run on {os.cpu_count()} CPUs; figures are not reliable")
        if bench.send_errors:
            log(f"{len(bench.send_errors)} send errors, first: {bench.send_errors[0]}")
        errs = [u for u in bench.users if u.last_error]
        if errs:
            log(f"{len(errs)} users had /sync errors, e.g. {errs[0].user_id}: {errs[0].last_error}")
        if args.hold > 0 and server:
            log(f"holding server pid {server.pid} for {args.hold:.0f}s")
            await asyncio.sleep(min(args.hold, max(0.0, deadline - time.monotonic())))
    except BenchError as e:
        failure = str(e)
    finally:
        if server:
            if failure:
                log("server log tail:\n" + server.log_tail())
            await server.stop()
    if result is not None:
        print_table(result)
        print(json.dumps(result, separators=(", ", ": ")), flush=True)
    if failure:
        log(f"FAILED: {failure}")
        return 2
    if result["deliveries_missing"] or result["send_errors"]:
        log(f"{result['deliveries_missing']} deliveries missing, "
            f"{result['send_errors']} send errors")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum, frame):  # SIGTERM/SIGHUP: unwind like Ctrl-C so `finally` kills the server
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
