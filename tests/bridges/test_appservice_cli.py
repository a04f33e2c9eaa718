"""Registration files from the command line: `nexa appservice new`, `--appservice FILE`, and the
start-up checks that name the broken file; the namespace rules as pure functions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from homeserver.config import (AppServiceRegistration, ConfigError,
                               load_appservice_registrations)
from homeserver.handlers.appservice import AppService
from tests.bridges.fake_as import write_registration

ROOT = Path(__file__).resolve().parents[2]


def nexa(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "homeserver", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_appservice_new_writes_a_valid_registration(tmp_path):
    out = nexa("appservice", "new", "--id", "x", "--url", "http://127.0.0.1:9999",
               "--sender-localpart", "bot", "--users-regex", "@x_.*", "--aliases-regex", "#x_.*",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    reg = AppServiceRegistration.model_validate(data)
    assert reg.id == "x" and reg.sender_localpart == "bot"
    assert reg.namespaces.users[0].regex == "@x_.*" and reg.namespaces.users[0].exclusive
    assert len(reg.as_token) >= 32 and len(reg.hs_token) >= 32 and reg.as_token != reg.hs_token
    again = yaml.safe_load(nexa("appservice", "new", "--id", "x", "--url", "none",
                                "--sender-localpart", "bot", cwd=tmp_path).stdout)
    assert again["as_token"] != data["as_token"] and again["url"] is None
    # -o writes a private file.
    target = tmp_path / "reg.yaml"
    out = nexa("appservice", "new", "--id", "y", "--url", "http://h", "--sender-localpart", "b",
               "-o", str(target), cwd=tmp_path)
    assert out.returncode == 0 and target.stat().st_mode & 0o077 == 0
    bad = nexa("appservice", "new", "--id", "z", "--url", "http://h", "--sender-localpart", "b",
               "--users-regex", "@z_(", cwd=tmp_path)
    assert bad.returncode == 2 and "namespaces.users.0.regex" in bad.stderr


def test_appservice_flag_and_check_config(tmp_path):
    good = tmp_path / "good.yaml"
    write_registration(good, id="good", url="http://127.0.0.1:1", sender="goodbot")
    out = nexa("check-config", "--data-dir", str(tmp_path / "d"), "--appservice", str(good),
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "appservice good:" in out.stdout
    # A relative path in config.yaml is relative to the config file.
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("appservices: [../good.yaml]\n")
    out = nexa("check-config", "-c", "conf/config.yaml", cwd=tmp_path)
    assert out.returncode == 0 and "appservice good:" in out.stdout, out.stderr
    # `nexa run` refuses a broken registration before starting anything.
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: broken\nurl: http://x\n")
    out = nexa("run", "--data-dir", str(tmp_path / "d2"), "--port", "1", "--appservice",
               str(broken), cwd=tmp_path)
    assert out.returncode == 2
    assert "broken.yaml" in out.stderr and "as_token" in out.stderr
    assert not (tmp_path / "d2").exists()
    dup = tmp_path / "dup.yaml"
    write_registration(dup, id="good", url=None, sender="otherbot")
    out = nexa("check-config", "--appservice", str(good), "--appservice", str(dup),
               cwd=tmp_path)
    assert out.returncode == 2 and "dup.yaml: id is already used by" in out.stderr


@pytest.mark.parametrize("content, problem", [
    ("[1, 2]", "mapping"),
    ("id: a\nurl: ftp://x\nas_token: a\nhs_token: b\nsender_localpart: s\n", "url"),
    ("id: a\nurl: null\nas_token: a\nhs_token: a\nsender_localpart: s\n", "must be different"),
    ("id: a\nurl: null\nas_token: a\nhs_token: b\nsender_localpart: Bad Name\n",
     "sender_localpart"),
    ("id: a\nurl: null\nas_token: a\nhs_token: b\nsender_localpart: s\n"
     "namespaces: {users: [{regex: '[', exclusive: true}]}\n", "regular expression"),
    ("id: a\nurl: null\nas_token: a\nhs_token: b\nsender_localpart: s\n"
     "namespaces: {users: [{exclusive: true}]}\n", "regex"),
    ("id: [oops\n", "YAML"),
])
def test_bad_registration_files(tmp_path, content, problem):
    p = tmp_path / "r.yaml"
    p.write_text(content)
    with pytest.raises(ConfigError) as e:
        load_appservice_registrations([p])
    assert "r.yaml" in str(e.value) and problem in str(e.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_appservice_registrations([tmp_path / "missing.yaml"])


def test_namespace_rules():
    reg = AppServiceRegistration.model_validate({
        "id": "a", "url": None, "as_token": "a", "hs_token": "b", "sender_localpart": "bot",
        "namespaces": {"users": [{"regex": "@irc_.*", "exclusive": True},
                                 {"regex": "@guest_.*", "exclusive": False}],
                       "aliases": [{"regex": "#irc_.*", "exclusive": True}],
                       "rooms": [{"regex": "!bridged[0-9]+:hs", "exclusive": False}]},
        "some.vendor.extension": True})
    s = AppService(reg, None, "hs")
    assert s.sender == "@bot:hs"
    assert s.is_interested_in_user("@irc_x:hs") and s.is_exclusive_user("@irc_x:hs")
    assert s.is_interested_in_user("@guest_x:hs") and not s.is_exclusive_user("@guest_x:hs")
    assert s.is_exclusive_user("@bot:hs") and not s.is_interested_in_user("@alice:hs")
    assert s.owns_local_user("@irc_x:hs") and not s.owns_local_user("@irc_x:elsewhere")
    assert s.is_exclusive_alias("#irc_chan:hs") and not s.is_interested_in_alias("#chan:hs")
    assert s.is_interested_in_room_id("!bridged42:hs") and not s.is_interested_in_room_id("!x:hs")
