"""Client-Server API blueprints, mounted under /_matrix/client/v3 and /r0 (v1: newer endpoints)."""

from __future__ import annotations

import importlib

from quart import Blueprint

_MODULES = ["account", "rooms", "events", "sync", "ephemeral", "user_data", "profile", "directory",
            "keys", "push", "search"]


def blueprints() -> list[Blueprint]:
    out = []
    for name in _MODULES:
        try:
            mod = importlib.import_module(f"homeserver.api.client.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"homeserver.api.client.{name}":
                raise
            continue
        out.append(mod.bp)
    return out


def v1_blueprints() -> list[Blueprint]:
    """Endpoints that exist only under /_matrix/client/v1."""
    from homeserver.api.client import relations
    return [relations.bp]


def unstable_blueprints() -> list[Blueprint]:
    out = []
    try:
        from homeserver.api import nexa
        out.append(nexa.bp)
    except ImportError:
        pass
    return out
