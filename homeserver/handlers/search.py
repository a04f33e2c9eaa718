"""Server-side message search (POST /search) over a blind index, and that index's key.

Event JSON is sealed at rest, so the index holds no words either: each word of a message body,
room name or topic is stored as HMAC-SHA256 under a key of its own (data_dir/search_index.key,
0600), written in the event's own transaction through the event
pipeline's outbox hooks. A query hashes its words the same way and asks for the events that
have all of them: whole words only (events/search_tokens.py). See docs/at-rest-encryption.md.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from homeserver.config import ConfigError
from homeserver.errors import bad_json, invalid_param, missing_param
from homeserver.events.search_tokens import (FIELDS, MAX_QUERY_TOKENS, event_tokens,
                                             token_hash, tokenize)
from homeserver.files import write_secret_file
from homeserver.handlers.filters import EventFilter, _event_filter
from homeserver.handlers.messages import pagination_token
from homeserver.handlers.visibility import HV_KEY, filter_for_user, format_events
from homeserver.storage import events as event_store
from homeserver.storage import search as store
from homeserver.storage.events import EventRow

if TYPE_CHECKING:
    from homeserver.handlers.auth import Requester
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

KEY_FILE = "search_index.key"
DEFAULT_LIMIT, MAX_LIMIT = 10, 50
DEFAULT_CONTEXT, MAX_CONTEXT = 5, 50
ROUNDS = 6  # candidate pages read per request when visibility hides some
MAX_SQL_SENDERS = 1000


# --- the key -------------------------------------------------------------------------------

def decode_key(text: str, where: str) -> bytes:
    """32 bytes from base64; ConfigError if not."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{where} must hold the base64 of 32 random bytes")
    return raw


def key_path(data_dir: Path) -> Path:
    return Path(data_dir) / KEY_FILE


def load_key(data_dir: Path) -> bytes:
    """The index key from data_dir/search_index.key, created (0600, atomically) when there is
    none."""
    return load_or_create_key(data_dir)[0]


def load_or_create_key(data_dir: Path) -> tuple[bytes, bool]:
    """The key, and whether this call made the file."""
    path = key_path(data_dir)
    created = False
    try:
        existing = path.read_text("ascii")
    except FileNotFoundError:
        existing = None
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"search index key file {path}: {e}") from None
    if existing is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_secret_file(path, base64.b64encode(secrets.token_bytes(32)).decode() + "\n",
                              create_only=True)
            created = True
            log.warning("generated the search index key %s (if it is lost, `nexa "
                        "reindex-search` rebuilds the index under a new one)", path)
        except FileExistsError:  # another process made it first: use that one
            pass
        existing = path.read_text("ascii")
    elif path.stat().st_mode & 0o077:
        log.warning("search index key file %s is readable by other users: chmod 600 it", path)
    return decode_key(existing, f"search index key file {path}"), created


def describe_key(data_dir: Path, problems: list[str]) -> str | None:
    """For `nexa check-config`: where the key comes from, None while there is none yet (it
    is made at first start, and losing it costs no history); problems go to `problems`, an
    unusable key is a ConfigError."""
    path = key_path(data_dir)
    if not path.exists():
        return None
    if path.stat().st_mode & 0o077:
        problems.append(f"{path} (the search index key) is readable by other users: chmod 600 it")
    load_key(data_dir)
    return f"search index key file {path} (`nexa reindex-search` rebuilds the index)"


# --- the request ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Criteria:
    term: str
    keys: tuple[str, ...]
    flt: EventFilter
    by_rank: bool
    context: tuple[int, int, bool] | None  # before, after, include_profile
    include_state: bool
    group_by: tuple[str, ...]


def _int(d: dict, key: str, default: int, cap: int, where: str) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise bad_json(f"{where}.{key} must be a non-negative integer")
    return min(v, cap)


def _opt_bool(d: dict, key: str, where: str) -> bool:
    v = d.get(key)
    if v is not None and not isinstance(v, bool):
        raise bad_json(f"{where}.{key} must be a boolean")
    return bool(v)


def parse_criteria(body: dict[str, Any]) -> Criteria | None:
    """The room_events criteria of a /search body (None: that category is not asked for)."""
    cats = body.get("search_categories")
    if cats is None:
        raise missing_param("search_categories is required")
    if not isinstance(cats, dict):
        raise bad_json("search_categories must be an object")
    room = cats.get("room_events")
    if room is None:
        return None
    where = "search_categories.room_events"
    if not isinstance(room, dict):
        raise bad_json(f"{where} must be an object")
    term = room.get("search_term")
    if term is None:
        raise missing_param(f"{where}.search_term is required")
    if not isinstance(term, str):
        raise bad_json(f"{where}.search_term must be a string")
    keys = room.get("keys", list(FIELDS))
    if not isinstance(keys, list) or any(not isinstance(k, str) or k not in FIELDS for k in keys):
        raise bad_json(f"{where}.keys must be a list of {', '.join(FIELDS)}")
    order_by = room.get("order_by", "rank")
    if order_by not in ("rank", "recent"):
        raise bad_json(f"{where}.order_by must be 'rank' or 'recent'")
    context = None
    ctx = room.get("event_context")
    if ctx is not None:
        if not isinstance(ctx, dict):
            raise bad_json(f"{where}.event_context must be an object")
        w = f"{where}.event_context"
        context = (_int(ctx, "before_limit", DEFAULT_CONTEXT, MAX_CONTEXT, w),
                   _int(ctx, "after_limit", DEFAULT_CONTEXT, MAX_CONTEXT, w),
                   _opt_bool(ctx, "include_profile", w))
    groupings = room.get("groupings")
    groupings = {} if groupings is None else groupings
    group_by = groupings.get("group_by", []) if isinstance(groupings, dict) else None
    if not isinstance(group_by, list) or any(
            not isinstance(g, dict) or g.get("key") not in ("room_id", "sender") for g in group_by):
        raise bad_json(f"{where}.groupings.group_by must list {{\"key\": \"room_id\" or \"sender\"}}")
    flt = _event_filter(room.get("filter"), f"{where}.filter", True)
    if any("\x00" in r for r in (*(flt.rooms or ()), *flt.not_rooms)):
        raise bad_json(f"{where}.filter: a room ID cannot contain NUL")  # nor can a column
    return Criteria(term=term, keys=tuple(dict.fromkeys(keys)), flt=flt,
                    by_rank=order_by == "rank", context=context,
                    include_state=_opt_bool(room, "include_state", where),
                    group_by=tuple(dict.fromkeys(g["key"] for g in group_by)))


_BATCH = re.compile(r"(r|k(\d{1,5})\.)(-?\d{1,19})\Z")


def parse_batch(value: str | None, by_rank: bool) -> store.Cursor | None:
    """next_batch: "r<position>" in recent order, "k<words>.<position>" in rank order."""
    if value is None:
        return None
    m = _BATCH.match(value)
    if m is None or (m.group(2) is not None) != by_rank:
        raise invalid_param("next_batch is not a token of this search")
    tokens, position = int(m.group(2) or 0), int(m.group(3))
    if tokens > 32767 or abs(position) >= 2**63:  # the columns' ranges (SMALLINT, BIGINT)
        raise invalid_param("next_batch is out of range")
    return tokens, position


def batch_token(cursor: store.Cursor, by_rank: bool) -> str:
    return f"k{cursor[0]}.{cursor[1]}" if by_rank else f"r{cursor[1]}"


# --- the handler ---------------------------------------------------------------------------

class SearchHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.key: bytes | None = None
        hs.events.outbox_hooks.append(self.outbox_hook)

    async def start(self) -> None:
        """Load (or make) the key; the database is open and active. Indexing what was stored
        before is `nexa reindex-search`'s job, never start-up's: say so when it looks needed."""
        self.key, created = load_or_create_key(self.hs.config.data_dir)
        tokenize("")  # builds the word pattern now rather than during the first send
        if await store.index_is_empty():
            if await store.has_searchable_events():
                log.warning("the search index is empty but the database holds messages: run "
                            "`nexa reindex-search` to make them searchable")
        elif created:
            log.warning("the search index was built under a key that is gone (a new %s was "
                        "made): run `nexa reindex-search` to make the history searchable again",
                        KEY_FILE)

    async def outbox_hook(self, pdu: dict[str, Any], event_id: str
                          ) -> tuple[Callable[[int], list[tuple[str, list[Any]]]], None]:
        """Index rows of a timeline event (and a redaction's deletion of its target's), written
        in the event's transaction once it has its stream position."""
        statements: list[tuple[str, list[Any]]] = []
        try:
            if pdu.get("type") == "m.room.redaction":
                target = pdu.get("redacts") or (pdu.get("content") or {}).get("redacts")
                if isinstance(target, str):
                    statements.append(store.delete_statement(target, pdu["room_id"]))
            if self.key is None:
                self.key = load_key(self.hs.config.data_dir)
            found = event_tokens(self.key, pdu)
        except Exception:  # indexing must never stop an event from being stored
            log.exception("search indexing failed for %s", event_id)
            return lambda ordering: [], None

        def at(ordering: int) -> list[tuple[str, list[Any]]]:
            if found is None:
                return statements
            return statements + store.insert_statements(event_id, pdu["room_id"], ordering, *found)
        return at, None

    async def search(self, requester: Requester, body: dict[str, Any],
                     next_batch: str | None) -> dict[str, Any]:
        crit = parse_criteria(body)
        if crit is None:
            return {"search_categories": {}}
        cursor = parse_batch(next_batch, crit.by_rank)
        out = await self._room_events(requester, crit, cursor)
        return {"search_categories": {"room_events": out}}

    async def _room_events(self, requester: Requester, crit: Criteria,
                           cursor: store.Cursor | None) -> dict[str, Any]:
        hs, user_id, flt = self.hs, requester.user_id, crit.flt
        words = tokenize(crit.term, MAX_QUERY_TOKENS)
        key = self.key if self.key is not None else load_key(hs.config.data_dir)
        bounds, readable_left, members_only, unreadable = await self._rooms(user_id)
        fields = tuple(FIELDS[k][0] for k in crit.keys if flt.allows_type(FIELDS[k][1]))
        q = store.Query(
            hashes=tuple(dict.fromkeys(token_hash(key, w) for w in words)), fields=fields,
            user_id=user_id, by_rank=crit.by_rank, readable_left=readable_left,
            members_only=members_only, unreadable=unreadable,
            # Lists as long as the filter allows would pass the databases' parameter limits:
            # rooms are those of the user anyway, and long sender lists are checked below.
            rooms=None if flt.rooms is None else tuple(r for r in flt.rooms if r in bounds),
            not_rooms=tuple(r for r in flt.not_rooms if r in bounds),
            **({"senders": flt.senders, "not_senders": flt.not_senders}
               if len(flt.senders or ()) + len(flt.not_senders) <= MAX_SQL_SENDERS else {}))
        limit = max(1, flt.limit_or(DEFAULT_LIMIT, MAX_LIMIT))
        found: list[tuple[EventRow, int]] = []
        exhausted = False
        for _ in range(ROUNDS):
            need = limit - len(found)
            rows = await store.find(q, cursor, need + 1)
            more = len(rows) > need
            rows = rows[:need]
            if rows:
                cursor = (rows[-1][1], rows[-1][0].stream_ordering)
            visible = {r.event_id for r in await filter_for_user(hs, user_id, [r for r, _ in rows])}
            found += [(r, n) for r, n in rows if r.event_id in visible
                      and flt.matches(r.type, r.sender, r.room_id, r.pdu.get("content"))]
            if not more:
                exhausted = True
                break
            if len(found) >= limit:
                break
        events = await format_events(hs, [r for r, _ in found], user_id, requester.device_id)
        results = []
        for (row, n), ev in zip(found, events):
            item: dict[str, Any] = {"rank": round(len(q.hashes) / max(n, 1), 6), "result": ev}
            if crit.context is not None:
                item["context"] = await self._context(requester, row, crit.context,
                                                      bounds.get(row.room_id))
            results.append(item)
        out: dict[str, Any] = {"count": await store.count(q), "highlights": words,
                               "results": results}
        if not exhausted and cursor is not None:
            out["next_batch"] = batch_token(cursor, crit.by_rank)
        if crit.group_by:
            out["groups"] = _groups(crit.group_by, [r for r, _ in found])
        if crit.include_state:
            out["state"] = await self._state(user_id, {r.room_id for r, _ in found})
        return out

    async def _rooms(self, user_id: str) -> tuple[dict[str, int | None], tuple[str, ...],
                                                  tuple[str, ...], tuple[str, ...]]:
        """room -> the last position the user may read there (None: no limit), as /messages
        bounds it; the rooms they left that stay readable (world-readable history); for the
        count, the rooms whose history before the user's membership is for members only, and
        those they are only invited to that show nothing before joining."""
        bounds: dict[str, int | None] = {}
        readable_left, members_only, unreadable = [], [], []
        for m in await self.hs.state.user_memberships(user_id):
            room_id = m["room_id"]
            hv_event = await self.hs.state.current_state_event(room_id, HV_KEY[0])
            hv = hv_event.pdu["content"].get("history_visibility") if hv_event else "shared"
            if m["membership"] in ("join", "invite"):
                bounds[room_id] = None
                if m["membership"] == "invite" and hv not in ("invited", "world_readable"):
                    unreadable.append(room_id)
                elif hv in ("joined", "invited"):
                    members_only.append(room_id)
            elif hv == "world_readable":
                bounds[room_id] = None
                readable_left.append(room_id)
            else:
                bounds[room_id] = m["stream_ordering"]
        return bounds, tuple(readable_left), tuple(members_only), tuple(unreadable)

    async def _context(self, requester: Requester, row: EventRow,
                       limits: tuple[int, int, bool], bound: int | None) -> dict[str, Any]:
        hs, user_id = self.hs, requester.user_id
        before_n, after_n, profile = limits
        before = after = []
        if before_n:
            before = await event_store.get_room_events(
                row.room_id, before=row.stream_ordering - 1, limit=before_n, newest_first=True)
        if after_n:
            after = await event_store.get_room_events(
                row.room_id, after=row.stream_ordering, before=bound, limit=after_n,
                newest_first=False)
        before = await filter_for_user(hs, user_id, before)
        after = await filter_for_user(hs, user_id, after)
        fmt = lambda rows: format_events(hs, rows, user_id, requester.device_id)  # noqa: E731
        out: dict[str, Any] = {
            "events_before": await fmt(before), "events_after": await fmt(after),
            "start": pagination_token((before[-1] if before else row).stream_ordering - 1),
            "end": pagination_token((after[-1] if after else row).stream_ordering),
        }
        if profile:
            senders = {r.sender for r in (*before, row, *after)}
            members = await hs.state.state_at(row, [("m.room.member", s) for s in senders])
            info: dict[str, Any] = {}
            for (_, sender), ev in members.items():
                content = ev.pdu.get("content") or {}
                info[sender] = {k: content[k] for k in ("displayname", "avatar_url")
                                if isinstance(content.get(k), str)}
            out["profile_info"] = info
        return out

    async def _state(self, user_id: str, room_ids: set[str]) -> dict[str, list]:
        """Current state of the result rooms the user is joined to (not of rooms they left:
        what happened there since is not theirs to see)."""
        out = {}
        for room_id in sorted(room_ids):
            if await self.hs.state.membership_of(room_id, user_id) == "join":
                rows = (await self.hs.state.current_state(room_id)).values()
                out[room_id] = await format_events(self.hs, rows)
        return out


def _groups(keys: tuple[str, ...], rows: list[EventRow]) -> dict[str, Any]:
    """Results of this page grouped by room or sender, groups in order of their best result."""
    out: dict[str, Any] = {}
    for key in keys:
        groups: dict[str, dict[str, Any]] = {}
        for row in rows:
            value = row.room_id if key == "room_id" else row.sender
            group = groups.setdefault(value, {"order": len(groups) + 1, "results": []})
            group["results"].append(row.event_id)
        out[key] = groups
    return out
