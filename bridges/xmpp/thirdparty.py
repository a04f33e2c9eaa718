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

from bridges.appservice.server import Refused, json_error, query_field
from bridges.xmpp.ids import (bare_jid, jid_of_puppet, muc_of_portal_alias, puppet_localpart,
                              valid_bare_jid)

if TYPE_CHECKING:
    from bridges.xmpp.bridge import XmppBridge

PROTOCOL = "xmpp"
JID_REGEXP = r"[^@/\s]+@[^@/\s]+"


def register_thirdparty(bridge: "XmppBridge") -> None:
    def field(request: web.Request, name: str) -> str:
        value = query_field(request, name, f"Missing field {name!r}")
        jid = bare_jid(value.strip())
        if jid is None or not valid_bare_jid(value.strip()):
            raise Refused(400, "M_INVALID_PARAM", f"{name!r} must be a bare JID (name@domain)")
        return jid

    def found(result: dict) -> web.Response:
        return web.json_response([result])

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
        alias = await bridge.location_alias(muc)
        if alias is None:
            return json_error(404, "M_NOT_FOUND", f"No portal room for {muc}")
        return found({"alias": alias, "protocol": PROTOCOL, "fields": {"muc": muc}})

    async def user(request: web.Request) -> web.Response:
        jid = field(request, "jid")
        if jid.split("@", 1)[1] == bridge.component:
            return json_error(404, "M_NOT_FOUND", "That JID is a Matrix user on this bridge")
        user_id = bridge.client.user_id(puppet_localpart(bridge.settings.puppet_prefix, jid))
        return found({"userid": user_id, "protocol": PROTOCOL, "fields": {"jid": jid}})

    async def location_by_alias(request: web.Request) -> web.Response:
        alias = query_field(request, "alias", "Missing 'alias'", allow_empty=False)
        muc = next((r.muc for r in bridge.settings.rooms if r.room == alias), None) or \
            muc_of_portal_alias(bridge.settings.alias_prefix, alias,
                                bridge.client.server_name or "")
        if muc is None:
            return json_error(404, "M_NOT_FOUND", "No XMPP room for that alias")
        return found({"alias": alias, "protocol": PROTOCOL, "fields": {"muc": muc}})

    async def user_by_id(request: web.Request) -> web.Response:
        user_id = query_field(request, "userid", "Missing 'userid'", allow_empty=False)
        jid = jid_of_puppet(bridge.settings.puppet_prefix, user_id,
                            bridge.client.server_name or "")
        if jid is None:
            return json_error(404, "M_NOT_FOUND", "Not an XMPP user")
        return found({"userid": user_id, "protocol": PROTOCOL, "fields": {"jid": jid}})

    bridge.server.add_thirdparty_routes(
        PROTOCOL, protocol_info=protocol, location=location, user=user,
        location_by_alias=location_by_alias, user_by_id=user_by_id)
