"""The application-service side of third-party lookups and the namespace queries.

- `GET /_matrix/app/v1/thirdparty/protocol/irc`: the protocol (fields `network`, `nickname`,
  `channel`) with one instance, this bridge's network.
- `GET /_matrix/app/v1/thirdparty/location/irc?channel=#c[&network=…]`: the portal alias of a
  channel; `GET /_matrix/app/v1/thirdparty/location?alias=…`: the reverse.
- `GET /_matrix/app/v1/thirdparty/user/irc?nickname=n[&network=…]`: the puppet of a nick;
  `GET /_matrix/app/v1/thirdparty/user?userid=…`: the reverse.
- Alias queries (`/rooms/#<alias_prefix>chan:server`) create the portal room on first use;
  user queries accept any puppet ID in the namespace.

Every request needs the hs_token (401 none, 403 wrong); unknown protocols and lookups without
an answer are 404, malformed fields 400.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from bridges.appservice.intent import MatrixRequestError, q
from bridges.appservice.server import json_error, query_field
from bridges.irc.config import valid_channel
from bridges.irc.protocol import irc_lower

log = logging.getLogger(__name__)

PROTOCOL = "irc"
_NICK_RE = re.compile(r"^[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,63}$")


class ThirdPartyMixin:
    def add_thirdparty_routes(self) -> None:
        self.server.add_thirdparty_routes(
            PROTOCOL, protocol_info=self._tp_protocol, location=self._tp_location,
            user=self._tp_user, location_by_alias=self._tp_location_reverse,
            user_by_id=self._tp_user_reverse, check=self._tp_check_network)

    def _tp_check_network(self, request: web.Request) -> web.Response | None:
        network = request.query.get("network")
        if network is not None and network != self.settings.network:
            return json_error(404, "M_NOT_FOUND", f"Unknown network {network!r}")
        return None

    def protocol_info(self) -> dict[str, Any]:
        net = self.settings.network
        return {
            "user_fields": ["network", "nickname"],
            "location_fields": ["network", "channel"],
            "icon": "",
            "field_types": {
                "network": {"regexp": "[a-z0-9][a-z0-9.-]*", "placeholder": net},
                "nickname": {"regexp": "[^\\s#&:,]+", "placeholder": "alice"},
                "channel": {"regexp": "[#&][^\\s,:]+", "placeholder": "#nexa"},
            },
            "instances": [{"desc": self.network_name, "icon": "", "fields": {"network": net},
                           "network_id": net}],
        }

    async def _tp_protocol(self, request: web.Request) -> web.Response:
        return web.json_response(self.protocol_info())

    def _location(self, channel: str) -> dict[str, Any]:
        return {"alias": self.alias_for(channel), "protocol": PROTOCOL,
                "fields": {"network": self.settings.network, "channel": channel}}

    def _user(self, user_id: str, nick: str) -> dict[str, Any]:
        return {"userid": user_id, "protocol": PROTOCOL,
                "fields": {"network": self.settings.network, "nickname": nick}}

    async def _tp_location(self, request: web.Request) -> web.Response:
        channel = query_field(request, "channel", "The 'channel' field is required")
        if not valid_channel(channel) or not channel.startswith("#"):
            return json_error(400, "M_INVALID_PARAM", "Not an IRC channel name")
        key = irc_lower(channel)
        if key not in self.channel_rooms and not self.settings.dynamic_channels:
            return json_error(404, "M_NOT_FOUND", "That channel is not bridged")
        return web.json_response([self._location(key)])

    async def _tp_location_reverse(self, request: web.Request) -> web.Response:
        alias = query_field(request, "alias", "The 'alias' parameter is required",
                            allow_empty=False)
        channel = self.channel_for_alias(alias)
        if channel is None or (channel not in self.channel_rooms and
                               not self.settings.dynamic_channels):
            return json_error(404, "M_NOT_FOUND", "Not a bridged channel's alias")
        return web.json_response([self._location(channel)])

    async def _tp_user(self, request: web.Request) -> web.Response:
        nick = query_field(request, "nickname", "The 'nickname' field is required")
        if not _NICK_RE.match(nick):
            return json_error(400, "M_INVALID_PARAM", "Not an IRC nick")
        from bridges.irc.inbound import puppet_localpart

        user_id = await self.store.matrix_id("nick", irc_lower(nick)) or \
            self.client.user_id(puppet_localpart(self.settings.puppet_prefix, nick))
        return web.json_response([self._user(user_id, nick)])

    async def _tp_user_reverse(self, request: web.Request) -> web.Response:
        user_id = query_field(request, "userid", "The 'userid' parameter is required",
                              allow_empty=False)
        nick = await self.store.remote_id("nick_display", user_id)
        if nick is None:
            return json_error(404, "M_NOT_FOUND", "Not a known IRC user")
        return web.json_response([self._user(user_id, nick)])

    # --- namespace queries from the homeserver -----------------------------------------------

    async def query_alias(self, alias: str) -> bool:
        channel = self.channel_for_alias(alias)
        if channel is None:
            return False
        room_id = self.channel_rooms.get(channel)
        try:
            if room_id is None:
                if not self.settings.dynamic_channels:
                    return False
                await self.ensure_portal(channel)
            else:
                # Bridged to an existing room without this alias: point the alias at it.
                await self.client.request("PUT", f"/directory/room/{q(alias)}",
                                          {"room_id": room_id})
        except MatrixRequestError as e:
            log.warning("cannot create the portal for %s: %s", alias, e)
            return e.errcode in ("M_ROOM_IN_USE",)
        return True

    async def query_user(self, user_id: str) -> bool:
        prefix = f"@{self.settings.puppet_prefix}"
        if not user_id.startswith(prefix) or not self.is_ours(user_id):
            return False
        try:
            await self.client.intent(user_id).ensure_registered()
        except MatrixRequestError:
            return False
        return True
