"""Membership across servers: make_join/send_join, invites, make_leave/send_leave and
make_knock/send_knock — both sides."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.events.auth import AuthError, check_auth
from homeserver.events.hashing import add_content_hash, compute_event_id
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
from homeserver.events.signing import SignatureError, sign_event
from homeserver.handlers.federation.keyring import KeyNotFound
from homeserver.handlers.federation.receiver import PduRejected, check_pdu_format
from homeserver.handlers.federation.transport import (
    DestinationUnreachable, FederationError, as_client_error,
)
from homeserver.storage import accounts as account_store
from homeserver.storage import state as state_store
from homeserver.storage.models_state import Room
from homeserver.types import now_ms, server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)


def _bad(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", msg)


class FederationMembership:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    # --- resident side: another server's user joins or leaves our room ----------------------

    async def make_membership(self, origin: str, room_id: str, user_id: str, membership: str,
                              supported: list[str] | None) -> dict[str, Any]:
        hs = self.hs
        version = await hs.state.room_version(room_id)
        if version is None or not await hs.state.current_state_event(room_id, "m.room.create"):
            raise not_found("Unknown room")
        if server_of(user_id) != origin:
            raise forbidden("The user must belong to the requesting server")
        if membership in ("join", "knock") and version.identifier not in (supported or ["1"]):
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                              "Your server does not support this room's version",
                              room_version=version.identifier)
        current = await hs.state.current_state_ids(room_id)
        extremities = await hs.events.extremities(room_id)
        prev_rows = await hs.state.get_events(extremities)
        template = {
            "room_id": room_id, "sender": user_id, "type": "m.room.member", "state_key": user_id,
            "content": {"membership": membership}, "origin_server_ts": now_ms(),
            "depth": max((r.depth for r in prev_rows.values()), default=0) + 1,
            "prev_events": sorted(prev_rows)[:10], "auth_events": [],
        }
        auth = await hs.receiver._auth_map(template, current)
        try:
            check_auth(template, auth, version)
        except AuthError as e:
            raise forbidden(f"You are not allowed to {membership} this room: {e.reason}") from None
        keys = [k for k in auth]
        template["auth_events"] = sorted(current[k] for k in keys)
        return {"event": template, "room_version": version.identifier}

    async def send_membership(self, origin: str, room_id: str, event_id: str, pdu: Any,
                              membership: str) -> dict[str, Any]:
        hs = self.hs
        version = await hs.state.room_version(room_id)
        if version is None:
            raise not_found("Unknown room")
        try:
            check_pdu_format(pdu)
        except PduRejected as e:
            raise _bad(e.reason) from None
        if (pdu["type"] != "m.room.member" or pdu.get("state_key") != pdu["sender"]
                or pdu["content"].get("membership") != membership or pdu["room_id"] != room_id):
            raise _bad(f"Not a {membership} event for this room")
        if server_of(pdu["sender"]) != origin:
            raise forbidden("The event's sender must belong to the requesting server")
        if compute_event_id(pdu, version) != event_id:
            raise _bad("event_id does not match the event")
        async with hs.events.room_lock(room_id):
            state = await hs.state.current_state_ids(room_id)
            after = dict(state)
            after[("m.room.member", pdu["sender"])] = event_id
            dests = [d for d in await hs.events.destinations_for(pdu, after) if d != origin]
            try:
                row = await hs.receiver.handle_pdu(origin, pdu, version, event_id,
                                                   destinations=dests)
            except PduRejected as e:
                raise forbidden(e.reason) from None
        row = row or await hs.state.get_event(event_id)
        if row is None or row.soft_failed:
            raise forbidden("The event was not accepted")
        if membership == "knock":  # what the knocking user is shown of the room meanwhile
            return {"knock_room_state": await hs.rooms.invite_state(room_id, None)}
        if membership != "join":
            return {}
        before = await hs.state.state_at(row, before=True)
        state_pdus = [r.pdu_for_federation() for r in before.values()]
        chain = await hs.receiver.resolver.load_auth_chains(
            {r.event_id for r in before.values()} | set(pdu["auth_events"]))
        auth_rows = await hs.state.get_events(chain)
        return {
            "origin": hs.server_name,
            "state": state_pdus,
            "auth_chain": [r.pdu_for_federation() for r in auth_rows.values()],
            "event": row.pdu_for_federation(),
            "members_omitted": False,
        }

    # --- joining side: our user joins a room that lives elsewhere ---------------------------

    async def join_remote(self, user_id: str, room_id: str, servers: list[str],
                          content: dict[str, Any]) -> str:
        hs = self.hs
        errors = []
        for dest in [s for s in dict.fromkeys(servers) if s != hs.server_name]:
            try:
                return await self._join_via(dest, user_id, room_id, content)
            except (FederationError, DestinationUnreachable, PduRejected, SignatureError) as e:
                log.info("join of %s via %s failed: %s", room_id, dest, e)
                errors.append(e)
                if isinstance(e, FederationError) and e.status == 403:
                    raise forbidden(e.error or "Join refused by the room's server") from None
        if errors:
            last = errors[-1]
            if isinstance(last, (FederationError, DestinationUnreachable)):
                raise as_client_error(last, "Joining the room")
            raise MatrixError(502, "M_UNKNOWN", f"Joining the room failed: {last}")
        raise not_found("No server to join the room through")

    async def _join_via(self, dest: str, user_id: str, room_id: str, content: dict) -> str:
        hs = self.hs
        client = hs.federation_client
        made = await client.make_join(dest, room_id, user_id, list(KNOWN_ROOM_VERSIONS))
        version_id = made.get("room_version", "1") if isinstance(made, dict) else None
        if version_id not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                              f"Room version {version_id} is not supported here")
        version = get_room_version(version_id)
        template = made.get("event")
        if not isinstance(template, dict):
            raise PduRejected("make_join returned no event template")
        pdu = {k: template[k] for k in ("room_id", "sender", "type", "state_key", "depth",
                                        "prev_events", "auth_events") if k in template}
        if pdu.get("sender") != user_id or pdu.get("state_key") != user_id or \
                pdu.get("room_id") != room_id:
            raise PduRejected("make_join returned a template for another user or room")
        pdu["content"] = {**content, "membership": "join"}
        pdu["origin_server_ts"] = now_ms()
        pdu = sign_event(add_content_hash(pdu), hs.server_name, hs.signing_key, version)
        event_id = compute_event_id(pdu, version)
        res = await client.send_join(dest, room_id, event_id, pdu)
        if not isinstance(res, dict):
            raise PduRejected("send_join returned no state")
        # The resident server may have countersigned (restricted rooms): keep its copy.
        returned = res.get("event")
        if isinstance(returned, dict) and compute_event_id(returned, version) == event_id:
            pdu = returned
        await Room.get_or_create(room_id=room_id, defaults={
            "room_version": version.identifier, "creator": None, "is_public": False,
            "created_ts": now_ms()})
        hs.state.set_room_version(room_id, version)
        receiver = hs.receiver
        async with hs.events.room_lock(room_id):
            outliers = [e for e in [*res.get("auth_chain", []), *res.get("state", [])]
                        if isinstance(e, dict) and isinstance(e.get("depth"), int)]
            state_ids: dict = {}
            for ev in sorted(outliers, key=lambda e: e["depth"]):
                try:
                    check_pdu_format(ev)
                    eid = compute_event_id(ev, version)
                    await receiver.persist_outlier(dest, ev, version)
                except (PduRejected, KeyNotFound, SignatureError) as e:
                    log.info("state from %s unusable: %s", dest, e)
                    continue
            for ev in res.get("state", []):
                if isinstance(ev, dict) and isinstance(ev.get("state_key"), str):
                    eid = compute_event_id(ev, version)
                    if await hs.state.get_event(eid) is not None:
                        state_ids[(ev["type"], ev["state_key"])] = eid
            if ("m.room.create", "") not in state_ids:
                raise PduRejected("the room state has no create event")
            after = dict(state_ids)
            after[("m.room.member", user_id)] = event_id
            await hs.events.persist_event(pdu, event_id, state_before=state_ids, base_group=None,
                                          new_current=after)
        return room_id

    # --- invites ---------------------------------------------------------------------------

    async def send_invite(self, pdu: dict, version, invite_state: list[dict]) -> dict:
        """Our user invites a remote user: their server countersigns the invite first."""
        dest = server_of(pdu["state_key"])
        event_id = compute_event_id(pdu, version)
        try:
            res = await self.hs.federation_client.invite(dest, pdu["room_id"], event_id, {
                "room_version": version.identifier, "event": pdu,
                "invite_room_state": invite_state})
        except (FederationError, DestinationUnreachable) as e:
            raise as_client_error(e, "Inviting the user") from None
        signed = res.get("event") if isinstance(res, dict) else None
        if not isinstance(signed, dict) or compute_event_id(signed, version) != event_id:
            raise MatrixError(502, "M_UNKNOWN", "The invitee's server returned a bad invite")
        await self.hs.keyring.verify_json_from(dest, _signable(signed, version))
        return signed

    async def on_invite(self, origin: str, room_id: str, event_id: str, body: Any) -> dict:
        """A remote server invites one of our users: check, countersign, remember the invite."""
        hs = self.hs
        if not isinstance(body, dict):
            raise _bad("Body must be an object")
        version_id = body.get("room_version", "1")
        if version_id not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "Unsupported room version",
                              room_version=version_id)
        version = get_room_version(version_id)
        pdu = body.get("event")
        try:
            check_pdu_format(pdu)
        except PduRejected as e:
            raise _bad(e.reason) from None
        target = pdu.get("state_key")
        if (pdu["type"] != "m.room.member" or pdu["content"].get("membership") != "invite"
                or pdu["room_id"] != room_id or not isinstance(target, str)):
            raise _bad("Not an invite event for this room")
        if server_of(target) != hs.server_name:
            raise _bad("The invitee is not on this server")
        if server_of(pdu["sender"]) != origin:
            raise forbidden("The inviter must belong to the requesting server")
        if compute_event_id(pdu, version) != event_id:
            raise _bad("event_id does not match the event")
        user = await account_store.get_user(target)
        if user is None or user.deactivated:
            raise not_found("Unknown user")
        if user.invite_policy == "shared_rooms" and pdu["sender"] not in \
                await state_store.users_sharing_rooms(target, [pdu["sender"]]):
            raise forbidden("This user only accepts invites from people they share a room with")
        try:
            await hs.keyring.verify_event(pdu, version)
        except (SignatureError, KeyNotFound) as e:
            raise forbidden(f"Bad signature: {e}") from None
        signed = sign_event(pdu, hs.server_name, hs.signing_key, version)
        state = [s for s in body.get("invite_room_state", []) if isinstance(s, dict)][:50]
        await self._remember_out_of_room_membership(signed, event_id, version, target, "invite",
                                                    state)
        return {"event": signed}

    async def _remember_out_of_room_membership(self, pdu, event_id, version, user_id,
                                               membership, stripped) -> None:
        """Invites to (and rejections of) rooms we are not in: an outlier plus a membership row."""
        hs = self.hs
        stored = dict(pdu)
        if stripped:
            stored["unsigned"] = {**(pdu.get("unsigned") or {}), "invite_room_state": stripped}
        if await hs.state.get_event(event_id) is None:
            await hs.events.persist_event(stored, event_id, state_before={}, base_group=None,
                                          new_current=None, outlier=True)
        await hs.events.set_out_of_room_membership(pdu["room_id"], user_id, membership, event_id)

    async def leave_remote(self, user_id: str, room_id: str, servers: list[str]) -> None:
        """Reject an invite (or leave) for a room we hold no state of."""
        hs = self.hs
        if await self._remote_membership(user_id, room_id, servers, "leave", {}) is not None:
            return
        # Nobody reachable: forget the invite locally so the user is not stuck with it.
        m = await state_store.get_membership(room_id, user_id)
        if m is not None:
            await hs.events.set_out_of_room_membership(room_id, user_id, "leave", m["event_id"])

    async def knock_remote(self, user_id: str, room_id: str, servers: list[str],
                           content: dict[str, Any]) -> None:
        """Knock on a room that lives elsewhere; the room's state it sends back is what the
        user is shown of the room until they are let in (or not)."""
        if await self._remote_membership(user_id, room_id, servers, "knock", content) is None:
            raise MatrixError(502, "M_UNKNOWN", "No server of the room accepted the knock")

    async def _remote_membership(self, user_id: str, room_id: str, servers: list[str],
                                 membership: str, content: dict[str, Any]) -> Any:
        """make_/send_ a leave or knock through the first server that takes it, then remember
        the membership; the send_ answer, or None if no server took it. A refusal (403) of a
        knock is the user's answer and is raised."""
        hs = self.hs
        client = hs.federation_client
        make = {"leave": lambda d: client.make_leave(d, room_id, user_id),
                "knock": lambda d: client.make_knock(d, room_id, user_id,
                                                     list(KNOWN_ROOM_VERSIONS))}[membership]
        send = {"leave": client.send_leave, "knock": client.send_knock}[membership]
        for dest in [s for s in dict.fromkeys(servers) if s != hs.server_name]:
            try:
                made = await make(dest)
                version = get_room_version(made.get("room_version", "10"))
                t = made["event"]
                pdu = {k: t[k] for k in ("room_id", "sender", "type", "state_key", "depth",
                                         "prev_events", "auth_events")}
                if (pdu["room_id"], pdu["sender"], pdu["state_key"]) != (room_id, user_id,
                                                                         user_id):
                    raise ValueError(f"make_{membership} returned a template for another user")
                pdu["content"] = {**content, "membership": membership}
                pdu["origin_server_ts"] = now_ms()
                pdu = sign_event(add_content_hash(pdu), hs.server_name, hs.signing_key, version)
                event_id = compute_event_id(pdu, version)
                res = await send(dest, room_id, event_id, pdu)
                state = res.get("knock_room_state") if isinstance(res, dict) else None
                state = [e for e in state if isinstance(e, dict)][:50] \
                    if isinstance(state, list) else []
                await self._remember_out_of_room_membership(pdu, event_id, version, user_id,
                                                            membership, state)
                return res if res is not None else {}
            except FederationError as e:
                if membership == "knock" and e.status in (403, 400):
                    raise forbidden(e.error or "The room's server refused the knock") from None
                log.info("remote %s of %s via %s failed: %s", membership, room_id, dest, e)
            except (DestinationUnreachable, KeyError, TypeError, ValueError) as e:
                log.info("remote %s of %s via %s failed: %s", membership, room_id, dest, e)
        return None


def _signable(pdu: dict, version) -> dict:
    from homeserver.events.redaction import redact_event

    return redact_event(pdu, version)
