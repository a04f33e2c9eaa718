"""Profiles: display name and avatar, read by anyone, changed by their owner.

A change is stored first and then announced as a new m.room.member event (membership still
"join", other content kept) in every room the user is joined to; one room failing does not stop
the others.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from homeserver.errors import MatrixError, forbidden, invalid_param, not_found
from homeserver.storage import accounts as account_store
from homeserver.storage import state as state_store
from homeserver.types import is_valid_server_name, parse_user_id

if TYPE_CHECKING:
    from homeserver.handlers.auth import Requester
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MAX_DISPLAYNAME = 256
MAX_AVATAR_URL = 500
FIELDS = ("displayname", "avatar_url")
# Spec keyName grammar: the two classic fields, m.tz, or a namespaced custom key.
KEY_NAME_RE = re.compile(r"^(avatar_url|displayname|m\.tz|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+)$")
MXC_RE = re.compile(r"^mxc://([^/]+)/([A-Za-z0-9_\-]+)$")

# Looks up a remote user's profile over federation: (user_id, field or None) -> profile dict.
RemoteProfile = Callable[[str, str | None], Awaitable[dict[str, Any]]]


def validate_displayname(value: Any) -> str | None:
    """The display name to store (None clears it), or M_BAD_JSON / M_INVALID_PARAM."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise MatrixError(400, "M_BAD_JSON", "displayname must be a string")
    if len(value) > MAX_DISPLAYNAME:
        raise invalid_param(f"displayname is too long (at most {MAX_DISPLAYNAME} characters)")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise invalid_param("displayname must not contain control characters")
    return value or None


def validate_avatar_url(value: Any) -> str | None:
    """The avatar URL to store (None clears it): an mxc:// URI, or empty/null."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise MatrixError(400, "M_BAD_JSON", "avatar_url must be a string")
    if value == "":
        return None
    m = MXC_RE.match(value)
    if len(value) > MAX_AVATAR_URL or m is None or not is_valid_server_name(m.group(1)):
        raise invalid_param("avatar_url must be an mxc:// URI (mxc://<server>/<media-id>)")
    return value


VALIDATORS: dict[str, Callable[[Any], str | None]] = {
    "displayname": validate_displayname,
    "avatar_url": validate_avatar_url,
}


def check_key(key: str) -> None:
    if len(key.encode()) > 255:
        raise MatrixError(400, "M_KEY_TOO_LARGE", "Profile key is too long")
    if not KEY_NAME_RE.match(key):
        raise invalid_param("Invalid profile key")


def updated_member_content(content: dict[str, Any], changes: dict[str, str | None]) -> dict:
    """A joined member's m.room.member content with new profile fields, everything else kept.

    join_authorised_via_users_server only belongs on the join itself, so it is dropped.
    """
    new = {k: v for k, v in content.items() if k != "join_authorised_via_users_server"}
    new["membership"] = "join"
    for key, value in changes.items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value
    return new


class ProfileHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        # Set by the federation layer once it can query other servers' profiles.
        self.remote_profile: RemoteProfile | None = None

    def _is_local(self, user_id: str) -> bool:
        return parse_user_id(user_id)[1] == self.hs.server_name

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        if not self._is_local(user_id):
            return await self._remote(user_id, None)
        user = await account_store.get_user(user_id)
        if user is None and await self.hs.appservices.query_user(user_id):
            user = await account_store.get_user(user_id)  # an application service made it
        if user is None or user.deactivated:
            raise not_found("Profile not found")
        out: dict[str, Any] = {}
        if user.displayname:
            out["displayname"] = user.displayname
        if user.avatar_url:
            out["avatar_url"] = user.avatar_url
        return out

    async def get_field(self, user_id: str, key: str) -> dict[str, Any]:
        parse_user_id(user_id)
        check_key(key)
        if not self._is_local(user_id):
            return await self._remote(user_id, key)
        profile = await self.get_profile(user_id)
        if key not in profile:
            raise not_found(f"The user has no {key}")
        return {key: profile[key]}

    async def _remote(self, user_id: str, key: str | None) -> dict[str, Any]:
        if self.remote_profile is None:
            raise not_found("Profile not found (remote profiles are not available)")
        profile = await self.remote_profile(user_id, key)
        if key is not None:
            if key not in profile:
                raise not_found(f"The user has no {key}")
            return {key: profile[key]}
        return profile

    async def set_field(self, requester: Requester, user_id: str, key: str, value: Any) -> None:
        """Validate, store, then announce in every joined room. Nothing is stored on error."""
        parse_user_id(user_id)
        check_key(key)
        if user_id != requester.user_id:
            raise forbidden("You may only change your own profile")
        if key not in VALIDATORS:
            raise forbidden(f"Profile field {key!r} cannot be set on this server")
        new_value = VALIDATORS[key](value)
        user = await account_store.get_user(user_id)
        if user is None or user.deactivated:
            raise not_found("Profile not found")
        if getattr(user, key) != new_value:
            await account_store.set_profile(user_id, **{key: new_value})
        await self.propagate(user_id, {key: new_value})

    async def delete_field(self, requester: Requester, user_id: str, key: str) -> None:
        await self.set_field(requester, user_id, key, None)

    async def propagate(self, user_id: str, changes: dict[str, str | None]) -> int:
        """Send an updated join event to every room the user is joined to; returns how many.

        Rooms whose member event already carries the values are skipped. The membership is
        checked again under the room lock, so a user who just left is never re-joined.
        """
        rows = [r for r in await state_store.get_user_memberships(user_id)
                if r["membership"] == "join"]
        if not rows:
            return 0
        events = await self.hs.state.get_events(r["event_id"] for r in rows)
        member_key = ("m.room.member", user_id)

        async def still_joined(_pdu: dict, auth_map: dict) -> None:
            row = auth_map.get(member_key)
            membership = (row.pdu.get("content") or {}).get("membership") if row else None
            if membership != "join":
                raise forbidden("no longer joined")

        sent = 0
        for r in rows:
            ev = events.get(r["event_id"])
            content = ev.pdu.get("content") if ev is not None else None
            content = content if isinstance(content, dict) and not ev.redacted_by else {}
            new = updated_member_content(content, changes)
            if new == content:
                continue
            try:
                await self.hs.events.send_event(
                    r["room_id"], user_id, "m.room.member", new, state_key=user_id,
                    check=still_joined,
                )
                sent += 1
            except MatrixError as e:
                log.info("profile update for %s not sent to %s: %s", user_id, r["room_id"], e)
            except Exception:
                log.exception("profile update for %s failed in %s", user_id, r["room_id"])
        return sent
