"""The `nexa` command: run, register-user, check-config, rotate-key, reindex-search,
appservice new."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import os
import signal
import stat
import sys
from pathlib import Path

from homeserver.config import Config, ConfigError, is_loopback, load_config

DEFAULT_CONFIG = "config.yaml"
GC_GEN0_THRESHOLD = 5000  # the default is 700; see tune_runtime
SWITCH_INTERVAL_S = 0.0001  # the default is 0.005; see tune_runtime


def _config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    env = os.environ.get("NEXA_CONFIG")
    if env:
        return env
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None


def _load(args: argparse.Namespace) -> Config:
    overrides: dict = {}
    if getattr(args, "server_name", None):
        overrides["server_name"] = args.server_name
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = str(Path(args.data_dir).resolve())
    if getattr(args, "database_url", None):
        overrides["database"] = {"url": args.database_url}
    host, port = getattr(args, "host", None), getattr(args, "port", None)
    if getattr(args, "insecure_federation_http", False):
        overrides["federation"] = {"plain_http": True}
    cfg = load_config(_config_path(args.config), overrides=None)
    if host or port:
        # --host or --port alone keeps the rest of the configured first listener (its other
        # half and its TLS files): `--port` must not move a public listener to loopback.
        base = cfg.listeners[0].model_dump(mode="python")
        overrides["listeners"] = [{**base, **({"host": host} if host else {}),
                                   **({"port": port} if port else {})}]
    # Flags replace whole sections only where given; merge them over the loaded file.
    data = cfg.model_dump(mode="python")
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    if port and not getattr(args, "server_name", None) and cfg.server_name == "localhost:8008":
        data["server_name"] = f"localhost:{port}"
    # --appservice FILE (repeatable) adds registrations to those of the config file.
    extra = [str(Path(a).resolve()) for a in getattr(args, "appservice", None) or []]
    if extra:
        data["appservices"] = [*data.get("appservices", []), *extra]
    from homeserver.config import build_config, load_appservice_registrations

    cfg = build_config(data)
    # Registration files are checked before anything starts (a ConfigError names the file).
    load_appservice_registrations(list(cfg.appservices))
    return cfg


def _setup_logging(cfg: Config) -> None:
    logging.basicConfig(level=cfg.logging.level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not cfg.logging.access_log:
        logging.getLogger("hypercorn.access").setLevel(logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HyperConfig

    from homeserver.app import create_app

    cfg = _load(args)
    if cfg.federation.plain_http and not all(is_loopback(lst.host) for lst in cfg.listeners):
        print("error: plain-HTTP federation is only allowed on loopback listeners", file=sys.stderr)
        return 2
    _setup_logging(cfg)
    for w in cfg.warnings():
        logging.getLogger("nexa").warning(w)
    _migrate_in_child(cfg)
    app = create_app(cfg)
    hc = HyperConfig()
    tls = [lst for lst in cfg.listeners if lst.tls_cert]
    plain = [lst for lst in cfg.listeners if not lst.tls_cert]
    if len({(str(lst.tls_cert), str(lst.tls_key)) for lst in tls}) > 1:
        print("error: all TLS listeners must share one tls_cert/tls_key pair", file=sys.stderr)
        return 2
    if tls:
        # hypercorn serves TLS on `bind` and plain HTTP on `insecure_bind`.
        hc.certfile, hc.keyfile = str(tls[0].tls_cert), str(tls[0].tls_key)
        hc.bind = [f"{lst.host}:{lst.port}" for lst in tls]
        hc.insecure_bind = [f"{lst.host}:{lst.port}" for lst in plain]
    else:
        hc.bind = [f"{lst.host}:{lst.port}" for lst in cfg.listeners]
    hc.accesslog = "-" if cfg.logging.access_log else None
    hc.graceful_timeout = 5
    shutdown = asyncio.Event()

    async def main() -> None:
        tune_runtime()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown.set)
        await serve(app, hc, shutdown_trigger=shutdown.wait)

    print(f"Nexa {cfg.server_name} listening on {cfg.base_url} (data in {cfg.data_dir})",
          flush=True)
    try:  # uvloop: a faster event loop where available (Linux, macOS)
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
    return 0


def tune_runtime() -> None:
    """Make the interpreter fit a long-running server whose database runs in a thread.

    SQLite runs in aiosqlite's thread, and that thread gives up the GIL for every statement
    it executes and must win it back each time. With the event loop busy, winning it back
    takes up to the switch interval: at the default 5 ms an event's write (a dozen
    statements, a commit) spent most of its time waiting, while holding the room's lock.
    A 0.1 ms interval lets the database thread back in promptly; the loop only pays for it
    while another thread is waiting. (The bench showed messages/s up by a quarter.)

    Make the cyclic garbage collector cheaper, too.

    What is alive once the app is built (modules, routes, config) lives as long as the process:
    freezing it keeps every full collection from re-scanning it. Requests allocate many
    short-lived objects that reference counting frees anyway, so a larger first-generation
    threshold makes collections rarer; profiling the send/sync path showed the collector at a
    few percent of the CPU with the defaults.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the database schema up to date (also run by `nexa run` before serving)."""
    from homeserver.storage.database import Database

    cfg = _load(args)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        db = Database(cfg.database_url, cfg.database.sqlite_synchronous,
                      sqlite_cache_kib=cfg.database.sqlite_cache_kib)
        await db.open()
        await db.close()

    asyncio.run(main())
    return 0


def _migrate_in_child(cfg: Config) -> None:
    """Migrations load a lot of machinery; running them in a short-lived child process keeps
    the serving process small (what Python allocates, it rarely gives back)."""
    import subprocess

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        # Everything it needs is in the flags; -c os.devnull keeps it from reading a
        # ./config.yaml other than the configuration this server runs with.
        [sys.executable, "-m", "homeserver", "migrate", "-c", os.devnull,
         "--database-url", cfg.database_url, "--data-dir", str(cfg.data_dir)],
        env={k: v for k, v in os.environ.items() if not k.startswith("NEXA_")}, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: database migration failed (exit {done.returncode})")


def cmd_register_user(args: argparse.Namespace) -> int:
    from homeserver.server import HomeServer

    cfg = _load(args)
    try:
        password = args.password or getpass.getpass("Password: ")
    except EOFError:  # nothing to read the password from (no terminal, empty stdin)
        password = ""
    if not password:  # an empty password would create an account nobody can log in to
        print("error: a password is required (--password, or type it when asked)",
              file=sys.stderr)
        return 2

    async def main() -> str:
        hs = HomeServer(cfg)
        await hs.start()
        token = hs.db.activate()
        try:
            res = await hs.accounts.register(args.username, password, inhibit_login=True,
                                             admin=args.admin)
            return res if isinstance(res, str) else res.user_id
        finally:
            hs.db.deactivate(token)
            await hs.stop()

    from homeserver.errors import MatrixError

    try:
        user_id = asyncio.run(main())
    except MatrixError as e:
        print(f"error: {e.error}", file=sys.stderr)
        return 1
    print(f"registered {user_id}{' (admin)' if args.admin else ''}")
    return 0


def _at_rest_check(cfg: Config, problems: list[str]) -> str:
    """Problems with the at-rest keys go to `problems`; returns where the keys come from.
    ConfigError when they are there but unusable."""
    from homeserver.crypto.at_rest import AtRestError, parse_keys
    from homeserver.crypto.keystore import ENV_VAR, env_keys, read_key_file

    text = env_keys()
    try:
        if text is not None:
            ids = [k for k, _ in parse_keys(text, ENV_VAR)]
            return f"at-rest keys from ${ENV_VAR} ({', '.join(ids)})"
        path = cfg.at_rest_key_path
        if not path.exists():
            return f"at-rest key file {path} will be generated at first start (back it up)"
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            problems.append(f"{path} (the at-rest encryption key) is readable by other users: "
                            "chmod 600 it")
        ring = read_key_file(path)
    except (OSError, AtRestError) as e:
        raise ConfigError(f"at-rest keys: {e}") from None
    return f"at-rest key file {path} ({', '.join(ring.ids)}; sealing with {ring.current_id})"


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    problems = cfg.warnings()
    key = cfg.data_dir / "signing.key"
    if key.exists() and key.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(f"{key} is readable by other users: chmod 600 it")
    at_rest = _at_rest_check(cfg, problems)
    from homeserver.handlers.search import describe_key

    search_key = describe_key(cfg.data_dir, problems)
    for p in problems:
        print(f"warning: {p}")
    print(at_rest)
    if search_key is not None:
        print(search_key)
    from homeserver.config import load_appservice_registrations

    for path, reg in load_appservice_registrations(list(cfg.appservices)):
        print(f"appservice {reg.id}: {path} (url {reg.url or 'none'}, sender "
              f"@{reg.sender_localpart}:{cfg.server_name})")
    print(f"configuration OK: server_name={cfg.server_name}, listening on "
          f"{', '.join(f'{lst.host}:{lst.port}' for lst in cfg.listeners)}, database "
          f"{'sqlite' if cfg.database_url.startswith('sqlite') else 'postgres'}")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """Add a new at-rest key and re-seal everything under it while the server keeps running;
    with --retire-old, then drop the older keys from the key file."""
    import time

    from homeserver.crypto.at_rest import AtRestError, format_entry, new_key, new_key_id
    from homeserver.crypto.keystore import (ENV_VAR, LiveKeyring, add_key, env_keys,
                                            load_or_generate, retire_old_keys)

    if args.generate:
        # For keys kept in the environment: an entry to append to the variable.
        print(format_entry(new_key_id(), new_key()))
        return 0
    cfg = _load(args)
    path = cfg.at_rest_key_path
    from_env = env_keys() is not None
    try:
        if from_env:
            live = LiveKeyring.load(path)
            print(f"keys from ${ENV_VAR}: re-sealing under its newest key, {live.ring.current_id}"
                  " (every server process must already run with it: a new key in the "
                  "environment needs a restart)")
            key_added_at = time.monotonic() - args.grace_seconds
        else:
            if not path.exists():
                load_or_generate(path)
                print(f"created {path} with a new key")
            elif not args.resume:
                ring = add_key(path)
                print(f"added key {ring.current_id} to {path}")
            age = max(0.0, time.time() - path.stat().st_mtime)
            key_added_at = time.monotonic() - age
            live = LiveKeyring.load(path)
    except (OSError, AtRestError) as e:
        print(f"error: at-rest keys: {e}", file=sys.stderr)
        return 1
    cfg.data_dir.mkdir(parents=True, exist_ok=True)

    async def main():
        from homeserver.storage.database import Database
        from homeserver.storage.media import MediaStore
        from homeserver.storage.rekey import checkpoint_sqlite, reseal_everything

        db = Database(cfg.database_url, cfg.database.sqlite_synchronous, at_rest=live,
                      sqlite_cache_kib=cfg.database.sqlite_cache_kib)
        await db.open()
        token = db.activate()
        try:
            report = await reseal_everything(
                MediaStore(cfg.data_dir / "media", lambda: live), key_added_at=key_added_at,
                grace_s=args.grace_seconds, batch=args.batch_size,
                progress=lambda line: print(line, flush=True))
            if db.is_sqlite:
                await checkpoint_sqlite(db.conn())
            return report
        finally:
            db.deactivate(token)
            await db.close()

    from homeserver.storage.rekey import RotationStuck

    try:
        report = asyncio.run(main())
    except (AtRestError, RotationStuck) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{k} {v}" for k, v in report.rows.items())
    print(f"everything is sealed under {report.key_id}: re-sealed {rows}, {report.files} media "
          f"files, in {report.passes} passes")
    old = [k for k in live.ring.ids if k != report.key_id]
    if args.retire_old and old:
        if from_env:
            print(f"remove the older keys {', '.join(old)} from ${ENV_VAR} and restart")
        else:
            try:
                retire_old_keys(path, report.key_id)
            except (OSError, AtRestError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            print(f"retired {', '.join(old)} from {path}")
    return 0


def cmd_reindex_search(args: argparse.Namespace) -> int:
    """Rebuild the search index from the stored events: after upgrading a database that has
    history, or when the index key was lost. The server may keep running."""
    from homeserver.crypto.at_rest import AtRestError
    from homeserver.crypto.keystore import LiveKeyring
    from homeserver.handlers.search import load_key

    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    cfg = _load(args)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        live = LiveKeyring.load(cfg.at_rest_key_path)  # events are read, so opened
    except (OSError, AtRestError) as e:
        print(f"error: at-rest keys: {e}", file=sys.stderr)
        return 1
    key = load_key(cfg.data_dir)

    async def main() -> tuple[int, int]:
        from homeserver.storage.database import Database
        from homeserver.storage.search import reindex

        db = Database(cfg.database_url, cfg.database.sqlite_synchronous, at_rest=live,
                      sqlite_cache_kib=cfg.database.sqlite_cache_kib)
        await db.open()
        token = db.activate()
        try:
            return await reindex(key, batch=args.batch_size, progress=lambda n, rows: print(
                f"indexed {n} events ({rows} rows)", flush=True))
        finally:
            db.deactivate(token)
            await db.close()

    try:
        events, rows = asyncio.run(main())
    except AtRestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"search index rebuilt: {events} events, {rows} rows")
    return 0


def cmd_appservice_new(args: argparse.Namespace) -> int:
    """Print (or write) a fresh registration file with random tokens."""
    import secrets

    import yaml

    from homeserver.config import AppServiceRegistration

    exclusive = not args.non_exclusive

    def spaces(regexes: list[str] | None) -> list[dict]:
        return [{"regex": r, "exclusive": exclusive} for r in regexes or []]

    data = {
        "id": args.id,
        "url": None if args.url.lower() in ("none", "null", "") else args.url,
        "as_token": secrets.token_urlsafe(32),
        "hs_token": secrets.token_urlsafe(32),
        "sender_localpart": args.sender_localpart,
        "namespaces": {"users": spaces(args.users_regex), "aliases": spaces(args.aliases_regex),
                       "rooms": spaces(args.rooms_regex)},
        "rate_limited": args.rate_limited,
        "protocols": args.protocol or [],
        "receive_ephemeral": args.receive_ephemeral,
    }
    from pydantic import ValidationError

    try:
        AppServiceRegistration.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        print("error: invalid registration:\n" + "\n".join(lines), file=sys.stderr)
        return 2
    text = yaml.safe_dump(data, sort_keys=False)
    if args.output:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nexa", description="Nexa homeserver")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", help="config file (default: ./config.yaml if present)")
        sp.add_argument("--server-name")
        sp.add_argument("--data-dir")
        sp.add_argument("--database-url")

    def serving(sp: argparse.ArgumentParser) -> None:
        """What `run` serves with, which `check-config` checks too."""
        common(sp)
        sp.add_argument("--host")
        sp.add_argument("--port", type=int)
        sp.add_argument("--appservice", action="append", metavar="FILE",
                        help="an application-service registration file (repeatable)")

    run = sub.add_parser("run", help="run the homeserver")
    serving(run)
    run.add_argument("--insecure-federation-http", action="store_true",
                     help="federate over plain HTTP (loopback only)")
    run.set_defaults(fn=cmd_run)

    mig = sub.add_parser("migrate", help="bring the database schema up to date")
    common(mig)
    mig.set_defaults(fn=cmd_migrate)

    reg = sub.add_parser("register-user", help="create an account from the shell")
    common(reg)
    reg.add_argument("username")
    reg.add_argument("--password")
    reg.add_argument("--admin", action="store_true")
    reg.set_defaults(fn=cmd_register_user)

    chk = sub.add_parser("check-config", help="validate the configuration")
    serving(chk)
    chk.set_defaults(fn=cmd_check_config)

    rot = sub.add_parser("rotate-key", help="add an at-rest encryption key and re-encrypt "
                         "all stored content under it (the server may keep running)")
    common(rot)
    rot.add_argument("--retire-old", action="store_true",
                     help="afterwards, remove the older keys from the key file")
    rot.add_argument("--resume", action="store_true",
                     help="add no key: finish re-encrypting under the newest one")
    rot.add_argument("--generate", action="store_true",
                     help="only print a new key entry (for keys kept in NEXA_AT_REST_KEY)")
    rot.add_argument("--batch-size", type=int, default=500, help="rows per transaction")
    rot.add_argument("--grace-seconds", type=float, default=5.0,
                     help="how long a running server may take to notice the new key")
    rot.set_defaults(fn=cmd_rotate_key)

    rix = sub.add_parser("reindex-search", help="rebuild the message search index from the "
                         "stored events (the server may keep running)")
    common(rix)
    rix.add_argument("--batch-size", type=int, default=500, help="events per transaction")
    rix.set_defaults(fn=cmd_reindex_search)

    asv = sub.add_parser("appservice", help="application-service registrations")
    asv_sub = asv.add_subparsers(dest="appservice_command", required=True)
    new = asv_sub.add_parser("new", help="print a new registration file with random tokens")
    new.add_argument("--id", required=True)
    new.add_argument("--url", required=True, help="where the service listens ('none': no traffic)")
    new.add_argument("--sender-localpart", required=True)
    new.add_argument("--users-regex", action="append", metavar="REGEX")
    new.add_argument("--aliases-regex", action="append", metavar="REGEX")
    new.add_argument("--rooms-regex", action="append", metavar="REGEX")
    new.add_argument("--non-exclusive", action="store_true",
                     help="namespaces are shared (default: exclusive)")
    new.add_argument("--rate-limited", action="store_true",
                     help="rate-limit the service's users (default: exempt)")
    new.add_argument("--protocol", action="append",
                     help="a third-party protocol the service bridges (repeatable)")
    new.add_argument("--receive-ephemeral", action="store_true",
                     help="also push typing, receipts and presence (default: events only)")
    new.add_argument("-o", "--output", help="write to this file (mode 0600) instead of stdout")
    new.set_defaults(fn=cmd_appservice_new)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # mostly: the database (or a listener address) cannot be reached
        print(f"error: {e.strerror or e} (check database.url and the listeners)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
