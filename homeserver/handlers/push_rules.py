"""Push rules: the server-default ruleset plus each user's changes, kept as one JSON document.

The document (table push_rules) is {"custom": {kind: [rule, ...]}, "defaults": {"kind/rule_id":
{"enabled": bool, "actions": [...]}}}: user-defined rules in priority order, and changes to the
server-default rules. Every change also rewrites the user's `m.push_rules` account data entry
(content kept empty, filled from here when read), so /sync sees the change and wakes up.
"""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING, Any

import orjson

from homeserver.errors import MatrixError, invalid_param, not_found
from homeserver.events.push_eval import CompiledRule, compile_rules
from homeserver.handlers.lru import LRU
from homeserver.storage import notifications as counts_store
from homeserver.storage import userdata as store

if TYPE_CHECKING:
    from homeserver.server import HomeServer

KINDS = ("override", "content", "room", "sender", "underride")
SIMPLE_ACTIONS = ("notify", "dont_notify", "coalesce")
MAX_CUSTOM_RULES = 500

_NOTIFY_SOUND_HIGHLIGHT = ["notify", {"set_tweak": "sound", "value": "default"},
                           {"set_tweak": "highlight"}]
_NOTIFY_HIGHLIGHT = ["notify", {"set_tweak": "highlight"}]
_NOTIFY_SOUND = ["notify", {"set_tweak": "sound", "value": "default"},
                 {"set_tweak": "highlight", "value": False}]
_NOTIFY = ["notify", {"set_tweak": "highlight", "value": False}]


def _em(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _rule(rule_id: str, actions: list, conditions: list | None = None, *,
          enabled: bool = True, pattern: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"rule_id": rule_id, "default": True, "enabled": enabled,
                         "actions": copy.deepcopy(actions)}
    if conditions is not None:
        r["conditions"] = conditions
    if pattern is not None:
        r["pattern"] = pattern
    return r


def default_rules(user_id: str) -> dict[str, list[dict[str, Any]]]:
    """The predefined rules (client-server API "Predefined rules"), in priority order.

    The deprecated legacy mention rules (.m.rule.contains_display_name, .m.rule.roomnotif,
    .m.rule.contains_user_name) are kept for clients that do not send m.mentions yet.
    """
    localpart = user_id[1:].partition(":")[0]
    override = [
        _rule(".m.rule.master", [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [], [_em("content.msgtype", "m.notice")]),
        _rule(".m.rule.invite_for_me", _NOTIFY_SOUND,
              [_em("type", "m.room.member"), _em("content.membership", "invite"),
               _em("state_key", user_id)]),
        _rule(".m.rule.member_event", [], [_em("type", "m.room.member")]),
        _rule(".m.rule.is_user_mention", _NOTIFY_SOUND_HIGHLIGHT,
              [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids",
                "value": user_id}]),
        _rule(".m.rule.contains_display_name", _NOTIFY_SOUND_HIGHLIGHT,
              [{"kind": "contains_display_name"}]),
        _rule(".m.rule.is_room_mention", _NOTIFY_HIGHLIGHT,
              [{"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
               {"kind": "sender_notification_permission", "key": "room"}]),
        _rule(".m.rule.roomnotif", _NOTIFY_HIGHLIGHT,
              [{"kind": "sender_notification_permission", "key": "room"},
               _em("content.body", "@room")]),
        _rule(".m.rule.tombstone", _NOTIFY_HIGHLIGHT,
              [_em("type", "m.room.tombstone"), _em("state_key", "")]),
        _rule(".m.rule.reaction", [], [_em("type", "m.reaction")]),
        _rule(".m.rule.room.server_acl", [],
              [_em("type", "m.room.server_acl"), _em("state_key", "")]),
        _rule(".m.rule.suppress_edits", [],
              [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type",
                "value": "m.replace"}]),
    ]
    content = [_rule(".m.rule.contains_user_name", _NOTIFY_SOUND_HIGHLIGHT, pattern=localpart)]
    one_to_one = {"kind": "room_member_count", "is": "2"}
    underride = [
        _rule(".m.rule.call", ["notify", {"set_tweak": "sound", "value": "ring"},
                               {"set_tweak": "highlight", "value": False}],
              [_em("type", "m.call.invite")]),
        _rule(".m.rule.encrypted_room_one_to_one", _NOTIFY_SOUND,
              [dict(one_to_one), _em("type", "m.room.encrypted")]),
        _rule(".m.rule.room_one_to_one", _NOTIFY_SOUND,
              [dict(one_to_one), _em("type", "m.room.message")]),
        _rule(".m.rule.message", _NOTIFY, [_em("type", "m.room.message")]),
        _rule(".m.rule.encrypted", _NOTIFY, [_em("type", "m.room.encrypted")]),
    ]
    return {"override": override, "content": content, "room": [], "sender": [],
            "underride": underride}


def empty_doc() -> dict[str, Any]:
    return {"custom": {k: [] for k in KINDS}, "defaults": {}}


def _public(kind: str, rule: dict[str, Any]) -> dict[str, Any]:
    out = {"rule_id": rule["rule_id"], "default": bool(rule.get("default", False)),
           "enabled": bool(rule.get("enabled", True)), "actions": rule["actions"]}
    if kind in ("override", "underride"):
        out["conditions"] = rule.get("conditions", [])
    elif kind == "content":
        out["pattern"] = rule.get("pattern", "")
    return out


def build_ruleset(user_id: str, doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The user's global ruleset: master first, then user rules before defaults of each kind."""
    defaults = default_rules(user_id)
    changes = doc.get("defaults", {})
    for kind, rules in defaults.items():
        for r in rules:
            ch = changes.get(f"{kind}/{r['rule_id']}")
            if ch:
                r["enabled"] = ch.get("enabled", r["enabled"])
                r["actions"] = ch.get("actions", r["actions"])
    custom = doc.get("custom", {})
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        users = [_public(kind, {**r, "default": False}) for r in custom.get(kind, [])]
        base = [_public(kind, r) for r in defaults[kind]]
        if kind == "override":
            out[kind] = base[:1] + users + base[1:]
        else:
            out[kind] = users + base
    return out


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise invalid_param(f"Unknown push rule kind {kind[:40]!r}")


def validate_actions(actions: Any) -> list[Any]:
    if not isinstance(actions, list):
        raise invalid_param("actions must be a list")
    for a in actions:
        if isinstance(a, str):
            if a not in SIMPLE_ACTIONS:
                raise invalid_param(f"Unknown action {a[:40]!r}")
        elif isinstance(a, dict):
            if not isinstance(a.get("set_tweak"), str) or not a["set_tweak"]:
                raise invalid_param("An action object needs a set_tweak string")
        else:
            raise invalid_param("Each action must be a string or an object")
    return actions


def validate_rule(kind: str, rule_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A new user-defined rule from a PUT body (without position or enabled state)."""
    check_kind(kind)
    if not rule_id or len(rule_id) > 255:
        raise invalid_param("rule_id must be 1 to 255 characters")
    if rule_id.startswith("."):
        raise invalid_param("Rule IDs starting with '.' are reserved for server-default rules")
    if "/" in rule_id or "\\" in rule_id:
        raise invalid_param("Rule IDs may not contain '/' or '\\'")
    if "actions" not in body:
        raise MatrixError(400, "M_MISSING_PARAM", "actions is required")
    rule: dict[str, Any] = {"rule_id": rule_id, "actions": validate_actions(body["actions"])}
    if kind in ("override", "underride"):
        conds = body.get("conditions", [])
        if not isinstance(conds, list) or not all(
            isinstance(c, dict) and isinstance(c.get("kind"), str) for c in conds
        ):
            raise invalid_param("conditions must be a list of objects with a kind")
        rule["conditions"] = conds
    elif kind == "content":
        if "pattern" not in body:
            raise MatrixError(400, "M_MISSING_PARAM", "Content rules need a pattern")
        if not isinstance(body["pattern"], str):
            raise invalid_param("pattern must be a string")
        rule["pattern"] = body["pattern"]
    return rule


def _find(rules: list[dict[str, Any]], rule_id: str) -> int | None:
    return next((i for i, r in enumerate(rules) if r["rule_id"] == rule_id), None)


def put_rule(doc: dict[str, Any], kind: str, rule: dict[str, Any],
             before: str | None = None, after: str | None = None) -> None:
    """Insert or update a user rule in `doc` (in place). New rules go first unless placed."""
    rules = doc.setdefault("custom", {}).setdefault(kind, [])
    anchor = before if before is not None else after
    if anchor is not None:
        if anchor.startswith("."):
            raise MatrixError(400, "M_UNKNOWN", "Cannot place a rule relative to a server-default rule")
        if anchor == rule["rule_id"] or _find(rules, anchor) is None:
            raise MatrixError(400, "M_UNKNOWN", f"before/after rule not found: {anchor[:80]}")
    idx = _find(rules, rule["rule_id"])
    if idx is not None:
        rule = {**rule, "enabled": rules[idx].get("enabled", True)}
        if anchor is None:
            rules[idx] = rule
            return
        del rules[idx]
    else:
        if sum(len(v) for v in doc["custom"].values()) >= MAX_CUSTOM_RULES:
            raise invalid_param(f"A user may have at most {MAX_CUSTOM_RULES} push rules")
        rule = {**rule, "enabled": True}
    if anchor is None:
        rules.insert(0, rule)
    else:
        pos = _find(rules, anchor)
        assert pos is not None
        rules.insert(pos if before is not None else pos + 1, rule)


def delete_rule(doc: dict[str, Any], kind: str, rule_id: str) -> None:
    if rule_id.startswith("."):
        raise invalid_param("Server-default rules cannot be deleted")
    rules = doc.get("custom", {}).get(kind, [])
    idx = _find(rules, rule_id)
    if idx is None:
        raise not_found("The push rule was not found")
    del rules[idx]


def update_rule(doc: dict[str, Any], user_id: str, kind: str, rule_id: str,
                **change: Any) -> None:
    """Set `enabled` and/or `actions` of an existing rule, default or user-defined."""
    idx = _find(doc.get("custom", {}).get(kind, []), rule_id)
    if idx is not None:
        doc["custom"][kind][idx].update(change)
        return
    if _find(default_rules(user_id).get(kind, []), rule_id) is None:
        raise not_found("The push rule was not found")
    doc.setdefault("defaults", {}).setdefault(f"{kind}/{rule_id}", {}).update(change)


def get_rule(ruleset: dict[str, list[dict[str, Any]]], kind: str, rule_id: str) -> dict[str, Any]:
    idx = _find(ruleset.get(kind, []), rule_id)
    if idx is None:
        raise not_found("The push rule was not found")
    return ruleset[kind][idx]


class PushRulesHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._docs: LRU = LRU(10_000)  # user_id -> document
        # user_id -> compiled rules in evaluation order (push_eval), asked for on every event
        self._flat: LRU = LRU(10_000)
        self._lock = asyncio.Lock()  # read-modify-write of documents

    async def _doc(self, user_id: str) -> dict[str, Any]:
        doc = self._docs.get_item(user_id)
        if doc is None:
            text = await store.get_push_rules(user_id)
            doc = orjson.loads(text) if text else empty_doc()
            self._docs.put(user_id, doc)
        return doc

    async def ruleset(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        return build_ruleset(user_id, await self._doc(user_id))

    async def evaluation_rules(self, user_ids: list[str]
                               ) -> dict[str, tuple[CompiledRule, ...]]:
        """Each user's enabled rules in evaluation order; documents not cached yet are read
        in one query for all of them (an event in a big room asks for every member)."""
        out, missing = self._flat.get_many(user_ids)
        unknown = [u for u in missing if self._docs.get_item(u) is None]
        if unknown:
            stored = await counts_store.push_rules_many(unknown)
            for u in unknown:
                if self._docs.get_item(u) is None:  # not written meanwhile
                    text = stored.get(u)
                    self._docs.put(u, orjson.loads(text) if text else empty_doc())
        for u in missing:
            doc = await self._doc(u)
            flat = compile_rules(build_ruleset(u, doc))
            if self._docs.get_item(u) is doc:  # not changed while we waited
                self._flat.put(u, flat)
            out[u] = flat
        return out

    async def push_rules_content(self, user_id: str) -> dict[str, Any]:
        """Content of the m.push_rules account data event (and of GET /pushrules/)."""
        return {"global": await self.ruleset(user_id)}

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> dict[str, Any]:
        check_kind(kind)
        return get_rule(await self.ruleset(user_id), kind, rule_id)

    async def _change(self, user_id: str, fn) -> None:
        async with self._lock:
            doc = copy.deepcopy(await self._doc(user_id))
            fn(doc)  # raises before anything is stored
            text = orjson.dumps(doc).decode()

            async def extra(conn) -> None:
                await store.put_push_rules(user_id, text, conn)

            await self.hs.account_data.write(user_id, "", "m.push_rules", "{}", extra=extra)
            self._docs.put(user_id, doc)
            self._flat.pop(user_id, None)

    async def set_rule(self, user_id: str, kind: str, rule_id: str, body: dict[str, Any],
                       before: str | None = None, after: str | None = None) -> None:
        rule = validate_rule(kind, rule_id, body)
        await self._change(user_id, lambda doc: put_rule(doc, kind, rule, before, after))

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        check_kind(kind)
        await self._change(user_id, lambda doc: delete_rule(doc, kind, rule_id))

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: Any) -> None:
        check_kind(kind)
        if not isinstance(enabled, bool):
            raise invalid_param("enabled must be a boolean")
        await self._change(user_id, lambda doc: update_rule(doc, user_id, kind, rule_id,
                                                            enabled=enabled))

    async def set_actions(self, user_id: str, kind: str, rule_id: str, actions: Any) -> None:
        check_kind(kind)
        validate_actions(actions)
        await self._change(user_id, lambda doc: update_rule(doc, user_id, kind, rule_id,
                                                            actions=actions))

    async def copy_room_rules(self, user_id: str, old_room_id: str, new_room_id: str) -> None:
        """On a room upgrade: copy the user's rules that target the old room to the new one."""
        doc = await self._doc(user_id)
        custom = doc.get("custom", {})

        def targets_old(kind: str, r: dict[str, Any]) -> bool:
            if kind == "room":
                return r["rule_id"] == old_room_id
            return any(c.get("kind") == "event_match" and c.get("key") == "room_id"
                       and c.get("pattern") == old_room_id for c in r.get("conditions", []))

        todo = [(k, r) for k in ("override", "room", "underride") for r in custom.get(k, [])
                if targets_old(k, r)]
        if not todo:
            return

        def apply(d: dict[str, Any]) -> None:
            for kind, r in todo:
                new = copy.deepcopy(r)
                if kind == "room":
                    new["rule_id"] = new_room_id
                else:
                    new["rule_id"] = f"{r['rule_id']}-{new_room_id}"[:255].replace("/", "_")
                    for c in new.get("conditions", []):
                        if c.get("key") == "room_id" and c.get("pattern") == old_room_id:
                            c["pattern"] = new_room_id
                if _find(d["custom"].setdefault(kind, []), new["rule_id"]) is None:
                    d["custom"][kind].append(new)

        await self._change(user_id, apply)
