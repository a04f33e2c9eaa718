"""The server-server API (/_matrix/federation/...).

Each endpoint area is a module in this package exposing a Quart `bp`; `blueprints()` collects
them all, so adding an area means adding a module (no list to edit). Authenticated routes use
`homeserver.api.federation.auth.federation_authed`, which passes the origin server name first.
Unknown /_matrix/federation paths fall through to the app's 404 M_UNRECOGNIZED handler.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib import metadata

from quart import Blueprint

from homeserver.api.common import respond
from homeserver.api.federation.auth import federation_authed

bp = Blueprint("federation_version", __name__)

try:
    SERVER_VERSION = metadata.version("nexa")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    SERVER_VERSION = "0.1.0"


@bp.route("/_matrix/federation/v1/version", methods=["GET"])
async def version():
    """Unauthenticated, as the spec says."""
    return respond({"server": {"name": "Nexa", "version": SERVER_VERSION}})


@bp.route("/_matrix/federation/unstable/im.nexa.ping", methods=["GET", "POST"])
@federation_authed
async def ping(origin: str):
    """Diagnostics: proves a signed request from `origin` verified here."""
    return respond({"origin": origin})


def blueprints() -> list[Blueprint]:
    out = [bp]
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "auth":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found = getattr(module, "bp", None)
        if isinstance(found, Blueprint):
            out.append(found)
    return out
