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
from bridges.irc.config import valid_channel
from bridges.irc.protocol import irc_lower

log = logging.getLogger(__name__)

PROTOCOL = "irc"
_NICK_RE = re.compile(r"^[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,63}$")


def _error(status: int, errcode: str, error: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error}, status=status)


class ThirdPartyMixin:
    def add_thirdparty_routes(self) -> None:
        r = self.server.app.router
        base = "/_matrix/app/v1/thirdparty"
        r.add_get(base + "/protocol/{protocol}", self._tp_protocol)
        r.add_get(base + "/location/{protocol}", self._tp_location)
        r.add_get(base + "/user/{protocol}", self._tp_user)
        r.add_get(base + "/location", self._tp_location_reverse)
        r.add_get(base + "/user", self._tp_user_reverse)

    def _tp_check(self, request: web.Request) -> web.Response | None:
        denied = self.server._check_token(request)
        if denied is not None:
            return denied
        proto = request.match_info.get("protocol")
        if proto is not None and proto != PROTOCOL:
            return _error(404, "M_NOT_FOUND", f"Unknown protocol {proto!r}")
        network = request.query.get("network")
        if network is not None and network != self.settings.network:
            return _error(404, "M_NOT_FOUND", f"Unknown network {network!r}")
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
        return self._tp_check(request) or web.json_response(self.protocol_info())

    def _location(self, channel: str) -> dict[str, Any]:
        return {"alias": self.alias_for(channel), "protocol": PROTOCOL,
                "fields": {"network": self.settings.network, "channel": channel}}

    async def _tp_location(self, request: web.Request) -> web.Response:
        denied = self._tp_check(request)
        if denied is not None:
            return denied
        channel = request.query.get("channel")
        if channel is None:
            return _error(400, "M_MISSING_PARAM", "The 'channel' field is required")
        if not valid_channel(channel) or not channel.startswith("#"):
            return _error(400, "M_INVALID_PARAM", "Not an IRC channel name")
        key = irc_lower(channel)
        if key not in self.channel_rooms and not self.settings.dynamic_channels:
            return _error(404, "M_NOT_FOUND", "That channel is not bridged")
        return web.json_response([self._location(key)])

    async def _tp_location_reverse(self, request: web.Request) -> web.Response:
        denied = self._tp_check(request)
        if denied is not None:
            return denied
        alias = request.query.get("alias")
        if not alias:
            return _error(400, "M_MISSING_PARAM", "The 'alias' parameter is required")
        channel = self.channel_for_alias(alias)
        if channel is None or (channel not in self.channel_rooms and
                               not self.settings.dynamic_channels):
            return _error(404, "M_NOT_FOUND", "Not a bridged channel's alias")
        return web.json_response([self._location(channel)])

    async def _tp_user(self, request: web.Request) -> web.Response:
        denied = self._tp_check(request)
        if denied is not None:
            return denied
        nick = request.query.get("nickname")
        if nick is None:
            return _error(400, "M_MISSING_PARAM", "The 'nickname' field is required")
        if not _NICK_RE.match(nick):
            return _error(400, "M_INVALID_PARAM", "Not an IRC nick")
        from bridges.irc.inbound import puppet_localpart

        user_id = await self.store.matrix_id("nick", irc_lower(nick)) or \
            self.client.user_id(puppet_localpart(self.settings.puppet_prefix, nick))
        return web.json_response([{"userid": user_id, "protocol": PROTOCOL,
                                   "fields": {"network": self.settings.network,
                                              "nickname": nick}}])

    async def _tp_user_reverse(self, request: web.Request) -> web.Response:
        denied = self._tp_check(request)
        if denied is not None:
            return denied
        user_id = request.query.get("userid")
        if not user_id:
            return _error(400, "M_MISSING_PARAM", "The 'userid' parameter is required")
        nick = await self.store.remote_id("nick_display", user_id)
        if nick is None:
            return _error(404, "M_NOT_FOUND", "Not a known IRC user")
        return web.json_response([{"userid": user_id, "protocol": PROTOCOL,
                                   "fields": {"network": self.settings.network,
                                              "nickname": nick}}])

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
