"""Server keys: our published signing key, a simple notary, and /.well-known/matrix/server."""

from __future__ import annotations

import asyncio
from typing import Any

from quart import Blueprint

from homeserver.api.common import hs, json_object, query_int, respond
from homeserver.errors import bad_json, invalid_param, not_found
from homeserver.events.signing import sign_json
from homeserver.types import is_valid_server_name

bp = Blueprint("keys", __name__)

# One notary request may not make us fetch from more servers than this.
MAX_NOTARY_SERVERS = 20


@bp.route("/_matrix/key/v2/server", methods=["GET"])
@bp.route("/_matrix/key/v2/server/<path:key_id>", methods=["GET"])
async def server_keys(key_id: str | None = None):
    # The key ID form is deprecated; it answers with all keys, as the spec allows.
    return respond(hs().keyring.own_server_keys())


@bp.route("/.well-known/matrix/server", methods=["GET"])
async def well_known_server():
    delegated = hs().config.federation.well_known_server
    if not delegated:
        raise not_found("No server delegation is configured")
    return respond({"m.server": delegated})


async def _notarise(requests: dict[str, int]) -> list[dict]:
    server = hs()
    from homeserver.handlers.federation.transport import server_allowed

    names = [name for name in requests
             if isinstance(name, str) and is_valid_server_name(name)
             and (name == server.server_name or server_allowed(server.config.federation, name))]
    if len(names) > MAX_NOTARY_SERVERS:
        raise invalid_param(f"At most {MAX_NOTARY_SERVERS} servers per key query")
    results = await asyncio.gather(
        *(server.keyring.server_keys_response(n, requests[n]) for n in names))
    out = []
    for name, response in zip(names, results):
        if response is None:
            continue
        if name != server.server_name:
            try:
                response = sign_json(response, server.server_name, server.signing_key)
            except ValueError:
                continue
        out.append(response)
    return out


@bp.route("/_matrix/key/v2/query", methods=["POST"])
async def query_keys():
    data = await json_object()
    wanted = data.get("server_keys")
    if not isinstance(wanted, dict):
        raise bad_json("server_keys must be an object")
    requests: dict[str, int] = {}
    for name, key_ids in wanted.items():
        if not isinstance(key_ids, dict):
            raise bad_json(f"server_keys.{name} must be an object")
        minimum = 0
        for criteria in key_ids.values():
            ts = criteria.get("minimum_valid_until_ts") if isinstance(criteria, dict) else None
            if isinstance(ts, int) and not isinstance(ts, bool):
                minimum = max(minimum, ts)
        requests[name] = minimum
    return respond({"server_keys": await _notarise(requests)})


@bp.route("/_matrix/key/v2/query/<server_name>", methods=["GET"])
async def query_server_keys(server_name: str):
    minimum: Any = query_int("minimum_valid_until_ts", 0, hi=2**62)
    return respond({"server_keys": await _notarise({server_name: minimum})})
