"""Rooms: creation, membership changes, aliases, and reading state as a member may."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tortoise.exceptions import IntegrityError

from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.events.canonical import canonical_json
from homeserver.events.power_levels import as_int, get_send_level, validate_power_levels_content
from homeserver.events.room_versions import (
    DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS, get_room_version,
)
from homeserver.handlers.auth import Requester
from homeserver.handlers.state import StateKey
from homeserver.storage import accounts as account_store
from homeserver.storage import state as state_store
from homeserver.storage.events import EventRow
from homeserver.storage.models_state import Room, RoomAlias
from homeserver.types import (
    is_valid_room_alias, is_valid_room_id, is_valid_user_id, new_room_id, now_ms, server_of,
)

if TYPE_CHECKING:
    from homeserver.server import HomeServer

PRESETS = {
    "private_chat": {"join_rule": "invite", "history": "shared", "guest": "can_join"},
    "trusted_private_chat": {"join_rule": "invite", "history": "shared", "guest": "can_join"},
    "public_chat": {"join_rule": "public", "history": "shared", "guest": "forbidden"},
}

# State shown to invitees before they join (stripped state).
INVITE_STATE_KEYS: list[StateKey] = [
    ("m.room.create", ""), ("m.room.join_rules", ""), ("m.room.name", ""),
    ("m.room.avatar", ""), ("m.room.canonical_alias", ""), ("m.room.encryption", ""),
    ("m.room.topic", ""),
]


def default_power_levels(creator: str, extra_admins: list[str]) -> dict[str, Any]:
    return {
        "users": {creator: 100, **{u: 100 for u in extra_admins}},
        "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
            "m.room.server_acl": 100, "m.room.encryption": 100,
        },
        "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50,
        "invite": 0, "historical": 100, "notifications": {"room": 50},
    }


def _user_level(power: dict, user_id: str) -> int:
    users = power.get("users")
    default = as_int(power.get("users_default"), 0)
    return as_int(users.get(user_id), default) if isinstance(users, dict) else default


def stripped(row: EventRow) -> dict[str, Any]:
    return {"type": row.type, "state_key": row.state_key, "content": row.pdu.get("content", {}),
            "sender": row.sender}


class RoomHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    # --- creation --------------------------------------------------------------------------

    async def create_room(self, requester: Requester, req: Any) -> tuple[str, str | None]:
        hs = self.hs
        creator = requester.user_id
        version_id = req.room_version or DEFAULT_ROOM_VERSION
        if version_id not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(400, "M_UNSUPPORTED_ROOM_VERSION",
                              f"Room version {version_id!r} is not supported")
        version = get_room_version(version_id)
        preset_name = req.preset or ("public_chat" if req.visibility == "public" else "private_chat")
        if preset_name not in PRESETS:
            raise MatrixError(400, "M_BAD_JSON", f"Unknown preset {preset_name!r}")
        preset = PRESETS[preset_name]
        for uid in req.invite:
            if not is_valid_user_id(uid):
                raise MatrixError(400, "M_INVALID_PARAM", f"{uid!r} is not a valid user ID")
        alias = None
        if req.room_alias_name is not None:
            alias = f"#{req.room_alias_name}:{hs.server_name}"
            if not is_valid_room_alias(alias) or any(c in req.room_alias_name for c in ":# \t"):
                raise MatrixError(400, "M_INVALID_PARAM", "Invalid room_alias_name")
            if await RoomAlias.exists(alias=alias):
                raise MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken")
            hs.appservices.check_alias_not_exclusive(alias, requester)
        initial_state: list[tuple[str, str, dict]] = []
        for ev in req.initial_state:
            if not isinstance(ev.get("type"), str) or not isinstance(ev.get("content"), dict):
                raise MatrixError(400, "M_BAD_JSON", "initial_state entries need type and content")
            sk = ev.get("state_key", "")
            if not isinstance(sk, str):
                raise MatrixError(400, "M_BAD_JSON", "initial_state state_key must be a string")
            initial_state.append((ev["type"], sk, ev["content"]))
        for uid in req.invite:
            await self._check_invite_policy(creator, uid, room_id=None)
        power = default_power_levels(
            creator, list(req.invite) if preset_name == "trusted_private_chat" else [])
        if req.power_level_content_override:
            power.update(req.power_level_content_override)
        given = {(t, sk) for t, sk, _ in initial_state}
        defaults = [("m.room.join_rules", {"join_rule": preset["join_rule"]}),
                    ("m.room.history_visibility", {"history_visibility": preset["history"]}),
                    ("m.room.guest_access", {"guest_access": preset["guest"]})]
        defaults = [(t, c) for t, c in defaults if (t, "") not in given]
        self._check_creation(req, creator, version, alias, power, defaults, initial_state)

        room_id = new_room_id(hs.server_name)
        if alias:
            # Claimed before the room exists: of two requests racing for one alias, exactly
            # one gets it (the unique index decides) and the other gets M_ROOM_IN_USE.
            await self._claim_alias(alias, room_id, creator,
                                     MatrixError(400, "M_ROOM_IN_USE", "Room alias already taken"))
        try:
            await self._create_room_events(req, requester, version, room_id, alias, power,
                                           defaults, initial_state)
        except BaseException:
            if alias:
                await RoomAlias.filter(alias=alias, room_id=room_id).delete()
            raise
        return room_id, alias

    async def _claim_alias(self, alias: str, room_id: str, creator: str,
                           taken: MatrixError) -> None:
        try:
            await RoomAlias.create(alias=alias, room_id=room_id, creator=creator)
        except IntegrityError:
            raise taken from None

    async def _create_room_events(self, req: Any, requester: Requester, version: Any,
                                  room_id: str, alias: str | None, power: dict,
                                  defaults: list, initial_state: list) -> None:
        hs = self.hs
        creator = requester.user_id
        await Room.create(room_id=room_id, room_version=version.identifier, creator=creator,
                          is_public=req.visibility == "public", created_ts=now_ms())
        hs.state.set_room_version(room_id, version)

        create_content: dict[str, Any] = dict(req.creation_content or {})
        create_content["room_version"] = version.identifier
        if not version.implicit_room_creator:
            create_content["creator"] = creator
        else:
            create_content.pop("creator", None)
        profile = await account_store.get_user(creator)
        async with hs.events.room_lock(room_id):
            await hs.events.create_room_event(room_id, version, {
                "room_id": room_id, "sender": creator, "type": "m.room.create", "state_key": "",
                "content": create_content, "origin_server_ts": now_ms(), "depth": 1,
                "prev_events": [], "auth_events": [],
            })
        send = hs.events.send_event
        await send(room_id, creator, "m.room.member", self._member_content("join", profile),
                   state_key=creator)
        await send(room_id, creator, "m.room.power_levels", power, state_key="")
        if alias:
            await send(room_id, creator, "m.room.canonical_alias", {"alias": alias}, state_key="")
        for etype, content in defaults:
            await send(room_id, creator, etype, content, state_key="")
        for etype, sk, content in initial_state:
            await send(room_id, creator, etype, content, state_key=sk)
        if req.name is not None:
            await send(room_id, creator, "m.room.name", {"name": req.name}, state_key="")
        if req.topic is not None:
            await send(room_id, creator, "m.room.topic", {"topic": req.topic}, state_key="")
        for uid in req.invite:
            await self.invite(requester, room_id, uid, is_direct=req.is_direct)

    @staticmethod
    def _member_content(membership: str, profile) -> dict[str, Any]:
        content: dict[str, Any] = {"membership": membership}
        if profile is not None:
            if profile.displayname:
                content["displayname"] = profile.displayname
            if profile.avatar_url:
                content["avatar_url"] = profile.avatar_url
        return content

    # --- membership ------------------------------------------------------------------------

    async def resolve_room(self, room_id_or_alias: str) -> str:
        return (await self.resolve_room_and_servers(room_id_or_alias))[0]

    async def resolve_room_and_servers(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        """Room ID and servers that can help us join it (for aliases of other servers)."""
        if is_valid_room_id(room_id_or_alias):
            return room_id_or_alias, []
        if is_valid_room_alias(room_id_or_alias):
            if server_of(room_id_or_alias) != self.hs.server_name:
                res = await self.hs.fed_queries.resolve_remote_alias(room_id_or_alias)
                return res["room_id"], res.get("servers", [])
            row = await RoomAlias.get_or_none(alias=room_id_or_alias)
            if row is None and await self.hs.appservices.query_alias(room_id_or_alias):
                row = await RoomAlias.get_or_none(alias=room_id_or_alias)
            if row is None:
                raise not_found("Room alias not found")
            return row.room_id, []
        raise MatrixError(400, "M_INVALID_PARAM", "Not a valid room ID or alias")

    async def _require_room(self, room_id: str) -> None:
        if not is_valid_room_id(room_id):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid room ID")
        if not await self.hs.state.is_room_known(room_id):
            raise not_found("Unknown room")

    async def _participating(self, room_id: str) -> bool:
        """We hold the room's state and one of our users is still in it."""
        if not await self.hs.state.is_room_known(room_id):
            return False
        members = await state_store.get_room_members(room_id, "join")
        ours = [u for u in members if server_of(u) == self.hs.server_name]
        remote = [u for u in members if server_of(u) != self.hs.server_name]
        return bool(ours) or not remote

    async def join(self, requester: Requester, room_id_or_alias: str,
                   reason: str | None = None, via: list[str] | None = None) -> str:
        room_id, content, hints = await self._membership_target(
            requester, room_id_or_alias, "join", reason, via)
        if hints is not None:
            invite = await state_store.get_membership(room_id, requester.user_id)
            if invite and invite["membership"] == "invite":
                inv = await self.hs.state.get_event(invite["event_id"])
                if inv is not None:
                    hints.insert(0, server_of(inv.sender))
            return await self.hs.fed_membership.join_remote(requester.user_id, room_id, hints,
                                                            content)
        if await self.hs.state.membership_of(room_id, requester.user_id) == "join":
            return room_id  # joining twice is a no-op
        await self.hs.events.send_event(room_id, requester.user_id, "m.room.member", content,
                                        state_key=requester.user_id)
        return room_id

    async def knock(self, requester: Requester, room_id_or_alias: str,
                    reason: str | None = None, via: list[str] | None = None) -> str:
        """Ask to join a room whose join rule is knock (or knock_restricted): its members
        see the knock and may invite the user in."""
        room_id, content, hints = await self._membership_target(
            requester, room_id_or_alias, "knock", reason, via)
        if hints is not None:
            await self.hs.fed_membership.knock_remote(requester.user_id, room_id, hints, content)
            return room_id
        await self.hs.events.send_event(room_id, requester.user_id, "m.room.member", content,
                                        state_key=requester.user_id)
        return room_id

    async def _membership_target(self, requester: Requester, room_id_or_alias: str,
                                 membership: str, reason: str | None, via: list[str] | None
                                 ) -> tuple[str, dict[str, Any], list[str] | None]:
        """For a join or knock: (room ID, member event content, None for a room held here or
        else the servers to ask for it, best first)."""
        room_id, servers = await self.resolve_room_and_servers(room_id_or_alias)
        if not is_valid_room_id(room_id):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid room ID")
        profile = await account_store.get_user(requester.user_id)
        content = self._member_content(membership, profile)
        if reason:
            content["reason"] = reason
        if await self._participating(room_id):
            return room_id, content, None
        if not self.hs.config.federation.enabled:
            raise not_found("Unknown room")
        return room_id, content, list(via or []) + servers + [server_of(room_id)]

    async def leave(self, requester: Requester, room_id: str, reason: str | None = None) -> None:
        if is_valid_room_id(room_id) and not await self.hs.state.is_room_known(room_id):
            m = await state_store.get_membership(room_id, requester.user_id)
            if m and m["membership"] == "invite":
                inv = await self.hs.state.get_event(m["event_id"])
                hints = ([server_of(inv.sender)] if inv else []) + [server_of(room_id)]
                await self.hs.fed_membership.leave_remote(requester.user_id, room_id, hints)
                return
        await self._require_room(room_id)
        current = await self.hs.state.current_state_event(room_id, "m.room.member",
                                                          requester.user_id)
        membership = current.pdu["content"].get("membership") if current else None
        content: dict[str, Any] = {"membership": "leave"}
        if reason:
            content["reason"] = reason
        if membership == "leave" and current.sender == requester.user_id \
                and current.pdu["content"] == content:
            return  # the same leave again: a retry, answered like the first (as Synapse does)
        if membership in (None, "leave"):
            # Bridges (mautrix) recognise this case by "not in room" in the message.
            raise forbidden(f"You are not in room {room_id}")
        await self.hs.events.send_event(room_id, requester.user_id, "m.room.member", content,
                                        state_key=requester.user_id)

    def _check_creation(self, req: Any, creator: str, version: Any, alias: str | None,
                        power: dict, defaults: list, initial_state: list) -> None:
        """Every event createRoom will send, checked before anything is stored: a rejected
        request must not leave half a room behind."""
        planned: list[tuple[str, str, Any]] = [
            ("m.room.create", "", {**(req.creation_content or {}), "room_version": "x" * 32}),
            ("m.room.power_levels", "", power)]
        if alias:
            planned.append(("m.room.canonical_alias", "", {"alias": alias}))
        planned += [(t, "", c) for t, c in defaults] + list(initial_state)
        if req.name is not None:
            planned.append(("m.room.name", "", {"name": req.name}))
        if req.topic is not None:
            planned.append(("m.room.topic", "", {"topic": req.topic}))
        pl = power
        for etype, state_key, content in planned:
            try:
                size = len(canonical_json({"type": etype, "state_key": state_key,
                                           "content": content}))
            except ValueError as e:
                raise MatrixError(400, "M_BAD_JSON", f"{etype} content is not valid: {e}") from None
            if size > self.hs.config.limits.max_event_bytes - 2048:  # room for the PDU fields
                raise MatrixError(413, "M_TOO_LARGE", f"{etype} content is too large")
            if len(etype.encode()) > 255 or len(state_key.encode()) > 255:
                raise MatrixError(413, "M_TOO_LARGE", "Event type and state_key are limited to "
                                  "255 bytes")
            if etype == "m.room.create":
                if content is not planned[0][2]:
                    raise MatrixError(400, "M_BAD_JSON", "initial_state cannot hold m.room.create")
                continue
            if etype == "m.room.power_levels":
                problem = validate_power_levels_content(content, version)
                if problem:
                    raise MatrixError(400, "M_BAD_JSON", f"Invalid power levels: {problem}")
                if content is power:
                    continue  # the room's first: allowed by the create event
            level = _user_level(pl, creator)
            if level < get_send_level(etype, state_key, pl):
                raise forbidden(f"The room's power levels would not let you send {etype}")
            if etype == "m.room.power_levels":
                pl = content
        if req.invite and _user_level(pl, creator) < as_int(pl.get("invite"), 0):
            raise forbidden("The room's power levels would not let you invite")
        if creator in req.invite:
            raise MatrixError(400, "M_INVALID_PARAM", "You cannot invite yourself")

    async def _check_invite_policy(self, inviter: str, target: str, room_id: str | None) -> None:
        if server_of(target) != self.hs.server_name:
            return
        user = await account_store.get_user(target)
        if user is None and await self.hs.appservices.query_user(target):
            user = await account_store.get_user(target)  # an application service made it
        if user is None or user.deactivated:
            raise not_found("Unknown user")
        if user.invite_policy == "shared_rooms" and inviter != target:
            if target not in await state_store.users_sharing_rooms(inviter, [target]):
                raise forbidden("This user only accepts invites from people they share a room with")

    async def invite(self, requester: Requester, room_id: str, target: str,
                     reason: str | None = None, is_direct: bool = False) -> None:
        await self._require_room(room_id)
        if not is_valid_user_id(target):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid user ID")
        await self._check_invite_policy(requester.user_id, target, room_id)
        current = await self.hs.state.membership_of(room_id, target)
        if current == "join":
            raise forbidden(f"{target} is already in the room")
        if current == "ban":
            raise forbidden(f"{target} is banned from the room")
        profile = await account_store.get_user(target)
        content = self._member_content("invite", profile)
        if is_direct:
            content["is_direct"] = True
        if reason:
            content["reason"] = reason
        countersign = None
        if server_of(target) != self.hs.server_name:
            invite_state = await self.invite_state(room_id, None)

            async def countersign(pdu: dict, version) -> dict:
                return await self.hs.fed_membership.send_invite(pdu, version, invite_state)

        await self.hs.events.send_event(room_id, requester.user_id, "m.room.member", content,
                                        state_key=target, countersign=countersign)

    async def set_membership_of_other(self, requester: Requester, room_id: str, target: str,
                                      membership: str, reason: str | None) -> None:
        """kick (leave), ban and unban (leave); the auth rules check power and state."""
        await self._require_room(room_id)
        if not is_valid_user_id(target):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid user ID")
        current = await self.hs.state.membership_of(room_id, target)
        if membership == "leave" and requester.user_id != target:
            action_unban = current == "ban"
            if not action_unban and current not in ("join", "invite", "knock"):
                raise forbidden(f"{target} is not in the room")
        content: dict[str, Any] = {"membership": membership}
        if reason:
            content["reason"] = reason
        await self.hs.events.send_event(room_id, requester.user_id, "m.room.member", content,
                                        state_key=target)

    async def forget(self, requester: Requester, room_id: str) -> None:
        await self._require_room(room_id)
        membership = await self.hs.state.membership_of(room_id, requester.user_id)
        if membership in ("join", "invite", "knock"):
            raise MatrixError(400, "M_UNKNOWN", "Leave the room before forgetting it")
        await state_store.set_forgotten(room_id, requester.user_id)
        self.hs.state.invalidate_memberships([requester.user_id])

    async def leave_all_rooms(self, user_id: str) -> None:
        req = Requester(user_id, None, "")
        for m in await state_store.get_user_memberships(user_id):
            if m["membership"] in ("join", "invite", "knock"):
                try:
                    await self.leave(req, m["room_id"])
                except MatrixError:
                    pass

    async def joined_rooms(self, user_id: str) -> list[str]:
        return [m["room_id"] for m in await state_store.get_user_memberships(user_id)
                if m["membership"] == "join"]

    # --- reading state ---------------------------------------------------------------------

    async def readable_state_point(self, user_id: str, room_id: str) -> EventRow | None:
        """None: the user may read current state. An event: read state as of that event
        (a former member sees the room as it was when they left). Raises if not allowed."""
        await self._require_room(room_id)
        membership = await state_store.get_membership(room_id, user_id)
        if membership and membership["membership"] == "join":
            return None
        hv = await self.hs.state.current_state_event(room_id, "m.room.history_visibility")
        if hv and hv.pdu["content"].get("history_visibility") == "world_readable":
            return None
        if membership and membership["membership"] in ("leave", "ban") and not membership["forgotten"]:
            ev = await self.hs.state.get_event(membership["event_id"])
            if ev is not None:
                return ev
        raise forbidden("You are not allowed to view this room")

    async def get_state(self, user_id: str, room_id: str) -> dict[StateKey, EventRow]:
        point = await self.readable_state_point(user_id, room_id)
        if point is None:
            return await self.hs.state.current_state(room_id)
        return await self.hs.state.state_at(point)

    async def invite_state(self, room_id: str, inviter_event: EventRow | None) -> list[dict]:
        remote = (inviter_event.pdu.get("unsigned") or {}).get("invite_room_state") \
            if inviter_event is not None else None
        if isinstance(remote, list):  # an invite from another server carries its own summary
            return [*remote, stripped(inviter_event)]
        st = await self.hs.state.current_state(room_id, INVITE_STATE_KEYS)
        out = [stripped(r) for r in st.values()]
        if inviter_event is not None:
            out.append(stripped(inviter_event))
        return out

    # --- aliases ---------------------------------------------------------------------------

    async def create_alias(self, requester: Requester, alias: str, room_id: str) -> None:
        if not is_valid_room_alias(alias) or server_of(alias) != self.hs.server_name:
            raise MatrixError(400, "M_INVALID_PARAM", "Alias must be a valid alias on this server")
        await self._require_room(room_id)
        if await self.hs.state.membership_of(room_id, requester.user_id) != "join":
            raise forbidden("You must be in the room to give it an alias")
        if await RoomAlias.exists(alias=alias):
            raise MatrixError(409, "M_UNKNOWN", "Room alias already exists")
        self.hs.appservices.check_alias_not_exclusive(alias, requester)
        await self._claim_alias(alias, room_id, requester.user_id,
                                MatrixError(409, "M_UNKNOWN", "Room alias already exists"))

    async def get_alias(self, alias: str) -> dict[str, Any]:
        if not is_valid_room_alias(alias):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid room alias")
        row = await RoomAlias.get_or_none(alias=alias)
        if row is None and await self.hs.appservices.query_alias(alias):
            row = await RoomAlias.get_or_none(alias=alias)
        if row is None:
            raise not_found("Room alias not found")
        return {"room_id": row.room_id, "servers": [self.hs.server_name]}

    async def delete_alias(self, requester: Requester, alias: str) -> None:
        if not is_valid_room_alias(alias):
            raise MatrixError(400, "M_INVALID_PARAM", "Not a valid room alias")
        row = await RoomAlias.get_or_none(alias=alias)
        if row is None:
            raise not_found("Room alias not found")
        if row.creator != requester.user_id and not requester.is_admin:
            from homeserver.events.auth import get_user_power_level

            st = await self.hs.state.current_state(row.room_id)
            version = await self.hs.state.room_version(row.room_id)
            level = get_user_power_level(requester.user_id, {k: v.pdu for k, v in st.items()},
                                         version)
            if level < 50:
                raise forbidden("You may not delete this alias")
        await RoomAlias.filter(alias=alias).delete()

    async def room_aliases(self, requester: Requester, room_id: str) -> list[str]:
        await self.readable_state_point(requester.user_id, room_id)
        return list(await RoomAlias.filter(room_id=room_id).values_list("alias", flat=True))
