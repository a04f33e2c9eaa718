"""Push rule evaluation: does an event notify a user, and does it highlight? Pure, no I/O.

The rules are the user's global ruleset (override, content, room, sender, underride, each in
priority order, as built by handlers/push_rules.py); the first enabled rule whose conditions
all hold decides, and its actions say whether the event notifies (client-server API, "Push
Rules"). Everything about the room that conditions ask for (member count, the user's display
name, power levels) is passed in, so the caller fetches it once per event for all members.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable

from homeserver.events.power_levels import as_int

KIND_ORDER = ("override", "content", "room", "sender", "underride")
_MISSING = object()
# A word boundary for body matching: start/end of the value or a character outside [A-Za-z0-9_].
_WORD_CHARS = "A-Za-z0-9_"
_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]+)$")


@dataclass(frozen=True)
class RoomFacts:
    """What the conditions need to know about the room when the event arrived."""

    member_count: int
    # The sender's power level and the room's `notifications` levels (e.g. {"room": 50}).
    sender_power: int = 0
    notification_levels: dict[str, Any] | None = None


@dataclass(frozen=True)
class Outcome:
    notify: bool
    highlight: bool
    rule_id: str | None = None


NO_NOTIFY = Outcome(False, False)


def split_key(key: str) -> tuple[str, ...]:
    """'content.m\\.mentions.user_ids' -> ('content', 'm.mentions', 'user_ids')."""
    return _split_key(key)


@lru_cache(maxsize=1024)
def _split_key(key: str) -> tuple[str, ...]:
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(key):
        c = key[i]
        if c == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            cur.append(key[i + 1])
            i += 2
            continue
        if c == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return tuple(parts)


def lookup(event: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of the event, or _MISSING."""
    return _lookup_parts(event, _split_key(key))


def _lookup_parts(event: dict[str, Any], parts: tuple[str, ...]) -> Any:
    node: Any = event
    for part in parts:
        if not isinstance(node, dict):
            return _MISSING
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


@lru_cache(maxsize=4096)
def _glob(pattern: str, words: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if words:
        return re.compile(rf"(?:^|[^{_WORD_CHARS}]){body}(?:[^{_WORD_CHARS}]|$)",
                          re.IGNORECASE | re.DOTALL)
    return re.compile(rf"^{body}$", re.IGNORECASE | re.DOTALL)


@lru_cache(maxsize=4096)
def _words(literal: str) -> re.Pattern[str]:
    return re.compile(rf"(?:^|[^{_WORD_CHARS}]){re.escape(literal)}(?:[^{_WORD_CHARS}]|$)",
                      re.IGNORECASE)


def glob_matches(pattern: str, value: str, *, words: bool = False) -> bool:
    """Case-insensitive glob (* and ?): the whole value, or (words) any run of whole words."""
    return _glob(pattern, words).search(value) is not None


def _member_count_matches(spec: Any, count: int) -> bool:
    m = _MEMBER_COUNT.match(spec) if isinstance(spec, str) else None
    if m is None:
        return False
    op, n = m.group(1) or "==", int(m.group(2))
    return {"==": count == n, "<": count < n, ">": count > n,
            "<=": count <= n, ">=": count >= n}[op]


def _same_value(a: Any, b: Any) -> bool:
    # JSON semantics: true is not 1, 1 is not "1".
    return type(a) is type(b) and a == b  # noqa: E721


# --- compiled rules ------------------------------------------------------------------------
#
# Rules are compiled once per ruleset (cached by the caller) into predicates. Equal conditions
# compile to the same predicate object, so when one event is evaluated for every member of a
# room, a condition that does not depend on the member (most of them) runs once per event:
# `memo` remembers its result. Only contains_display_name depends on who is asking.


class Pred:
    __slots__ = ("fn", "per_user")

    def __init__(self, fn: Callable[[dict, str | None, RoomFacts], bool],
                 per_user: bool = False) -> None:
        self.fn = fn
        self.per_user = per_user


class CompiledRule:
    """A rule as predicates; `shared` when none depends on the member, so that its result for
    an event holds for everyone (equal rules of different users are one object)."""

    __slots__ = ("rule_id", "preds", "outcome", "shared")

    def __init__(self, rule_id: str, preds: tuple[Pred, ...], outcome: Outcome) -> None:
        self.rule_id = rule_id
        self.preds = preds
        self.outcome = outcome
        self.shared = not any(p.per_user for p in preds)


@lru_cache(maxsize=16384)
def _compiled_rule(rule_id: str, preds: tuple[Pred, ...], outcome: Outcome) -> CompiledRule:
    return CompiledRule(rule_id, preds, outcome)


@lru_cache(maxsize=8192)
def _event_match(key: str, pattern: str) -> Pred:
    rx = _glob(pattern, key == "content.body")
    parts = _split_key(key)

    def fn(event: dict, _name: str | None, _room: RoomFacts) -> bool:
        value = _lookup_parts(event, parts)
        return isinstance(value, str) and rx.search(value) is not None
    return Pred(fn)


@lru_cache(maxsize=8192)
def _property_is(key: str, kind: type, value: Any) -> Pred:
    parts = _split_key(key)

    def fn(event: dict, _name: str | None, _room: RoomFacts) -> bool:
        found = _lookup_parts(event, parts)
        return found is not _MISSING and _same_value(found, value)
    return Pred(fn)


@lru_cache(maxsize=8192)
def _property_contains(key: str, kind: type, value: Any) -> Pred:
    parts = _split_key(key)

    def fn(event: dict, _name: str | None, _room: RoomFacts) -> bool:
        found = _lookup_parts(event, parts)
        return isinstance(found, list) and any(_same_value(v, value) for v in found)
    return Pred(fn)


@lru_cache(maxsize=256)
def _member_count(spec: str) -> Pred:
    return Pred(lambda _e, _n, room: _member_count_matches(spec, room.member_count))


@lru_cache(maxsize=256)
def _sender_permission(key: str) -> Pred:
    def fn(_event: dict, _name: str | None, room: RoomFacts) -> bool:
        levels = room.notification_levels if isinstance(room.notification_levels, dict) else {}
        return room.sender_power >= as_int(levels.get(key), 50)
    return Pred(fn)


@lru_cache(maxsize=8192)
def _field_is(field_name: str, value: str) -> Pred:
    return Pred(lambda event, _n, _r: event.get(field_name) == value)


def _display_name_fn(event: dict, name: str | None, _room: RoomFacts) -> bool:
    if not name:
        return False
    content = event.get("content")
    body = content.get("body") if isinstance(content, dict) else None
    return isinstance(body, str) and _words(name).search(body) is not None


_DISPLAY_NAME = Pred(_display_name_fn, per_user=True)
_SCALARS = (str, int, bool, float, type(None))


def compile_condition(cond: Any) -> Pred | None:
    """A predicate for one condition; None when it can never hold (unknown or malformed)."""
    if not isinstance(cond, dict):
        return None
    kind, key = cond.get("kind"), cond.get("key")
    if kind == "event_match":
        pattern = cond.get("pattern")
        return _event_match(key, pattern) if isinstance(key, str) and isinstance(
            pattern, str) else None
    if kind in ("event_property_is", "event_property_contains"):
        value = cond.get("value", _MISSING)
        if not isinstance(key, str) or not isinstance(value, _SCALARS):
            return None
        factory = _property_is if kind == "event_property_is" else _property_contains
        return factory(key, type(value), value)
    if kind == "contains_display_name":
        return _DISPLAY_NAME
    if kind == "room_member_count":
        spec = cond.get("is")
        return _member_count(spec) if isinstance(spec, str) and _MEMBER_COUNT.match(
            spec) else None
    if kind == "sender_notification_permission":
        return _sender_permission(key) if isinstance(key, str) else None
    return None


def compile_rules(ruleset: dict[str, list[dict[str, Any]]]) -> tuple[CompiledRule, ...]:
    """The enabled rules of a ruleset in evaluation order (override, content, room, sender,
    underride); rules that can never match are left out."""
    out: list[CompiledRule] = []
    for kind in KIND_ORDER:
        for rule in ruleset.get(kind, ()):
            if not rule.get("enabled", True):
                continue
            rule_id = rule.get("rule_id", "")
            preds: list[Pred] = []
            if kind == "room":
                preds.append(_field_is("room_id", rule_id))
            elif kind == "sender":
                preds.append(_field_is("sender", rule_id))
            elif kind == "content":
                pattern = rule.get("pattern")
                if not isinstance(pattern, str):
                    continue
                preds.append(_event_match("content.body", pattern))
            else:
                conds = rule.get("conditions", [])
                compiled = [compile_condition(c) for c in conds] if isinstance(
                    conds, list) else [None]
                if any(p is None for p in compiled):
                    continue
                preds.extend(p for p in compiled if p is not None)
            out.append(_compiled_rule(rule_id, tuple(preds),
                                      actions_outcome(rule.get("actions"), rule_id)))
    return tuple(out)


def actions_outcome(actions: Any, rule_id: str | None = None) -> Outcome:
    """'notify' notifies; a highlight tweak (value true when absent) highlights a notification."""
    if not isinstance(actions, list) or "notify" not in actions:
        return Outcome(False, False, rule_id)
    highlight = False
    for a in actions:
        if isinstance(a, dict) and a.get("set_tweak") == "highlight":
            highlight = a.get("value", True) is True
    return Outcome(True, highlight, rule_id)


def evaluate(rules: Iterable[CompiledRule], event: dict[str, Any], display_name: str | None,
             room: RoomFacts, memo: dict | None = None) -> Outcome:
    """The first rule whose conditions all hold decides; no match: no notification.

    Pass the same `memo` for every member evaluated against one event."""
    if memo is None:
        memo = {}
    for rule in rules:
        if rule.shared:
            hit = memo.get(rule)
            if hit is None:
                hit = memo[rule] = _holds(rule.preds, event, display_name, room, memo)
        else:
            hit = _holds(rule.preds, event, display_name, room, memo)
        if hit:
            return rule.outcome
    return NO_NOTIFY


def _holds(preds: tuple[Pred, ...], event: dict[str, Any], display_name: str | None,
           room: RoomFacts, memo: dict) -> bool:
    for p in preds:
        if p.per_user:
            ok = p.fn(event, display_name, room)
        else:
            ok = memo.get(p)
            if ok is None:
                ok = memo[p] = p.fn(event, display_name, room)
        if not ok:
            return False
    return True
