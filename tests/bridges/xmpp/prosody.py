"""A real Prosody (Debian's 0.12) for tests: its own temp directory, loopback ports, accounts
made with prosodyctl, a MUC service and the bridge's component.

Prosody refuses to run as root, and CI runs as root: then the server (and prosodyctl) run as
the `prosody` user through `setpriv` (which execs, so the test process stays Prosody's parent
and SIGTERM reaches it directly), in a directory that user owns (pytest's tmp_path lives under
a root-only directory it could not even read).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.bridges.support import stop_process
from tests.servers import free_port

PROSODY = shutil.which("prosody") or "/usr/bin/prosody"
PROSODYCTL = shutil.which("prosodyctl") or "/usr/bin/prosodyctl"

DOMAIN = "localhost"
MUC_DOMAIN = "conference.localhost"
COMPONENT_DOMAIN = "matrix.localhost"


def prosody_available() -> str | None:
    """None when Prosody can run here, else why not."""
    if not os.path.exists(PROSODY):
        return "prosody is not installed (apt-get install prosody)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("prosody")
        except KeyError:
            return "running as root but there is no prosody user to run Prosody as"
        if not shutil.which("setpriv"):
            return "running as root without setpriv (util-linux)"
    return None


def _lua(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Prosody:
    def __init__(self, *, history_length: int = 50) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nexa-prosody-"))
        self.c2s_port = free_port()
        self.component_port = free_port()
        self.component_secret = "comp-" + secrets.token_hex(12)
        self.history_length = history_length
        self.proc: asyncio.subprocess.Process | None = None
        self.config_path = self.dir / "prosody.cfg.lua"
        self.log_path = self.dir / "prosody.log"
        self._write_config()
        self._as_prosody = os.geteuid() == 0
        if self._as_prosody:
            import pwd

            pw = pwd.getpwnam("prosody")
            for p in (self.dir, self.dir / "data", self.config_path):
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def _write_config(self) -> None:
        (self.dir / "data").mkdir(mode=0o750)
        self.config_path.write_text(f"""
-- Written by tests/bridges/xmpp/prosody.py for one test.
pidfile = {_lua(str(self.dir / "prosody.pid"))}
data_path = {_lua(str(self.dir / "data"))}
log = {{ debug = {_lua(str(self.log_path))} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s_port} }}
component_ports = {{ {self.component_port} }}
component_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "posix", "vcard_legacy", "carbons" }}
modules_disabled = {{ "s2s" }}
authentication = "internal_plain"
allow_registration = false
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
storage = "internal"

VirtualHost {_lua(DOMAIN)}

Component {_lua(MUC_DOMAIN)} "muc"
    modules_enabled = {{ "muc_mam" }}
    restrict_room_creation = false
    max_history_messages = {self.history_length}
    muc_room_default_history_length = {self.history_length}
    muc_room_default_change_subject = true
    muc_room_default_persistent = true

Component {_lua(COMPONENT_DOMAIN)}
    component_secret = {_lua(self.component_secret)}
""")

    def _cmd(self, *args: str) -> list[str]:
        if self._as_prosody:
            return ["setpriv", "--reuid=prosody", "--regid=prosody", "--init-groups", "--", *args]
        return list(args)

    def register(self, user: str, password: str) -> None:
        out = subprocess.run(self._cmd(PROSODYCTL, "--config", str(self.config_path), "register",
                                       user, DOMAIN, password),
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"prosodyctl register {user} failed: {out.stdout}{out.stderr}")

    async def start(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            return
        self.proc = await asyncio.create_subprocess_exec(
            *self._cmd(PROSODY, "-F", "--config", str(self.config_path)),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        for port in (self.c2s_port, self.component_port):
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"prosody exited with {self.proc.returncode}:\n"
                                       f"{self.log_tail()}")
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    if loop.time() > deadline:
                        raise RuntimeError(f"prosody did not open port {port}:\n"
                                           f"{self.log_tail()}") from None
                    await asyncio.sleep(0.05)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        await stop_process(proc, 15)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
