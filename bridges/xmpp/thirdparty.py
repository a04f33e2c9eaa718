"""Third-party lookups (the application-service side, /_matrix/app/v1/thirdparty/...).

The homeserver asks these when a client looks up the `xmpp` protocol: its metadata, the portal
room for a MUC (`muc=room@conference.example.org`), the puppet for a JID
(`jid=user@example.org`), and the reverse lookups by alias or user ID. Requests need the
hs_token like every other request from the homeserver; unknown protocols and unknown things
are 404, malformed fields 400.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from bridges.xmpp.ids import (bare_jid, jid_of_puppet, muc_of_portal_alias, puppet_localpart,
                              valid_bare_jid)

if TYPE_CHECKING:
    from bridges.xmpp.bridge import XmppBridge

PROTOCOL = "xmpp"
PREFIX = "/_matrix/app/v1/thirdparty"
JID_REGEXP = r"[^@/\s]+@[^@/\s]+"


def _error(status: int, errcode: str, error: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error}, status=status)


def register_thirdparty(bridge: "XmppBridge") -> None:
    server = bridge.server

    def checked(handler):
        async def wrapper(request: web.Request) -> web.Response:
            denied = server._check_token(request)
            if denied is not None:
                return denied
            protocol = request.match_info.get("protocol")
            if protocol is not None and protocol != PROTOCOL:
                return _error(404, "M_NOT_FOUND", f"Unknown protocol {protocol!r}")
            return await handler(request)
        return wrapper

    def field(request: web.Request, name: str) -> str | web.Response:
        value = request.query.get(name)
        if value is None:
            return _error(400, "M_MISSING_PARAM", f"Missing field {name!r}")
        jid = bare_jid(value.strip())
        if jid is None or not valid_bare_jid(value.strip()):
            return _error(400, "M_INVALID_PARAM", f"{name!r} must be a bare JID (name@domain)")
        return jid

    async def protocol(request: web.Request) -> web.Response:
        s = bridge.settings
        return web.json_response({
            "user_fields": ["jid"],
            "location_fields": ["muc"],
            "icon": s.icon,
            "field_types": {
                "jid": {"regexp": JID_REGEXP, "placeholder": "someone@example.org"},
                "muc": {"regexp": JID_REGEXP, "placeholder": "room@conference.example.org"},
            },
            "instances": [{"desc": "XMPP", "icon": s.icon, "fields": {},
                           "network_id": bridge.settings.component.server_domain or "xmpp"}],
        })

    async def location(request: web.Request) -> web.Response:
        muc = field(request, "muc")
        if isinstance(muc, web.Response):
            return muc
        alias = await bridge.location_alias(muc)
        if alias is None:
            return _error(404, "M_NOT_FOUND", f"No portal room for {muc}")
        return web.json_response([{"alias": alias, "protocol": PROTOCOL,
                                   "fields": {"muc": muc}}])

    async def user(request: web.Request) -> web.Response:
        jid = field(request, "jid")
        if isinstance(jid, web.Response):
            return jid
        if jid.split("@", 1)[1] == bridge.component:
            return _error(404, "M_NOT_FOUND", "That JID is a Matrix user on this bridge")
        user_id = bridge.client.user_id(puppet_localpart(bridge.settings.puppet_prefix, jid))
        return web.json_response([{"userid": user_id, "protocol": PROTOCOL,
                                   "fields": {"jid": jid}}])

    async def location_by_alias(request: web.Request) -> web.Response:
        alias = request.query.get("alias")
        if not alias:
            return _error(400, "M_MISSING_PARAM", "Missing 'alias'")
        muc = next((r.muc for r in bridge.settings.rooms if r.room == alias), None) or \
            muc_of_portal_alias(bridge.settings.alias_prefix, alias,
                                bridge.client.server_name or "")
        if muc is None:
            return _error(404, "M_NOT_FOUND", "No XMPP room for that alias")
        return web.json_response([{"alias": alias, "protocol": PROTOCOL,
                                   "fields": {"muc": muc}}])

    async def user_by_id(request: web.Request) -> web.Response:
        user_id = request.query.get("userid")
        if not user_id:
            return _error(400, "M_MISSING_PARAM", "Missing 'userid'")
        jid = jid_of_puppet(bridge.settings.puppet_prefix, user_id,
                            bridge.client.server_name or "")
        if jid is None:
            return _error(404, "M_NOT_FOUND", "Not an XMPP user")
        return web.json_response([{"userid": user_id, "protocol": PROTOCOL,
                                   "fields": {"jid": jid}}])

    router = server.app.router
    router.add_get(PREFIX + "/protocol/{protocol}", checked(protocol))
    router.add_get(PREFIX + "/location/{protocol}", checked(location))
    router.add_get(PREFIX + "/user/{protocol}", checked(user))
    router.add_get(PREFIX + "/location", checked(location_by_alias))
    router.add_get(PREFIX + "/user", checked(user_by_id))
