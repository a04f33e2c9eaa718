"""One typed configuration object, loaded from config.yaml and NEXA_* environment overrides.

Validation happens once at start-up; every problem is reported with the dotted key it concerns
so that an operator never has to read a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)


class ConfigError(Exception):
    """A configuration problem, worded for the operator."""


class _Section(BaseModel):
    # Unknown keys are almost always typos; refuse them instead of silently ignoring.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ListenerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8008, ge=0, le=65535)
    # TLS for this listener (PEM files); both or neither. Real deployments federate over HTTPS.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> "ListenerConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self


class DatabaseConfig(_Section):
    # None means the embedded default: an SQLite file inside data_dir.
    url: str | None = None
    # FULL makes every acknowledged write durable across power loss, not just process crashes.
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    # SQLite's own page cache; pages beyond it come from the operating system's file cache.
    sqlite_cache_kib: int = Field(1024, ge=64, le=4_194_304)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite://", "postgres://", "postgresql://")):
            raise ValueError("must start with sqlite://, postgres:// or postgresql://")
        return v


class RegistrationConfig(_Section):
    mode: Literal["open", "token", "closed"] = "open"
    # Tokens accepted when mode is "token" (m.login.registration_token).
    tokens: list[str] = []


class PasswordPolicyConfig(_Section):
    """What a new password must have (registration and password changes; not application
    services, which register users without passwords, nor `nexa register-user`)."""

    enabled: bool = True
    minimum_length: int = Field(8, ge=1, le=512)
    require_digit: bool = True
    require_lowercase: bool = True
    require_uppercase: bool = False
    # Anything that is not a letter or a digit (a space counts).
    require_symbol: bool = False
    # Refuse the most common passwords (homeserver/handlers/common_passwords.txt), any case.
    refuse_common: bool = True


class RateLimit(_Section):
    per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class LimitsConfig(_Section):
    max_event_bytes: int = Field(65536, ge=1024)
    max_request_bytes: int = Field(1_048_576, ge=65536)
    login: RateLimit = RateLimit(per_second=0.5, burst=10)
    registration: RateLimit = RateLimit(per_second=0.2, burst=10)
    messages: RateLimit = RateLimit(per_second=50, burst=500)
    # Under load each device gets at most one /sync response per this many milliseconds,
    # so busy servers send fewer, fuller responses (no wait below 50 responses/s).
    sync_coalesce_ms: int = Field(100, ge=0, le=1000)


class SecurityConfig(_Section):
    bcrypt_rounds: int = Field(12, ge=4, le=31)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = False


class FederationConfig(_Section):
    enabled: bool = True
    # Plain HTTP between servers: only for several servers on one machine (loopback).
    plain_http: bool = False
    # Server names (shell-style patterns such as "*.example.org" allowed). None: everyone not denied.
    allow: list[str] | None = None
    deny: list[str] = []
    # Outbound HTTPS: verify certificates (turn off only for testing); ca_file adds trusted CAs.
    tls_verify: bool = True
    ca_file: Path | None = None
    # Served at /.well-known/matrix/server as {"m.server": ...} to delegate federation traffic.
    well_known_server: str | None = None
    # DNS servers ("ip" or "ip:port") for other servers' SRV records and addresses; empty:
    # the system's resolver.
    dns_servers: list[str] = []
    # Retries while a destination is down: exponential from retry_base_ms, capped, with jitter.
    retry_base_ms: int = Field(500, ge=1)
    retry_max_ms: int = Field(60_000, ge=1)

    @field_validator("dns_servers")
    @classmethod
    def _dns_servers(cls, v: list[str]) -> list[str]:
        from homeserver.handlers.federation.discovery import parse_dns_server

        for server in v:
            parse_dns_server(server)  # ValueError names the bad entry
        return v


class MediaConfig(_Section):
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024)


class CachesConfig(_Section):
    # Decoded events kept in memory (about 3 KB each): the hot set of a busy server. The cache
    # is what grows a long-running server's memory, so it is bounded here.
    events: int = Field(10_000, ge=100, le=10_000_000)


class AtRestConfig(_Section):
    """Encryption at rest (docs/at-rest-encryption.md). The keys come from the environment
    variable NEXA_AT_REST_KEY when it is set, otherwise from key_file."""

    # None: data_dir/at_rest.key, generated (mode 0600) on first start. A relative path is
    # relative to data_dir.
    key_file: Path | None = None


class NotifierConfig(_Section):
    # "memory": wake-ups stay in this process. "redis": published on a Redis channel so that
    # every worker process wakes its own /sync and Socket.IO listeners.
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @model_validator(mode="after")
    def _url_for_redis(self) -> "NotifierConfig":
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("redis_url is required when backend is 'redis'")
        return self


class AppServiceSenderConfig(_Section):
    """How the homeserver talks to application services (their registrations: `appservices`)."""

    # Transactions an AS did not acknowledge are retried (same ID, same content) with
    # exponential backoff from retry_base_ms up to retry_max_ms, with jitter.
    retry_base_ms: int = Field(500, ge=1)
    retry_max_ms: int = Field(60_000, ge=1)
    request_timeout_s: float = Field(30, gt=0, le=600)
    # User and alias queries are made while a client waits: keep them short.
    query_timeout_s: float = Field(5, gt=0, le=60)
    max_events_per_txn: int = Field(100, ge=1, le=1000)


class PushConfig(_Section):
    """How notifications reach the push gateways of users' pushers (POST /pushers/set)."""

    # A gateway that fails is retried with exponential backoff from retry_base_ms up to
    # retry_max_ms, with jitter; its notifications wait in order.
    retry_base_ms: int = Field(500, ge=1)
    retry_max_ms: int = Field(60_000, ge=1)
    request_timeout_s: float = Field(10, gt=0, le=600)
    # A notification not delivered by then is skipped: a day-old push helps nobody.
    give_up_after_s: int = Field(86_400, ge=1)
    # GET /notifications shows this much history; older rows are deleted.
    keep_notifications_days: int = Field(30, ge=1)
    # Gateways on loopback or private addresses (a gateway beside the server, tests). Off by
    # default: any user may add a pusher, and it must not reach into the server's network.
    allow_private_gateways: bool = False


class Config(_Section):
    server_name: str = "localhost:8008"
    public_baseurl: str | None = None
    data_dir: Path = Path("data")
    listeners: list[ListenerConfig] = [ListenerConfig()]
    database: DatabaseConfig = DatabaseConfig()
    registration: RegistrationConfig = RegistrationConfig()
    password_policy: PasswordPolicyConfig = PasswordPolicyConfig()
    limits: LimitsConfig = LimitsConfig()
    security: SecurityConfig = SecurityConfig()
    logging: LoggingConfig = LoggingConfig()
    federation: FederationConfig = FederationConfig()
    media: MediaConfig = MediaConfig()
    caches: CachesConfig = CachesConfig()
    at_rest: AtRestConfig = AtRestConfig()
    notifier: NotifierConfig = NotifierConfig()
    # Application-service registration files (bridges).
    appservices: list[Path] = []
    appservice_sender: AppServiceSenderConfig = AppServiceSenderConfig()
    push: PushConfig = PushConfig()

    @field_validator("server_name")
    @classmethod
    def _valid_server_name(cls, v: str) -> str:
        host, _, port = v.rpartition(":") if v.count(":") == 1 else (v, "", "")
        if not host or any(c.isspace() or c in "/@#!$" for c in v):
            raise ValueError("must look like host or host:port")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("port part must be a number from 1 to 65535")
        return v

    @field_validator("listeners")
    @classmethod
    def _at_least_one(cls, v: list[ListenerConfig]) -> list[ListenerConfig]:
        if not v:
            raise ValueError("at least one listener is needed")
        return v

    # --- derived values -------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite://{(self.data_dir / 'nexa.db').resolve()}"

    @property
    def at_rest_key_path(self) -> Path:
        if self.at_rest.key_file is None:
            return self.data_dir / "at_rest.key"
        return self.data_dir / self.at_rest.key_file  # an absolute key_file stays as it is

    @property
    def base_url(self) -> str:
        if self.public_baseurl:
            return self.public_baseurl.rstrip("/")
        lst = self.listeners[0]
        return f"http://{lst.host}:{lst.port}"

    def warnings(self) -> list[str]:
        """Things that are allowed but probably not what the operator wants."""
        out = []
        public = [lst.host for lst in self.listeners if not is_loopback(lst.host)]
        if self.registration.mode == "open" and public:
            out.append(
                f"registration.mode is 'open' while listening on {', '.join(public)}: anyone who "
                "can reach this server can create accounts; consider 'token' or 'closed'"
            )
        if self.registration.mode == "token" and not self.registration.tokens:
            out.append("registration.mode is 'token' but registration.tokens is empty")
        return out


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


ENV_PREFIX = "NEXA_"
# Not configuration keys: the config file path, and at-rest key material (read by
# homeserver/crypto/keystore.py, never part of the Config object).
ENV_NOT_KEYS = ("NEXA_CONFIG", "NEXA_AT_REST_KEY")


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """NEXA_SERVER_NAME=x, NEXA_DATABASE__URL=y: double underscore descends into a section."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_KEYS:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        node = out
        for depth, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # e.g. NEXA_LIMITS=5 and NEXA_LIMITS__LOGIN=...
                raise ConfigError(f"invalid configuration:\n  {'.'.join(path[:depth + 1])}: "
                                  f"set to a single value and also descended into by {name}")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        # YAML 1.1 reads on/off/yes/no as booleans; keep such words as text (pydantic still
        # reads them as booleans where one is wanted), so sqlite_synchronous=OFF stays "OFF".
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw
        node[path[-1]] = value
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def build_config(data: dict[str, Any] | None = None, **overrides: Any) -> Config:
    """Validate a mapping (plus keyword overrides) into a Config, or raise ConfigError."""
    merged = _deep_merge(data or {}, {k: v for k, v in overrides.items() if v is not None})
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """File, then environment, then explicit overrides (command-line flags) win."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"cannot read config file {p}: not UTF-8 text (byte "
                              f"{e.start})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must contain a mapping at the top level")
        data = loaded
        # Relative data_dir and appservice paths are relative to the config file.
        base = p.resolve().parent
        if "data_dir" in data and isinstance(data["data_dir"], str):
            data["data_dir"] = str((base / data["data_dir"]).resolve())
        if isinstance(data.get("appservices"), list):
            data["appservices"] = [str((base / a).resolve()) if isinstance(a, str) else a
                                   for a in data["appservices"]]
    data = _deep_merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    return build_config(data, **(overrides or {}))


# --- application-service registrations ---------------------------------------------------------

_AS_LOCALPART_RE = re.compile(r"^[a-z0-9._=\-/+]+$")
_AS_PROTOCOL_RE = re.compile(r"^[A-Za-z0-9._~\-]{1,128}$")
UNSTABLE_PUSH_EPHEMERAL = "de.sorunome.msc2409.push_ephemeral"


class AppServiceNamespace(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    regex: str = Field(min_length=1, max_length=1000)
    exclusive: bool = False

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
        return v


class AppServiceNamespaces(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    users: list[AppServiceNamespace] = []
    aliases: list[AppServiceNamespace] = []
    rooms: list[AppServiceNamespace] = []


class AppServiceRegistration(BaseModel):
    """One application-service registration file (the spec's Registration object).

    Unknown keys are ignored: bridges write vendor extensions into these files."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=255)
    # null: the AS needs no traffic from the homeserver (it only uses the client API).
    url: str | None
    as_token: str = Field(min_length=1, max_length=1024)
    hs_token: str = Field(min_length=1, max_length=1024)
    sender_localpart: str = Field(min_length=1, max_length=200)
    namespaces: AppServiceNamespaces = AppServiceNamespaces()
    rate_limited: bool = True
    protocols: list[str] = []
    # MSC2409, in the spec since v1.13; bridges written before then use the unstable key.
    receive_ephemeral: bool = False

    @model_validator(mode="before")
    @classmethod
    def _unstable_ephemeral(cls, data: Any) -> Any:
        if isinstance(data, dict) and "receive_ephemeral" not in data \
                and UNSTABLE_PUSH_EPHEMERAL in data:
            data = {**data, "receive_ephemeral": data[UNSTABLE_PUSH_EPHEMERAL]}
        return data

    @field_validator("protocols")
    @classmethod
    def _protocol_ids(cls, v: list[str]) -> list[str]:
        # They become a path segment of /thirdparty/... requests to the service.
        for p in v:
            if not _AS_PROTOCOL_RE.match(p):
                raise ValueError(f"protocol {p[:64]!r} must be 1-128 characters of A-Z, a-z, "
                                 "0-9 and ._~-")
        if len(set(v)) != len(v):
            raise ValueError("a protocol is listed twice")
        return v

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL, or null")
        return v.rstrip("/") if v else v

    @field_validator("sender_localpart")
    @classmethod
    def _localpart(cls, v: str) -> str:
        if not _AS_LOCALPART_RE.match(v):
            raise ValueError("may only contain the characters a-z, 0-9 and ._=-/+")
        return v

    @model_validator(mode="after")
    def _distinct_tokens(self) -> "AppServiceRegistration":
        if self.as_token == self.hs_token:
            raise ValueError("as_token and hs_token must be different")
        return self


def load_appservice_registration(path: str | Path) -> AppServiceRegistration:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"appservice registration {p}: cannot read it: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"appservice registration {p}: cannot read it: not UTF-8 text (byte "
                          f"{e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"appservice registration {p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"appservice registration {p}: must contain a mapping at the top level")
    try:
        return AppServiceRegistration.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(part) for part in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {msg}")
        raise ConfigError(f"appservice registration {p} is invalid:\n" + "\n".join(lines)) from None


def load_appservice_registrations(paths: list[Path]) -> list[tuple[Path, AppServiceRegistration]]:
    """Every registration file, validated, with no id, token or sender shared between two."""
    out: list[tuple[Path, AppServiceRegistration]] = []
    seen: dict[tuple[str, str], Path] = {}
    for path in paths:
        reg = load_appservice_registration(path)
        for what, value in (("id", reg.id), ("as_token", reg.as_token),
                            ("hs_token", reg.hs_token), ("sender_localpart", reg.sender_localpart)):
            # A token may not be reused as another service's other token either.
            kind = "token" if what.endswith("_token") else what
            other = seen.get((kind, value))
            if other is not None:
                where = "the same file" if Path(other) == Path(path) else str(other)
                raise ConfigError(f"appservice registration {path}: {what} is already used by "
                                  f"{where}")
            seen[(kind, value)] = Path(path)
        out.append((Path(path), reg))
    return out
