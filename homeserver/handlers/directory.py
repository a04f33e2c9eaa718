"""The user directory ("smart search"), the public room directory and username suggestions."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from homeserver.config import RateLimit
from homeserver.errors import forbidden, invalid_param, not_found
from homeserver.events.power_levels import get_send_level, get_user_power_level
from homeserver.handlers import usernames
from homeserver.ratelimit import RateLimiter
from homeserver.storage import directory as store
from homeserver.storage.events import EventRow

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

USER_SEARCH_DEFAULT_LIMIT = 10
USER_SEARCH_MAX_LIMIT = 50
# Terms longer than any user ID or display name cannot match anything.
MAX_SEARCH_TERM = 512
PUBLIC_ROOMS_MAX_LIMIT = 500
SUGGESTIONS = 5

# Match tiers for rank_users: lower is better.
EXACT, PREFIX, SUBSTRING = 0, 1, 2


# --- ranking (pure) ------------------------------------------------------------------------

def normalise_term(term: str) -> tuple[str, bool]:
    """(lowercased term without a leading '@', whether it names a full user ID)."""
    t = term.strip().casefold()
    if t.startswith("@"):
        t = t[1:]
    return t, ":" in t


def match_tier(term: str, user_id: str, display_name: str | None) -> int | None:
    """How well a user matches an already normalised term: EXACT, PREFIX, SUBSTRING or None.

    The term is compared with the localpart (with the whole ID sans '@' when the term contains
    ':') and with the display name, case-insensitively; the better of the two counts.
    """
    if not term:
        return None
    ident = user_id[1:] if user_id.startswith("@") else user_id
    if ":" not in term:
        ident = ident.partition(":")[0]
    best: int | None = None
    for field in (ident.casefold(), (display_name or "").casefold()):
        if not field:
            continue
        if field == term:
            return EXACT
        if field.startswith(term):
            best = PREFIX
        elif term in field and best is None:
            best = SUBSTRING
    return best


def rank_users(
    term: str, candidates: Iterable[Mapping[str, Any]], shared_counts: Mapping[str, int]
) -> list[Mapping[str, Any]]:
    """Order directory candidates for a search term; candidates that do not match are dropped.

    Candidates are mappings with "user_id" and "display_name". Order: users sharing a room
    with the searcher first, then exact, prefix and substring matches (on localpart or display
    name, case-insensitive), then more shared rooms first, then user ID.
    """
    t, _ = normalise_term(term)
    keyed = []
    for c in candidates:
        tier = match_tier(t, c["user_id"], c.get("display_name"))
        if tier is None:
            continue
        shared = shared_counts.get(c["user_id"], 0)
        keyed.append(((0 if shared > 0 else 1, tier, -shared, c["user_id"]), c))
    keyed.sort(key=lambda kc: kc[0])
    return [c for _, c in keyed]


# --- room directory entries (pure) ---------------------------------------------------------

# What survives redaction in the state we read (the rest of a redacted event's content is gone).
_KEPT_AFTER_REDACTION = {
    "m.room.join_rules": ("join_rule",),
    "m.room.history_visibility": ("history_visibility",),
    "m.room.create": ("type", "creator", "room_version"),
}


def _content(row: EventRow | None) -> dict[str, Any]:
    if row is None:
        return {}
    content = row.pdu.get("content")
    if not isinstance(content, dict):
        return {}
    if row.redacted_by:
        kept = _KEPT_AFTER_REDACTION.get(row.type, ())
        return {k: v for k, v in content.items() if k in kept}
    return content


def _plain_topic(content: Mapping[str, Any]) -> str | None:
    topic = content.get("topic")
    if isinstance(topic, str) and topic:
        return topic
    block = content.get("m.topic")
    reps = block.get("m.text") if isinstance(block, dict) else block
    if isinstance(reps, list):
        for rep in reps:
            if (isinstance(rep, dict) and rep.get("mimetype", "text/plain") == "text/plain"
                    and isinstance(rep.get("body"), str) and rep["body"]):
                return rep["body"]
    return None


def room_entry(room_id: str, joined: int, state: Mapping[str, EventRow]) -> dict[str, Any]:
    """One publicRooms chunk entry from the room's summary state (type -> event)."""
    def c(etype: str) -> dict[str, Any]:
        return _content(state.get(etype))

    entry: dict[str, Any] = {
        "room_id": room_id,
        "num_joined_members": joined,
        "world_readable": c("m.room.history_visibility").get("history_visibility")
        == "world_readable",
        "guest_can_join": c("m.room.guest_access").get("guest_access") == "can_join",
    }
    optional = {
        "name": c("m.room.name").get("name"),
        "topic": _plain_topic(c("m.room.topic")),
        "canonical_alias": c("m.room.canonical_alias").get("alias"),
        "avatar_url": c("m.room.avatar").get("url"),
        "join_rule": c("m.room.join_rules").get("join_rule"),
        "room_type": c("m.room.create").get("type"),
    }
    for key, value in optional.items():
        if isinstance(value, str) and value:
            entry[key] = value
    return entry


def entry_matches(entry: Mapping[str, Any], term: str, alt_aliases: Iterable[str] = ()) -> bool:
    t = term.strip().casefold()
    if not t:
        return True
    fields = [entry.get("name"), entry.get("topic"), entry.get("canonical_alias"),
              entry.get("room_id"), *alt_aliases]
    return any(isinstance(f, str) and t in f.casefold() for f in fields)


@dataclass(frozen=True)
class PublicRoomsQuery:
    limit: int | None = None
    since: str | None = None
    search_term: str | None = None
    room_types: list[str | None] | None = None


def parse_since(since: str | None) -> int:
    if since is None or since == "":
        return 0
    if not (since[:1] == "o" and since[1:].isdigit() and len(since) < 12):
        raise invalid_param("since is not a valid pagination token")
    return int(since[1:])


# --- the handler ---------------------------------------------------------------------------

class DirectoryHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        # Suggestions are unauthenticated: a light per-address limit of their own.
        self.suggestion_limiter = RateLimiter(RateLimit(per_second=2, burst=20))

    # user directory

    async def search_users(self, searcher: str, term: str, limit: int) -> dict[str, Any]:
        limit = max(1, min(limit, USER_SEARCH_MAX_LIMIT))
        t, full_id = normalise_term(term)
        if not t or len(t) > MAX_SEARCH_TERM:
            return {"results": [], "limited": False}
        # A margin beyond the limit so that the final (casefold) ranking has room to reorder.
        rows = await store.search_user_candidates(
            searcher, t, self.hs.server_name, min(limit * 2 + 10, 200), full_id=full_id
        )
        candidates = [{"user_id": r["user_id"], "display_name": r["displayname"],
                       "avatar_url": r["avatar_url"]} for r in rows]
        shared = {r["user_id"]: int(r["shared"] or 0) for r in rows}
        ranked = rank_users(term, candidates, shared)
        results = []
        for c in ranked[:limit]:
            item = {"user_id": c["user_id"]}
            if c["display_name"]:
                item["display_name"] = c["display_name"]
            if c["avatar_url"]:
                item["avatar_url"] = c["avatar_url"]
            results.append(item)
        return {"results": results, "limited": len(ranked) > limit}

    # public room directory

    async def public_rooms(self, q: PublicRoomsQuery) -> dict[str, Any]:
        offset = parse_since(q.since)
        limit = q.limit
        if limit is not None:
            if limit < 0:
                raise invalid_param("limit must not be negative")
            limit = min(limit, PUBLIC_ROOMS_MAX_LIMIT)
        else:
            limit = PUBLIC_ROOMS_MAX_LIMIT
        rooms = await store.public_rooms()
        filtering = bool(q.search_term and q.search_term.strip()) or q.room_types is not None
        # Without a filter only the requested page needs its state; with one, every room does.
        candidates = rooms if filtering else rooms[offset:offset + limit]
        entries = await self._entries(candidates, q) if candidates else []
        if filtering:
            total = len(entries)
            page = entries[offset:offset + limit]
        else:
            total = len(rooms)
            page = entries
        out: dict[str, Any] = {"chunk": page, "total_room_count_estimate": total}
        if offset + limit < total and limit > 0:
            out["next_batch"] = f"o{offset + limit}"
        if offset > 0:
            out["prev_batch"] = f"o{max(0, offset - limit)}"
        return out

    async def _entries(self, rooms: list[dict[str, Any]], q: PublicRoomsQuery) -> list[dict]:
        room_ids = [r["room_id"] for r in rooms]
        state_ids = await store.summary_state_ids(room_ids)
        events = await self.hs.state.get_events(
            eid for per_room in state_ids.values() for eid in per_room.values()
        )
        entries = []
        for r in rooms:
            ids = state_ids.get(r["room_id"], {})
            state = {t: events[eid] for t, eid in ids.items() if eid in events}
            entry = room_entry(r["room_id"], int(r["joined"] or 0), state)
            if q.room_types is not None and entry.get("room_type") not in q.room_types:
                continue
            if q.search_term:
                alt = _content(state.get("m.room.canonical_alias")).get("alt_aliases")
                alt = [a for a in alt if isinstance(a, str)] if isinstance(alt, list) else []
                if not entry_matches(entry, q.search_term, alt):
                    continue
            entries.append(entry)
        return entries

    async def get_visibility(self, room_id: str) -> str:
        public = await store.room_is_public(room_id)
        if public is None:
            raise not_found("Room not found")
        return "public" if public else "private"

    async def set_visibility(self, user_id: str, room_id: str, visibility: str,
                             is_admin: bool = False) -> None:
        if visibility not in ("public", "private"):
            raise invalid_param("visibility must be 'public' or 'private'")
        current = await store.room_is_public(room_id)
        if current is None:
            raise not_found("Room not found")
        if not is_admin:
            await self._check_can_publish(user_id, room_id)
        if current != (visibility == "public"):
            await store.set_room_public(room_id, visibility == "public")

    async def _check_can_publish(self, user_id: str, room_id: str) -> None:
        """Joined, with the power to set the room's canonical alias (state_default, 50)."""
        version = await self.hs.state.room_version(room_id)
        if version is None:
            raise not_found("Room not found")
        pl_key, create_key = ("m.room.power_levels", ""), ("m.room.create", "")
        member_key = ("m.room.member", user_id)
        state = await self.hs.state.current_state(room_id, [pl_key, create_key, member_key])
        member = state.get(member_key)
        if member is None or _content(member).get("membership") != "join":
            raise forbidden("You must be joined to the room to change its directory visibility")
        auth = {k: v.pdu for k, v in state.items()}
        pl_content = _content(state.get(pl_key))
        needed = get_send_level("m.room.canonical_alias", "", pl_content)
        if get_user_power_level(user_id, auth, version) < needed:
            raise forbidden("You do not have enough power in this room to publish it "
                            f"(need {needed})")

    # username suggestions

    async def username_suggestions(self, wanted: str, client_ip: str | None) -> dict[str, Any]:
        self.suggestion_limiter.check(client_ip or "unknown")
        server = self.hs.server_name
        if len(wanted) > usernames.MAX_INPUT_LENGTH:
            wanted = wanted[:usernames.MAX_INPUT_LENGTH]
        error = usernames.validate_localpart(wanted, server)
        candidates = usernames.suggestion_candidates(
            wanted, server, year=datetime.date.today().year, count=24
        )
        check = candidates if error else [wanted, *candidates]
        taken_ids = await store.existing_user_ids(f"@{c}:{server}" for c in check)
        taken = {uid[1:].rpartition(":" + server)[0] for uid in taken_ids}
        available = error is None and wanted not in taken
        out: dict[str, Any] = {"username": wanted, "valid": error is None,
                               "available": available}
        if error is not None:
            out["errcode"], out["error"] = "M_INVALID_USERNAME", error
        elif not available:
            out["errcode"], out["error"] = "M_USER_IN_USE", "User ID already taken"
        out["suggestions"] = [] if available else usernames.pick_suggestions(
            candidates, taken, SUGGESTIONS
        )
        return out


__all__ = ["DirectoryHandler", "PublicRoomsQuery", "match_tier", "rank_users", "room_entry"]
