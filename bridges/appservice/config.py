"""Bridge configuration: one YAML file per bridge process.

    homeserver:
      url: http://127.0.0.1:8008       # the Client-Server API
      server_name: null                # learned from /whoami when null
    registration: registration.yaml    # the same file the homeserver lists in `appservices:`
    listen: {host: 127.0.0.1, port: 9000}
    database: bridge.db                # SQLite: transactions seen, ID mappings, adapter data
    logging: {level: INFO}
    webhooks: {...}                    # one section per adapter (see the adapter)

Relative paths are relative to the config file. Problems are reported with the key they concern.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

M = TypeVar("M", bound=BaseModel)


class BridgeConfigError(Exception):
    pass


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HomeserverSection(Section):
    url: str = "http://127.0.0.1:8008"
    server_name: str | None = None


class ListenSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(9000, ge=0, le=65535)


class LoggingSection(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ReconnectSection(Section):
    base_ms: int = Field(1_000, ge=1)
    max_ms: int = Field(60_000, ge=1)


class PuppetingSection(Section):
    """Settings every adapter with puppets and portal rooms shares; adapters subclass it
    (and may override the prefixes' defaults)."""

    # Remote users are @<puppet_prefix>...; portal rooms #<alias_prefix>...
    puppet_prefix: str = "bridge_"
    alias_prefix: str = "bridge_"
    # Base URL remote users download Nexa media from (default: homeserver.url).
    media_url: str | None = None
    reconnect: ReconnectSection = ReconnectSection()
    ping_interval_s: float = Field(60, gt=0)
    # Retry delays when a queued message failed for now (e.g. the homeserver is unreachable).
    retry_base_ms: int = Field(500, ge=1)
    retry_max_ms: int = Field(30_000, ge=1)

    @field_validator("puppet_prefix", "alias_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9._=/-]+$", v):
            raise ValueError("must be a non-empty Matrix localpart prefix (a-z 0-9 ._=-/)")
        return v

    @field_validator("media_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://\S+$", v):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/") if v else v


class BridgeConfig(BaseModel):
    # Adapter sections are extra keys, validated by the adapter (`section`).
    model_config = ConfigDict(extra="allow")

    homeserver: HomeserverSection = HomeserverSection()
    registration: Path | None = None
    listen: ListenSection = ListenSection()
    database: Path = Path("bridge.db")
    logging: LoggingSection = LoggingSection()

    def section(self, name: str, model: type[M]) -> M:
        raw = (self.model_extra or {}).get(name) or {}
        try:
            return model.model_validate(raw)
        except ValidationError as e:
            raise BridgeConfigError(describe(e, name)) from None


def describe(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        key = ".".join([prefix, *(str(p) for p in e["loc"])] if prefix else
                       [str(p) for p in e["loc"]]) or "(top level)"
        lines.append(f"  {key}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}")
    return "invalid bridge configuration:\n" + "\n".join(lines)


def load_bridge_config(path: str | Path | None = None, data: dict[str, Any] | None = None
                       ) -> BridgeConfig:
    base = Path(".").resolve()
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise BridgeConfigError(f"cannot read {p}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise BridgeConfigError(f"{p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise BridgeConfigError(f"{p} must contain a mapping")
        base = p.resolve().parent
    data = dict(data or {})
    for key in ("registration", "database"):
        if isinstance(data.get(key), str) and data[key] != ":memory:":
            data[key] = str((base / data[key]).resolve())
    try:
        return BridgeConfig.model_validate(data)
    except ValidationError as e:
        raise BridgeConfigError(describe(e)) from None
