"""Configuration loading: the shipped config.yaml, every kind of bad configuration reported with
the dotted key it concerns (never a traceback), NEXA_* environment overrides, the order
file < environment < explicit overrides, and the warnings about risky settings.

load_config is always given `environ=` here: the test process's own environment holds NEXA_*
variables that are not configuration keys (NEXA_TEST_DB in the PostgreSQL run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from homeserver.config import Config, ConfigError, build_config, is_loopback, load_config

ROOT = Path(__file__).resolve().parents[2]
OPEN_PUBLIC = "registration.mode is 'open' while listening on"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problem_lines(err: ConfigError) -> list[str]:
    """The `  key: message` lines under "invalid configuration:"."""
    head, *lines = str(err).split("\n")
    assert head == "invalid configuration:"
    return lines


# --- the shipped file --------------------------------------------------------------------------

def test_shipped_config_loads_with_the_defaults_it_documents():
    cfg = load_config(ROOT / "config.yaml", environ={})
    # The file says "the values shown are the defaults": it must agree with the model.
    defaults = Config().model_dump()
    loaded = cfg.model_dump()
    assert loaded.pop("data_dir") == ROOT / "data"  # relative to the file, made absolute
    defaults.pop("data_dir")
    assert loaded == defaults
    assert cfg.warnings() == []
    assert cfg.database_url == f"sqlite://{ROOT / 'data' / 'nexa.db'}"
    assert cfg.base_url == "http://127.0.0.1:8008"


def test_empty_file_and_no_file_give_the_defaults(tmp_path):
    assert load_config(write(tmp_path, ""), environ={}).server_name == "localhost:8008"
    assert load_config(write(tmp_path, "# only a comment\n"), environ={}).limits.max_event_bytes \
        == 65536
    assert load_config(None, environ={}).model_dump() == Config().model_dump()


def test_relative_paths_are_relative_to_the_config_file_not_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", "data_dir: ../var/nexa\nappservices: [bridge.yaml]\n")
    monkeypatch.chdir(tmp_path / "etc")  # any other directory would do; the file decides
    cfg = load_config(path, environ={})
    assert cfg.data_dir == tmp_path / "var" / "nexa"
    assert cfg.appservices == [tmp_path / "etc" / "bridge.yaml"]


# --- bad configurations name the key -----------------------------------------------------------

@pytest.mark.parametrize("text, key, message", [
    ("bogus: 1\n", "bogus", "unknown key"),
    ("limits:\n  nope: 1\n", "limits.nope", "unknown key"),
    ("limits:\n  login: {per_second: 1, burst: 2, extra: 3}\n", "limits.login.extra",
     "unknown key"),
    ("listeners:\n  - port: abc\n", "listeners.0.port", "valid integer"),
    ("listeners:\n  - {port: 8008}\n  - {port: 70000}\n", "listeners.1.port",
     "less than or equal to 65535"),
    ("listeners: []\n", "listeners", "at least one listener"),
    ("listeners:\n  - {port: 8448, tls_cert: cert.pem}\n", "listeners.0",
     "tls_cert and tls_key must be given together"),
    ("caches:\n  events: 5\n", "caches.events", "greater than or equal to 100"),
    ("caches: 5\n", "caches", "valid dictionary"),
    ("limits:\n  max_event_bytes: 12\n", "limits.max_event_bytes", "greater than or equal to 1024"),
    ("limits:\n  login: {per_second: 0, burst: 1}\n", "limits.login.per_second", "greater than 0"),
    ("server_name: 'my server'\n", "server_name", "must look like host or host:port"),
    ("server_name: 'example.org:99999'\n", "server_name", "port part must be a number"),
    ("database:\n  url: mysql://db/nexa\n", "database.url",
     "must start with sqlite://, postgres:// or postgresql://"),
    ("database:\n  sqlite_synchronous: SOMETIMES\n", "database.sqlite_synchronous",
     "'OFF', 'NORMAL', 'FULL' or 'EXTRA'"),
    ("database:\n  sqlite_cache_kib: 8\n", "database.sqlite_cache_kib",
     "greater than or equal to 64"),
    ("registration:\n  mode: maybe\n", "registration.mode", "'open', 'token' or 'closed'"),
    ("security:\n  bcrypt_rounds: 2\n", "security.bcrypt_rounds", "greater than or equal to 4"),
    ("federation:\n  enabled: sometimes\n", "federation.enabled", "valid boolean"),
    ("federation:\n  dns_servers: [dns.example.org]\n", "federation.dns_servers",
     "'dns.example.org' is not an IP address"),
    ("notifier:\n  backend: redis\n", "notifier", "redis_url is required"),
    ("password_policy:\n  minimum_length: 0\n", "password_policy.minimum_length",
     "greater than or equal to 1"),
])
def test_invalid_value_is_reported_with_its_key(tmp_path, text, key, message):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), environ={})
    lines = problem_lines(exc.value)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"  {key}: "), lines
    assert message in lines[0]


def test_every_problem_is_reported_at_once(tmp_path):
    text = "bogus: 1\nlimits:\n  nope: 2\nlisteners:\n  - port: abc\ncaches:\n  events: 5\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), environ={})
    keys = sorted(line.split(":")[0].strip() for line in problem_lines(exc.value))
    assert keys == ["bogus", "caches.events", "limits.nope", "listeners.0.port"]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "absent.yaml", environ={})
    assert str(exc.value) == \
        f"cannot read config file {tmp_path / 'absent.yaml'}: No such file or directory"


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path, environ={})
    assert str(exc.value) == f"cannot read config file {tmp_path}: Is a directory"


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("server_name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert str(exc.value) == f"cannot read config file {path}: not UTF-8 text (byte 16)"


@pytest.mark.parametrize("text, where", [
    ("listeners: [\n", "line 2"),
    ("server_name: a\n  bad indent: b\n", "line 2"),
    ("limits:\n\t- tab\n", "line 2"),
])
def test_invalid_yaml(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    msg = str(exc.value)
    assert msg.startswith(f"config file {path} is not valid YAML: ")
    assert where in msg  # the operator is told where in the file


@pytest.mark.parametrize("text", ["- server_name: x\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert str(exc.value) == f"config file {path} must contain a mapping at the top level"


def test_build_config_names_the_key_too():
    with pytest.raises(ConfigError) as exc:
        build_config({"limits": {"messages": {"per_second": "fast", "burst": 1}}})
    assert problem_lines(exc.value)[0].startswith("  limits.messages.per_second: ")


# --- environment overrides ---------------------------------------------------------------------

def test_env_overrides_top_level_and_nested_keys(tmp_path):
    path = write(tmp_path, "server_name: file.example\nlimits:\n  login: {per_second: 2, "
                           "burst: 7}\n")
    cfg = load_config(path, environ={
        "NEXA_SERVER_NAME": "env.example:8448",
        "NEXA_LIMITS__MAX_EVENT_BYTES": "131072",
        "NEXA_LIMITS__LOGIN__BURST": "3",
        "NEXA_DATABASE__URL": "postgres://nexa@db:5432/nexa",
        "NEXA_REGISTRATION__MODE": "token",
        "NEXA_REGISTRATION__TOKENS": "[alpha, beta]",
        "NEXA_FEDERATION__ENABLED": "false",
        "NEXA_LISTENERS": "[{host: 127.0.0.2, port: 8123}]",
    })
    assert cfg.server_name == "env.example:8448"
    assert cfg.limits.max_event_bytes == 131072
    # Descending into a section changes one key and keeps the file's others.
    assert (cfg.limits.login.per_second, cfg.limits.login.burst) == (2, 3)
    assert cfg.limits.max_request_bytes == 1_048_576
    assert cfg.database_url == "postgres://nexa@db:5432/nexa"
    assert cfg.registration.mode == "token" and cfg.registration.tokens == ["alpha", "beta"]
    assert cfg.federation.enabled is False
    assert [(lst.host, lst.port) for lst in cfg.listeners] == [("127.0.0.2", 8123)]


def test_env_words_yaml_would_read_as_booleans(tmp_path):
    # "OFF" is one of sqlite_synchronous's values, not the boolean false.
    cfg = load_config(None, environ={"NEXA_DATABASE__SQLITE_SYNCHRONOUS": "OFF",
                                     "NEXA_FEDERATION__ENABLED": "off",
                                     "NEXA_LOGGING__ACCESS_LOG": "yes"})
    assert cfg.database.sqlite_synchronous == "OFF"
    assert cfg.federation.enabled is False
    assert cfg.logging.access_log is True


def test_env_variables_that_are_not_keys_are_ignored():
    cfg = load_config(None, environ={"NEXA_CONFIG": "/nowhere.yaml",
                                     "NEXA_AT_REST_KEY": "k1:abc", "PATH": "/usr/bin",
                                     "NEXAFOO": "1", "nexa_server_name": "lower.example"})
    assert cfg.model_dump() == Config().model_dump()


@pytest.mark.parametrize("name, value, key, message", [
    ("NEXA_LIMITS__MAX_EVENT_BYTES", "abc", "limits.max_event_bytes", "valid integer"),
    ("NEXA_LIMITS__MAX_EVENT_BYTES", "10", "limits.max_event_bytes",
     "greater than or equal to 1024"),
    ("NEXA_CACHES__EVENTS", "5", "caches.events", "greater than or equal to 100"),
    ("NEXA_SERVER_NAME", "a b", "server_name", "must look like host or host:port"),
    ("NEXA_DATABASE__URL", "mysql://x", "database.url", "must start with sqlite://"),
    ("NEXA_NOPE", "1", "nope", "unknown key"),
    ("NEXA_LIMITS__NOPE", "1", "limits.nope", "unknown key"),
    ("NEXA_LISTENERS", "[{port: abc}]", "listeners.0.port", "valid integer"),
])
def test_bad_env_value_names_the_key(name, value, key, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, environ={name: value})
    lines = problem_lines(exc.value)
    assert len(lines) == 1 and lines[0].startswith(f"  {key}: ") and message in lines[0], lines


def test_env_section_set_both_whole_and_by_key():
    # Whichever order the environment lists them in, the operator is told about the key.
    for environ in ({"NEXA_LIMITS": "5", "NEXA_LIMITS__LOGIN__BURST": "3"},
                    {"NEXA_LIMITS__LOGIN__BURST": "3", "NEXA_LIMITS": "5"}):
        with pytest.raises(ConfigError) as exc:
            load_config(None, environ=environ)
        assert problem_lines(exc.value)[0].startswith("  limits: "), str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config(None, environ={"NEXA_LIMITS__LOGIN": "x", "NEXA_LIMITS__LOGIN__BURST": "3"})
    assert problem_lines(exc.value)[0].startswith("  limits.login: ")


def test_file_then_environment_then_overrides(tmp_path):
    """load_config's documented order: the environment beats the file, explicit overrides
    (the command-line flags) beat both; each applies only to the keys it sets."""
    path = write(tmp_path, "server_name: file.example\npublic_baseurl: https://file.example\n"
                           "limits:\n  max_event_bytes: 2048\n  sync_coalesce_ms: 5\n")
    env = {"NEXA_SERVER_NAME": "env.example", "NEXA_LIMITS__MAX_EVENT_BYTES": "4096"}
    assert load_config(path, environ={}).server_name == "file.example"
    cfg = load_config(path, environ=env)
    assert (cfg.server_name, cfg.public_baseurl) == ("env.example", "https://file.example")
    assert (cfg.limits.max_event_bytes, cfg.limits.sync_coalesce_ms) == (4096, 5)
    cfg = load_config(path, overrides={"server_name": "flag.example", "public_baseurl": None},
                      environ=env)
    assert cfg.server_name == "flag.example"
    assert cfg.public_baseurl == "https://file.example"  # an override of None sets nothing
    assert cfg.limits.max_event_bytes == 4096


def test_environ_defaults_to_the_process_environment(tmp_path, monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("NEXA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NEXA_SERVER_NAME", "from-process.example")
    monkeypatch.setenv("NEXA_SECURITY__BCRYPT_ROUNDS", "5")
    cfg = load_config(write(tmp_path, "server_name: file.example\n"))
    assert cfg.server_name == "from-process.example" and cfg.security.bcrypt_rounds == 5


# --- warnings (allowed, but probably not wanted) -----------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org"])
def test_open_registration_on_a_public_address_warns(host):
    cfg = build_config({"listeners": [{"host": "127.0.0.1", "port": 8008},
                                      {"host": host, "port": 8448}]})
    (warning,) = cfg.warnings()
    # Names the public listener only, and says what to do about it.
    assert warning.startswith(f"{OPEN_PUBLIC} {host}: anyone who can reach this server")
    assert "127.0.0.1" not in warning
    assert "consider 'token' or 'closed'" in warning


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"])
def test_loopback_listeners_do_not_warn(host):
    assert is_loopback(host)
    assert build_config({"listeners": [{"host": host, "port": 8008}]}).warnings() == []


@pytest.mark.parametrize("registration, expected", [
    ({"mode": "token", "tokens": ["t"]}, []),
    ({"mode": "closed"}, []),
    ({"mode": "token"}, ["registration.mode is 'token' but registration.tokens is empty"]),
])
def test_other_registration_modes_on_a_public_address(registration, expected):
    cfg = build_config({"listeners": [{"host": "0.0.0.0", "port": 8008}],
                        "registration": registration})
    assert cfg.warnings() == expected


def test_derived_values():
    cfg = build_config({"data_dir": "/srv/nexa", "listeners": [{"host": "0.0.0.0", "port": 80}],
                        "at_rest": {"key_file": "keys/at_rest.key"}})
    assert cfg.database_url == "sqlite:///srv/nexa/nexa.db"
    assert cfg.base_url == "http://0.0.0.0:80"
    assert cfg.at_rest_key_path == Path("/srv/nexa/keys/at_rest.key")
    cfg = build_config({"public_baseurl": "https://chat.example.org/",
                        "database": {"url": "postgresql://h/db"},
                        "at_rest": {"key_file": "/etc/nexa/key"}})
    assert cfg.base_url == "https://chat.example.org"
    assert cfg.database_url == "postgresql://h/db"
    assert cfg.at_rest_key_path == Path("/etc/nexa/key")
