"""Account data: per-user JSON documents, global or per room, delivered through /sync.

Writes take a position on the account data stream under its lock and commit before the lock is
released, so `current_position()` only ever covers committed rows. Two types are managed by the
server (m.fully_read via read markers, m.push_rules via the push rules API); `im.nexa.privacy`
also updates the privacy columns of the user in the same transaction.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from homeserver.storage.transactions import in_transaction

from homeserver.errors import MatrixError, bad_json, forbidden, invalid_param, not_found
from homeserver.storage import userdata as store

if TYPE_CHECKING:
    from homeserver.server import HomeServer

SERVER_MANAGED = ("m.fully_read", "m.push_rules")
TAG_TYPE = "m.tag"  # room tags (favourites, low priority …) live in this room account data
MAX_TAG_BYTES = 255
PRIVACY_TYPE = "im.nexa.privacy"
INVITE_POLICIES = ("anyone", "shared_rooms")
MAX_TYPE_LENGTH = 255

Extra = Callable[[Any], Awaitable[None]]


def validate_privacy(content: dict[str, Any]) -> tuple[bool, str]:
    # The document replaces the previous one; absent settings take their defaults.
    searchable = content.get("searchable", True)
    policy = content.get("invite_policy", "anyone")
    if not isinstance(searchable, bool):
        raise bad_json("searchable must be true or false")
    if policy not in INVITE_POLICIES:
        raise bad_json("invite_policy must be one of: " + ", ".join(INVITE_POLICIES))
    return searchable, policy


def _check_room_id(room_id: str) -> None:
    if not room_id.startswith("!") or len(room_id) > 255 or len(room_id) < 2:
        raise invalid_param(f"{room_id[:80]} is not a valid room ID")


def _check_type(type_: str) -> None:
    if not type_ or len(type_) > MAX_TYPE_LENGTH:
        raise invalid_param(f"The account data type must be 1 to {MAX_TYPE_LENGTH} characters")


class AccountDataHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        # Tag changes read, change and write one document: one at a time, so none is lost.
        self._tags_lock = asyncio.Lock()

    def current_position(self) -> int:
        return self.hs.ids.account_data.visible

    # --- the client API --------------------------------------------------------------------

    async def get(self, requester: str, user_id: str, room_id: str | None,
                  type_: str) -> dict[str, Any]:
        if user_id != requester:
            raise forbidden("Cannot get account data for other users")
        if room_id is not None:
            _check_room_id(room_id)
        elif type_ == "m.push_rules":
            return await self.hs.push_rules.push_rules_content(user_id)
        content = await self.get_account_data(user_id, room_id or "", type_)
        if content is None and room_id is None and type_ == PRIVACY_TYPE:
            row = await store.get_privacy_columns(user_id)
            if row is not None:
                content = {"searchable": bool(row["searchable"]),
                           "invite_policy": row["invite_policy"]}
        if content is None:
            raise not_found("Room account data not found" if room_id else "Account data not found")
        return content

    async def put(self, requester: str, user_id: str, room_id: str | None, type_: str,
                  content: dict[str, Any]) -> None:
        if user_id != requester:
            raise forbidden("Cannot add account data for other users")
        if room_id is not None:
            _check_room_id(room_id)
        _check_type(type_)
        if type_ in SERVER_MANAGED:
            raise MatrixError(405, "M_BAD_JSON", f"Cannot set {type_} through this API")
        extra: Extra | None = None
        if room_id is None and type_ == PRIVACY_TYPE:
            searchable, policy = validate_privacy(content)

            async def extra(conn) -> None:
                await store.set_privacy_columns(user_id, searchable, policy, conn)

        await self.write(user_id, room_id or "", type_, orjson.dumps(content).decode(), extra)

    # --- room tags (stored as the room's m.tag account data, so /sync carries them) ---------

    async def get_tags(self, requester: str, user_id: str, room_id: str) -> dict[str, Any]:
        if user_id != requester:
            raise forbidden("Cannot get tags for other users")
        _check_room_id(room_id)
        return {"tags": await self._tags(user_id, room_id)}

    async def set_tag(self, requester: str, user_id: str, room_id: str, tag: str,
                      body: dict[str, Any] | None) -> None:
        """body None deletes the tag."""
        if user_id != requester:
            raise forbidden("Cannot change tags of other users")
        _check_room_id(room_id)
        if not tag or len(tag.encode("utf-8", "surrogatepass")) > MAX_TAG_BYTES:
            raise invalid_param(f"A tag must be 1 to {MAX_TAG_BYTES} bytes")
        if body is not None:
            order = body.get("order")
            if order is not None and (isinstance(order, bool)
                                      or not isinstance(order, (int, float))
                                      or not 0 <= order <= 1):
                raise bad_json("order must be a number from 0 to 1")
        async with self._tags_lock:
            tags = await self._tags(user_id, room_id)
            if body is None:
                if tag not in tags:
                    return  # deleting an absent tag changes nothing
                del tags[tag]
            else:
                tags[tag] = body
            await self.write(user_id, room_id, TAG_TYPE, orjson.dumps({"tags": tags}).decode())

    async def _tags(self, user_id: str, room_id: str) -> dict[str, Any]:
        doc = await self.get_account_data(user_id, room_id, TAG_TYPE) or {}
        tags = doc.get("tags")
        return dict(tags) if isinstance(tags, dict) else {}

    # --- for other handlers ----------------------------------------------------------------

    async def get_account_data(self, user_id: str, room_id: str, type_: str) -> dict[str, Any] | None:
        text = await store.get_account_data(user_id, room_id, type_)
        return orjson.loads(text) if text is not None else None

    async def set_account_data(self, user_id: str, room_id: str, type_: str,
                               content: dict[str, Any]) -> int:
        """Server-side write (tags, m.direct, m.fully_read …): no client-facing checks."""
        return await self.write(user_id, room_id, type_, orjson.dumps(content).decode())

    async def write(self, user_id: str, room_id: str, type_: str, content: str,
                    extra: Extra | None = None) -> int:
        """Store one entry at a new stream position; `extra(conn)` runs in the same transaction."""
        ids = self.hs.ids.account_data
        async with ids.lock:
            sid = ids.next()
            async with in_transaction() as conn:
                await store.upsert_account_data(user_id, room_id, type_, content, sid, conn)
                if extra is not None:
                    await extra(conn)
            ids.mark_visible(sid)
        self.hs.notifier.notify("account_data", sid, users=[user_id])
        return sid

    # --- /sync -----------------------------------------------------------------------------

    async def get_for_sync(self, user_id: str, since: int | None,
                           upto: int) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """(global events, room_id -> events) changed in (since, upto]; everything if since is
        None. m.push_rules comes from the push rules handler and is always in an initial sync."""
        global_: list[dict[str, Any]] = []
        rooms: dict[str, list[dict[str, Any]]] = {}
        if since is not None and since >= upto:
            return global_, rooms  # nothing new: no database work
        has_push_rules = False
        for row in await store.account_data_changes(user_id, since, upto):
            if row["room_id"] == "" and row["type"] == "m.push_rules":
                has_push_rules = True
                continue
            ev = {"type": row["type"], "content": orjson.loads(row["content"])}
            if row["room_id"]:
                rooms.setdefault(row["room_id"], []).append(ev)
            else:
                global_.append(ev)
        if has_push_rules or since is None:
            global_.append({"type": "m.push_rules",
                            "content": await self.hs.push_rules.push_rules_content(user_id)})
        return global_, rooms
