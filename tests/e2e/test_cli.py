"""The `nexa` command as an operator runs it: separate processes, real files, real HTTP.

A bad configuration stops every command with a message naming the key (exit 2, never a
traceback); check-config passes the shipped file and warns about open registration on a public
address; flags beat the environment, which beats the file; `nexa run` serves an independent
server per port and data directory and stops cleanly on SIGTERM; `register-user` makes accounts
that log in over HTTP; `migrate` is idempotent.

These commands always use SQLite data directories, whichever backend the run is for: the
children get no NEXA_* variable from this process (NEXA_TEST_DB would be an unknown key)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
MODULE = [sys.executable, "-m", "homeserver"]
SCRIPT = Path(sys.executable).with_name("nexa")  # the installed console script
PASSWORD = "correct horse 42"  # passes the default password policy
OPEN_PUBLIC = ("warning: registration.mode is 'open' while listening on 0.0.0.0: anyone who "
               "can reach this server can create accounts; consider 'token' or 'closed'")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXA_")}
    env["PYTHONPATH"] = str(ROOT)  # this checkout, not whatever copy is installed
    env["NEXA_SECURITY__BCRYPT_ROUNDS"] = "4"  # fast hashing: register and log in quickly
    env.update(extra)
    return env


def nexa(*args: str, cwd: Path, env: dict[str, str] | None = None,
         launcher: list[str] = MODULE, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([*launcher, *args], cwd=cwd, env=child_env() if env is None else env,
                          input=stdin, capture_output=True, text=True, timeout=120)


def no_traceback(out: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr


# --- bad configurations ------------------------------------------------------------------------

BAD_CONFIGS = {
    # name: (file content or None for "use the path as is", what stderr must say)
    "unknown-key": ("bogus: 1\n", "  bogus: unknown key"),
    "unknown-nested-key": ("limits:\n  nope: 1\n", "  limits.nope: unknown key"),
    "port-not-a-number": ("listeners:\n  - port: abc\n", "  listeners.0.port: Input should be a "
                                                         "valid integer"),
    "cache-below-minimum": ("caches:\n  events: 5\n", "  caches.events: Input should be greater "
                                                      "than or equal to 100"),
    "invalid-yaml": ("listeners: [\n", "is not valid YAML"),
    "not-a-mapping": ("- server_name: x\n", "must contain a mapping at the top level"),
    "not-utf8": (b"server_name: caf\xe9\n", "not UTF-8 text"),
    "missing-file": (None, "No such file or directory"),
    "directory": ("dir", "Is a directory"),
}


def bad_config(tmp_path: Path, case: str) -> Path:
    content, _ = BAD_CONFIGS[case]
    path = tmp_path / "bad.yaml"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    return path


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_stops_the_command_naming_the_problem(tmp_path, case, command):
    path = bad_config(tmp_path, case)
    port = free_port()
    out = nexa(command, "-c", str(path), "--port", str(port), "--data-dir",
               str(tmp_path / "data"), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    no_traceback(out)
    assert out.stderr.startswith("error: "), out.stderr
    assert BAD_CONFIGS[case][1] in out.stderr
    if case in ("missing-file", "directory", "invalid-yaml", "not-a-mapping", "not-utf8"):
        assert str(path) in out.stderr  # which file
    assert "configuration OK" not in out.stdout and "listening" not in out.stdout
    assert not (tmp_path / "data").exists()  # refused before anything was created


@pytest.mark.parametrize("args, env, expected", [
    ([], {"NEXA_LIMITS__MAX_EVENT_BYTES": "abc"},
     "  limits.max_event_bytes: Input should be a valid integer"),
    ([], {"NEXA_LIMITS__NOPE": "1"}, "  limits.nope: unknown key"),
    ([], {"NEXA_CACHES__EVENTS": "5"}, "  caches.events: Input should be greater than or equal"),
    (["--server-name", "my server"], {}, "  server_name: Value error, must look like host"),
    (["--database-url", "mysql://db/nexa"], {}, "  database.url: Value error, must start with"),
    (["--port", "70000"], {}, "  listeners.0.port: Input should be less than or equal to 65535"),
])
def test_bad_env_value_or_flag_names_the_key(tmp_path, args, env, expected):
    for command in ("check-config", "run"):
        out = nexa(command, "--data-dir", str(tmp_path / "data"), *args, cwd=tmp_path,
                   env=child_env(**env))
        assert out.returncode == 2, out.stdout + out.stderr
        no_traceback(out)
        assert out.stderr.startswith("error: invalid configuration:\n"), out.stderr
        assert expected in out.stderr
    assert not (tmp_path / "data").exists()


def test_nexa_config_variable_names_the_file(tmp_path):
    out = nexa("check-config", cwd=tmp_path,
               env=child_env(NEXA_CONFIG=str(tmp_path / "nowhere.yaml")))
    assert out.returncode == 2
    assert out.stderr == f"error: cannot read config file {tmp_path / 'nowhere.yaml'}: " \
                         "No such file or directory\n"


# --- check-config ------------------------------------------------------------------------------

@pytest.mark.parametrize("launcher", ["module", "script"])
def test_shipped_config_checks_clean(tmp_path, launcher):
    if launcher == "script" and not SCRIPT.exists():
        pytest.skip(f"no console script at {SCRIPT} (package not installed)")
    # A copy, so that its data_dir (relative to the file) is a fresh directory.
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    run = MODULE if launcher == "module" else [str(SCRIPT)]
    out = nexa("check-config", "-c", str(tmp_path / "config.yaml"), cwd=tmp_path, launcher=run)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert "warning" not in out.stdout
    assert out.stdout.splitlines() == [
        f"at-rest key file {tmp_path / 'data' / 'at_rest.key'} will be generated at first start "
        "(back it up)",
        "configuration OK: server_name=localhost:8008, listening on 127.0.0.1:8008, database "
        "sqlite",
    ]
    # Without -c, ./config.yaml is the one read.
    again = nexa("check-config", cwd=tmp_path, launcher=run)
    assert again.returncode == 0 and again.stdout == out.stdout


def test_check_config_warns_about_open_registration_on_a_public_address(tmp_path):
    (tmp_path / "public.yaml").write_text("listeners:\n  - host: 0.0.0.0\n    port: 8448\n")
    out = nexa("check-config", "-c", "public.yaml", cwd=tmp_path)
    # A warning, not an error: the configuration is allowed.
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == OPEN_PUBLIC
    assert "configuration OK: server_name=localhost:8008, listening on 0.0.0.0:8448" in out.stdout
    # The --host flag is checked the same way.
    out = nexa("check-config", "--host", "0.0.0.0", "--port", "8448", cwd=tmp_path)
    assert out.returncode == 0 and OPEN_PUBLIC in out.stdout.splitlines()
    # Registration by token, or a loopback listener: nothing to warn about.
    token = nexa("check-config", "-c", "public.yaml", cwd=tmp_path,
                 env=child_env(NEXA_REGISTRATION__MODE="token",
                               NEXA_REGISTRATION__TOKENS="[s3cret]"))
    assert token.returncode == 0 and "warning" not in token.stdout
    loopback = nexa("check-config", "-c", "public.yaml", "--host", "127.0.0.1", cwd=tmp_path)
    assert loopback.returncode == 0 and "warning" not in loopback.stdout
    assert "listening on 127.0.0.1:8448" in loopback.stdout


def checked(tmp_path: Path, *args: str, **env: str) -> str:
    """check-config's summary line."""
    out = nexa("check-config", *args, cwd=tmp_path, env=child_env(**env))
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[-1]


def test_flags_beat_environment_which_beats_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("server_name: file.example\n"
                                     "listeners:\n  - {host: 0.0.0.0, port: 9123}\n")
    c = ("-c", "c.yaml")
    assert "server_name=file.example," in checked(tmp_path, *c)
    assert "server_name=env.example," in checked(tmp_path, *c, NEXA_SERVER_NAME="env.example")
    assert "server_name=flag.example," in checked(tmp_path, *c, "--server-name", "flag.example",
                                                  NEXA_SERVER_NAME="env.example")
    # --port alone keeps the configured host (a public listener does not move to loopback),
    # --host alone keeps the configured port.
    assert "listening on 0.0.0.0:9124," in checked(tmp_path, *c, "--port", "9124")
    assert "listening on 127.0.0.2:9123," in checked(tmp_path, *c, "--host", "127.0.0.2")
    assert "listening on 127.0.0.3:9201," in checked(
        tmp_path, *c, "--port", "9201", NEXA_LISTENERS="[{host: 127.0.0.3, port: 9200}]")
    assert "database postgres" in checked(tmp_path, *c,
                                          NEXA_DATABASE__URL="postgres://nexa@db/nexa")
    assert "database sqlite" in checked(tmp_path, *c, "--database-url", "sqlite:///tmp/x.db",
                                        NEXA_DATABASE__URL="postgres://nexa@db/nexa")
    # --data-dir beats NEXA_DATA_DIR (the at-rest key path shows which directory won).
    out = nexa("check-config", *c, "--data-dir", str(tmp_path / "flag-dir"), cwd=tmp_path,
               env=child_env(NEXA_DATA_DIR=str(tmp_path / "env-dir")))
    assert str(tmp_path / "flag-dir" / "at_rest.key") in out.stdout
    # --port alone on the default configuration names the server after that port.
    assert "server_name=localhost:9555," in checked(tmp_path, "--port", "9555")


# --- nexa run ----------------------------------------------------------------------------------

@dataclass
class Served:
    proc: asyncio.subprocess.Process
    port: int
    data_dir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
async def launch(tmp_path):
    """`await launch(*args, port=, data_dir=, cwd=)` starts `nexa run` in its own process
    group; whatever is still running afterwards (also the migration child) is killed."""
    started: list[Served] = []

    async def start(*args: str, port: int, data_dir: Path, cwd: Path = tmp_path) -> Served:
        log = tmp_path / f"nexa-{port}.log"
        with open(log, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *MODULE, "run", "--port", str(port), "--data-dir", str(data_dir), *args,
                cwd=cwd, env=child_env(NEXA_LOGGING__LEVEL="WARNING"),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        served = Served(proc, port, data_dir, log)
        started.append(served)
        return served

    try:
        yield start
    finally:
        for s in started:
            if s.proc.returncode is None:
                try:
                    os.killpg(s.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await s.proc.wait()


async def wait_answering(s: Served, http: aiohttp.ClientSession) -> None:
    """Until /versions answers 200; fails at once if the process ends first."""
    try:
        async with asyncio.timeout(60):
            while True:
                if s.proc.returncode is not None:
                    raise AssertionError(f"nexa run exited with {s.proc.returncode} before "
                                         f"answering:\n{s.output()}")
                try:
                    async with http.get(f"{s.url}/_matrix/client/versions") as r:
                        if r.status == 200 and "versions" in await r.json():
                            return
                except aiohttp.ClientError:
                    pass  # not listening yet
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"nexa run did not answer on {s.url}:\n{s.output()}") from None


async def stop(s: Served, sig: int = signal.SIGTERM) -> int:
    s.proc.send_signal(sig)
    try:
        async with asyncio.timeout(30):
            return await s.proc.wait()
    except TimeoutError:
        raise AssertionError(f"nexa run did not exit after {sig!r}:\n{s.output()}") from None


async def register(http: aiohttp.ClientSession, s: Served, user: str,
                   password: str = PASSWORD) -> tuple[int, dict]:
    async with http.post(f"{s.url}/_matrix/client/v3/register", json={
            "username": user, "password": password, "auth": {"type": "m.login.dummy"}}) as r:
        return r.status, await r.json()


async def login(http: aiohttp.ClientSession, s: Served, user: str,
                password: str = PASSWORD) -> tuple[int, dict]:
    async with http.post(f"{s.url}/_matrix/client/v3/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password}) as r:
        return r.status, await r.json()


async def test_run_serves_from_flags_alone_and_stops_on_sigterm(tmp_path, launch):
    port, data = free_port(), tmp_path / "new" / "data"
    # cwd without a config.yaml: everything comes from the flags and the defaults.
    s = await launch("--server-name", f"localhost:{port}", port=port, data_dir=data)
    async with aiohttp.ClientSession() as http:
        await wait_answering(s, http)
        assert (data / "nexa.db").is_file()
        assert (data / "signing.key").stat().st_mode & 0o777 == 0o600
        assert (data / "at_rest.key").stat().st_mode & 0o777 == 0o600

        status, body = await register(http, s, "carol")
        assert status == 200, body
        assert body["user_id"] == f"@carol:localhost:{port}"
        async with http.get(f"{s.url}/_matrix/client/v3/account/whoami", headers={
                "Authorization": f"Bearer {body['access_token']}"}) as r:
            assert r.status == 200 and (await r.json())["user_id"] == body["user_id"]
        status, body = await login(http, s, "carol")
        assert status == 200 and body["user_id"] == f"@carol:localhost:{port}", body
        # The default password policy applies to registration over HTTP.
        status, body = await register(http, s, "dave", password="abc")
        assert status == 400 and body["errcode"] == "M_WEAK_PASSWORD", body

    assert await stop(s) == 0
    out = s.output()
    assert f"Nexa localhost:{port} listening on http://127.0.0.1:{port} (data in {data})" in out
    assert "Traceback" not in out, out


async def test_two_servers_side_by_side_are_independent(tmp_path, launch):
    # Both read a copy of the shipped configuration (-c); the working directory has a broken
    # config.yaml that neither the server nor its migration step may read instead.
    shutil.copy(ROOT / "config.yaml", tmp_path / "shipped.yaml")
    (tmp_path / "config.yaml").write_text("not_a_key: 1\n")
    (pa, da), (pb, db) = (free_port(), tmp_path / "a"), (free_port(), tmp_path / "b")
    a = await launch("-c", "shipped.yaml", "--server-name", f"localhost:{pa}", port=pa,
                     data_dir=da)
    b = await launch("-c", "shipped.yaml", "--server-name", f"localhost:{pb}", port=pb,
                     data_dir=db)
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(wait_answering(a, http), wait_answering(b, http))
        assert (da / "nexa.db").is_file() and (db / "nexa.db").is_file()
        assert (da / "signing.key").read_bytes() != (db / "signing.key").read_bytes()

        status, body = await register(http, a, "erin")
        assert status == 200 and body["user_id"] == f"@erin:localhost:{pa}", body
        assert (await login(http, a, "erin"))[0] == 200
        status, body = await login(http, b, "erin")  # unknown there
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
        # The same name is still free on the other server, and it is a different account.
        status, body = await register(http, b, "erin", password="another horse 7")
        assert status == 200 and body["user_id"] == f"@erin:localhost:{pb}", body
        assert (await login(http, a, "erin", "another horse 7"))[0] == 403

    # SIGINT (Ctrl-C) stops a server as cleanly as SIGTERM.
    assert await stop(a, signal.SIGTERM) == 0
    assert await stop(b, signal.SIGINT) == 0
    for s in (a, b):
        assert "Traceback" not in s.output(), s.output()


# --- register-user and migrate -----------------------------------------------------------------

async def test_register_user_then_log_in_over_http(tmp_path, launch):
    port, data = free_port(), tmp_path / "data"
    common = ("--data-dir", str(data), "--server-name", f"localhost:{port}")

    out = nexa("register-user", "alice", "--password", PASSWORD, "--admin", *common, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"registered @alice:localhost:{port} (admin)\n"
    no_traceback(out)

    again = nexa("register-user", "alice", "--password", "other horse 43", *common, cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.endswith("error: User ID already taken\n"), again.stderr
    assert again.stdout == ""
    no_traceback(again)

    bad = nexa("register-user", "Not Valid!", "--password", PASSWORD, *common, cwd=tmp_path)
    assert bad.returncode == 1 and "error: Username may only contain" in bad.stderr
    no_traceback(bad)

    # No password at all (no terminal, nothing on stdin, or an empty line): refused, rather
    # than an account nobody can log in to.
    for stdin in ("", "\n"):
        none = nexa("register-user", "nopass", *common, cwd=tmp_path, stdin=stdin)
        assert none.returncode == 2, none.stdout + none.stderr
        assert "error: a password is required" in none.stderr
        no_traceback(none)

    # The password policy is for registration over HTTP and password changes; the operator's
    # command is exempt (config.yaml: "Not applied ... nor to `nexa register-user`").
    weak = nexa("register-user", "bob", "--password", "abc", *common, cwd=tmp_path)
    assert weak.returncode == 0 and weak.stdout == f"registered @bob:localhost:{port}\n", \
        weak.stderr

    s = await launch("--server-name", f"localhost:{port}", port=port, data_dir=data)
    async with aiohttp.ClientSession() as http:
        await wait_answering(s, http)
        status, alice = await login(http, s, "alice")
        assert status == 200 and alice["user_id"] == f"@alice:localhost:{port}", alice
        assert (await login(http, s, "alice", "other horse 43"))[0] == 403
        assert (await login(http, s, "nopass", ""))[0] in (400, 403)
        status, bob = await login(http, s, "bob", "abc")
        assert status == 200, bob

        # --admin took effect: alice may publish a room she is not in; bob may not.
        async def create_room(who: dict) -> str:
            async with http.post(f"{s.url}/_matrix/client/v3/createRoom", json={}, headers={
                    "Authorization": f"Bearer {who['access_token']}"}) as r:
                assert r.status == 200
                return (await r.json())["room_id"]

        async def publish(who: dict, room_id: str) -> int:
            async with http.put(f"{s.url}/_matrix/client/v3/directory/list/room/{room_id}",
                                json={"visibility": "public"}, headers={
                                    "Authorization": f"Bearer {who['access_token']}"}) as r:
                return r.status

        bobs_room, alices_room = await create_room(bob), await create_room(alice)
        assert await publish(alice, bobs_room) == 200
        assert await publish(bob, alices_room) == 403
    assert await stop(s) == 0


def test_migrate_is_idempotent(tmp_path):
    data = tmp_path / "deep" / "data"  # parents are created

    def applied() -> list[tuple]:
        with sqlite3.connect(data / "nexa.db") as db:
            return db.execute("SELECT * FROM tortoise_migrations ORDER BY 1").fetchall()

    first = nexa("migrate", "--data-dir", str(data), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    no_traceback(first)
    done = applied()
    assert done  # at least one migration recorded
    with sqlite3.connect(data / "nexa.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "events", "rooms", "access_tokens"} <= tables

    second = nexa("migrate", "--data-dir", str(data), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    no_traceback(second)
    assert applied() == done  # nothing applied twice

    # The schema is complete: a user can be registered on the migrated database.
    out = nexa("register-user", "frank", "--password", PASSWORD, "--data-dir", str(data),
               cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == "registered @frank:localhost:8008\n", out.stderr


@pytest.mark.parametrize("command", [["migrate"], ["register-user", "gina", "--password", PASSWORD]])
def test_an_unreachable_database_is_a_clear_error(tmp_path, command):
    port = free_port()  # nothing listens there
    out = nexa(*command, "--data-dir", str(tmp_path / "d"),
               "--database-url", f"postgres://postgres@127.0.0.1:{port}/nexa", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    no_traceback(out)
    assert "error: " in out.stderr and "database.url" in out.stderr, out.stderr
