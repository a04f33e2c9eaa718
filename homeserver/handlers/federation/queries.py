"""Queries between servers: profiles, room aliases and public room directories."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.errors import MatrixError, not_found
from homeserver.handlers.federation.transport import (
    DestinationUnreachable, FederationError, as_client_error,
)
from homeserver.storage.models_state import RoomAlias
from homeserver.types import is_valid_room_alias, is_valid_user_id, server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def _remote_failure(e: Exception, what: str) -> MatrixError:
    return as_client_error(e, f"Looking up the {what}")


class FederationQueries:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        hs.profile.remote_profile = self.remote_profile

    # --- asking other servers ---------------------------------------------------------------

    async def remote_profile(self, user_id: str, key: str | None) -> dict[str, Any]:
        try:
            res = await self.hs.federation_client.query_profile(server_of(user_id), user_id, key)
        except (FederationError, DestinationUnreachable) as e:
            raise _remote_failure(e, "profile") from None
        if not isinstance(res, dict):
            raise MatrixError(502, "M_UNKNOWN", "The other server sent a malformed profile")
        return {k: v for k, v in res.items() if k in ("displayname", "avatar_url")
                and isinstance(v, str)}

    async def resolve_remote_alias(self, alias: str) -> dict[str, Any]:
        try:
            res = await self.hs.federation_client.query_directory(server_of(alias), alias)
        except (FederationError, DestinationUnreachable) as e:
            raise _remote_failure(e, "room alias") from None
        room_id = res.get("room_id") if isinstance(res, dict) else None
        if not isinstance(room_id, str):
            raise MatrixError(502, "M_UNKNOWN", "The other server sent a malformed alias answer")
        servers = [s for s in res.get("servers", []) if isinstance(s, str)][:20]
        return {"room_id": room_id, "servers": servers or [server_of(alias)]}

    async def remote_public_rooms(self, server: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            res = await self.hs.federation_client.public_rooms(server, params)
        except (FederationError, DestinationUnreachable) as e:
            raise _remote_failure(e, "room directory") from None
        if not isinstance(res, dict) or not isinstance(res.get("chunk"), list):
            raise MatrixError(502, "M_UNKNOWN", "The other server sent a malformed directory")
        return res

    # --- answering other servers ------------------------------------------------------------

    async def on_query_profile(self, user_id: str | None, field: str | None) -> dict[str, Any]:
        if not is_valid_user_id(user_id) or server_of(user_id) != self.hs.server_name:
            raise MatrixError(400, "M_INVALID_PARAM", "user_id must be a user of this server")
        if field is not None and field not in ("displayname", "avatar_url"):
            raise MatrixError(400, "M_INVALID_PARAM", "Unknown profile field")
        profile = await self.hs.profile.get_profile(user_id)
        return {field: profile[field]} if field and field in profile else (
            {} if field else profile)

    async def on_query_directory(self, alias: str | None) -> dict[str, Any]:
        if not is_valid_room_alias(alias) or server_of(alias) != self.hs.server_name:
            raise MatrixError(400, "M_INVALID_PARAM", "room_alias must be an alias of this server")
        row = await RoomAlias.get_or_none(alias=alias)
        if row is None and await self.hs.appservices.query_alias(alias):
            row = await RoomAlias.get_or_none(alias=alias)
        if row is None:
            raise not_found("Room alias not found")
        members = await self.hs.state.joined_members(row.room_id)
        servers = sorted({server_of(u) for u in members} | {self.hs.server_name})
        return {"room_id": row.room_id, "servers": servers}
