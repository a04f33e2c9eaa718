"""Third-party networks (the Client-Server API's /thirdparty/...): answered by asking the
application services whose registration lists the protocol, over
GET /_matrix/app/v1/thirdparty/... with the hs_token.

Every service concerned is asked at once and given `query_timeout_s`; one that is unreachable,
slow, backing off (its transactions are failing) or answers with something malformed counts as
having nothing, so a client gets an answer within that time with what the others said.
Protocol metadata from several services for one protocol is merged (the first one's fields,
everyone's instances), each instance gaining the `instance_id` the spec asks the homeserver to
add: "<appservice id>|<network_id>", unique on this server. Good metadata is cached briefly:
clients ask for it when they open their room directory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson

from homeserver.errors import MatrixError, invalid_param, missing_param, not_found
from homeserver.handlers.appservice.registration import AppService
from homeserver.types import is_valid_room_alias, is_valid_user_id

if TYPE_CHECKING:
    from homeserver.handlers.appservice.handler import AppServiceHandler

log = logging.getLogger(__name__)

PROTOCOL_TTL_S = 60.0  # cached protocol metadata of one service
MAX_RESPONSE_BYTES = 1024 * 1024
MAX_RESULTS = 1000  # entries kept from one service's lookup answer
MAX_FIELDS = 20  # query parameters passed on to the services
MAX_FIELD_LENGTH = 1000


class _NoAnswer(Exception):
    """The service did not give a usable answer (down, slow, malformed)."""


class ThirdParty:
    def __init__(self, handler: AppServiceHandler) -> None:
        self.handler = handler
        self._protocols: dict[tuple[str, str], tuple[float, dict]] = {}

    # --- who is asked ------------------------------------------------------------------------

    def _askable(self) -> list[AppService]:
        return sorted((s for s in self.handler.services.values() if s.url and s.protocols),
                      key=lambda s: s.id)

    def protocols(self) -> list[str]:
        return sorted({p for s in self._askable() for p in s.protocols})

    def _for_protocol(self, protocol: str) -> list[AppService]:
        services = [s for s in self._askable() if protocol in s.protocols]
        if not services:
            raise not_found("Unknown third-party protocol")
        return services

    # --- protocol metadata -------------------------------------------------------------------

    async def get_protocols(self) -> dict[str, dict]:
        """Every protocol some service answered for (those none answered for are left out)."""
        pairs = [(s, p) for s in self._askable() for p in s.protocols]
        answers = await asyncio.gather(*(self._protocol_of(s, p) for s, p in pairs))
        by_protocol: dict[str, list[dict]] = {}
        for (_s, p), meta in zip(pairs, answers):
            if meta is not None:
                by_protocol.setdefault(p, []).append(meta)
        return {p: _merge_protocol(metas) for p, metas in sorted(by_protocol.items())}

    async def get_protocol(self, protocol: str) -> dict:
        services = self._for_protocol(protocol)
        answers = await asyncio.gather(*(self._protocol_of(s, protocol) for s in services))
        metas = [m for m in answers if m is not None]
        if not metas:
            raise not_found("The application service for this protocol did not answer")
        return _merge_protocol(metas)

    async def _protocol_of(self, service: AppService, protocol: str) -> dict | None:
        key = (service.id, protocol)
        cached = self._protocols.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            raw = await self._get(service, f"thirdparty/protocol/{quote(protocol, safe='')}", {})
            meta = _protocol_metadata(service, raw)
        except _NoAnswer as e:
            log.info("appservice %s: no metadata for protocol %s: %s", service.id, protocol, e)
            return None
        self._protocols[key] = (time.monotonic() + PROTOCOL_TTL_S, meta)
        return meta

    # --- lookups -----------------------------------------------------------------------------

    async def lookup(self, kind: str, protocol: str, fields: dict[str, str]) -> list[dict]:
        """kind "location" or "user": the portal rooms / users matching the fields."""
        services = self._for_protocol(protocol)
        _check_fields(fields)
        return await self._merged(services, f"thirdparty/{kind}/{quote(protocol, safe='')}",
                                  fields, kind)

    async def reverse_lookup(self, kind: str, value: str | None) -> list[dict]:
        """kind "location" (by room alias, ?alias=) or "user" (by user ID, ?userid=): asked of
        every bridge, since a portal room or a puppeted user need not be in its namespaces."""
        param, valid, what = _REVERSE[kind]
        if not value:
            raise missing_param(f"{param} is required")
        if not valid(value):
            raise invalid_param(f"{param} is not a valid {what}")
        return await self._merged(self._askable(), f"thirdparty/{kind}", {param: value}, kind)

    async def _merged(self, services: list[AppService], path: str, params: dict[str, str],
                      kind: str) -> list[dict]:
        async def one(s: AppService) -> list[dict] | None:
            try:
                return _entries(await self._get(s, path, params, none_on_404=True), kind)
            except _NoAnswer as e:
                log.info("appservice %s: %s lookup failed: %s", s.id, kind, e)
                return None

        answers = await asyncio.gather(*(one(s) for s in services))
        found = [e for a in answers if a for e in a]
        if found:
            return found
        if services and all(a is None for a in answers):
            raise MatrixError(504, "M_UNKNOWN",
                              "The application services for this lookup did not answer")
        raise not_found(f"No third-party {kind} found")

    # --- HTTP --------------------------------------------------------------------------------

    async def _get(self, service: AppService, path: str, params: dict[str, str],
                   none_on_404: bool = False) -> Any:
        if self.handler.sender.is_down(service.id):
            raise _NoAnswer("backing off (its transactions are failing)")
        url = f"{service.url}/_matrix/app/v1/{path}"
        timeout = aiohttp.ClientTimeout(total=self.handler.settings.query_timeout_s)
        try:
            async with self.handler.http().get(url, params=params, timeout=timeout, headers={
                    "Authorization": f"Bearer {service.hs_token}"}) as r:
                data = await r.content.read(MAX_RESPONSE_BYTES + 1)
                status = r.status
        except asyncio.TimeoutError:
            raise _NoAnswer("timed out") from None
        except (aiohttp.ClientError, ValueError, OSError) as e:
            raise _NoAnswer(str(e) or type(e).__name__) from None
        if status == 404 and none_on_404:
            return []  # the spec's "nothing found"
        if not 200 <= status < 300:
            raise _NoAnswer(f"HTTP {status}")
        if len(data) > MAX_RESPONSE_BYTES:
            raise _NoAnswer("answer too large")
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _NoAnswer("answer is not JSON") from None


# --- checking and merging what services say (pure) ---------------------------------------------

def _check_fields(fields: dict[str, str]) -> None:
    if len(fields) > MAX_FIELDS:
        raise invalid_param(f"At most {MAX_FIELDS} fields may be given")
    for k, v in fields.items():
        if len(k) > MAX_FIELD_LENGTH or len(v) > MAX_FIELD_LENGTH:
            raise invalid_param(f"Fields may be at most {MAX_FIELD_LENGTH} characters long")


def _string_list(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


_PROTOCOL_KEYS = ("user_fields", "location_fields", "field_types", "icon", "instances")


def _protocol_metadata(service: AppService, raw: Any) -> dict:
    """The service's answer in the spec's shape, or _NoAnswer when it is not one."""
    if not isinstance(raw, dict):
        raise _NoAnswer("metadata is not an object")
    field_types = raw.get("field_types")
    if not isinstance(field_types, dict):
        field_types = {}
    meta: dict[str, Any] = {
        "user_fields": _string_list(raw.get("user_fields")),
        "location_fields": _string_list(raw.get("location_fields")),
        "field_types": {k: v for k, v in field_types.items() if isinstance(v, dict)},
        "instances": [],
    }
    if isinstance(raw.get("icon"), str):
        meta["icon"] = raw["icon"]
    for k, v in raw.items():  # other keys (extensions) pass through
        if k not in _PROTOCOL_KEYS:
            meta[k] = v
    raw_instances = raw.get("instances")
    for inst in raw_instances if isinstance(raw_instances, list) else []:
        # network_id is required: it names the instance here (instance_id) and in
        # /publicRooms' third_party_instance_id. Instances without one are left out.
        if not isinstance(inst, dict) or not isinstance(inst.get("network_id"), str) \
                or not inst["network_id"]:
            continue
        out = dict(inst)
        out["desc"] = inst["desc"] if isinstance(inst.get("desc"), str) else inst["network_id"]
        out["fields"] = inst["fields"] if isinstance(inst.get("fields"), dict) else {}
        out["instance_id"] = f"{service.id}|{inst['network_id']}"
        meta["instances"].append(out)
    return meta


def _merge_protocol(metas: list[dict]) -> dict:
    """Several services bridging one protocol: the first one's description, all instances."""
    merged = dict(metas[0])
    merged["instances"] = [i for m in metas for i in m["instances"]]
    return merged


_REQUIRED = {"location": ("alias", "protocol"), "user": ("userid", "protocol")}
_REVERSE = {"location": ("alias", is_valid_room_alias, "room alias"),
            "user": ("userid", is_valid_user_id, "user ID")}


def _entries(raw: Any, kind: str) -> list[dict]:
    """The well-formed entries of a lookup answer (a list of Location / User objects)."""
    if not isinstance(raw, list):
        raise _NoAnswer("answer is not a list")
    out = []
    for e in raw[:MAX_RESULTS]:
        if isinstance(e, dict) and all(isinstance(e.get(k), str) for k in _REQUIRED[kind]):
            out.append({**e, "fields": e["fields"] if isinstance(e.get("fields"), dict) else {}})
    return out
