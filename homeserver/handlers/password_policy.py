"""Password strength rules: the pure check behind registration and password changes.

Character classes are Unicode-wide (Cyrillic and other scripts count as letters): lowercase
is category Ll, uppercase Lu, a digit Nd, and a symbol anything that is not a letter or a
number (a space counts). Length counts code points. The web UI applies the same rules from
the policy it reads at /_matrix/client/v3/password_policy (web/static/js/password.js).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

from homeserver.config import PasswordPolicyConfig
from homeserver.errors import MatrixError

COMMON_FILE = Path(__file__).with_name("common_passwords.txt")


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    lines = COMMON_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(ln.strip().casefold() for ln in lines if ln.strip() and not ln.startswith("#"))


def _classes(password: str) -> set[str]:
    found: set[str] = set()
    for c in password:
        cat = unicodedata.category(c)
        if cat == "Ll":
            found.add("lowercase")
        elif cat == "Lu":
            found.add("uppercase")
        elif cat == "Nd":
            found.add("digit")
        if cat[0] not in "LN":
            found.add("symbol")
    return found


def password_problems(password: str, policy: PasswordPolicyConfig) -> list[str]:
    """What the password lacks, as short phrases ("at least 8 characters", "a digit", …);
    empty when it is acceptable. A common password is reported alone: nothing fixes it but
    choosing another."""
    if not policy.enabled:
        return []
    if policy.refuse_common and password.casefold() in common_passwords():
        return ["not one of the most common passwords"]
    missing = []
    if len(password) < policy.minimum_length:
        missing.append(f"at least {policy.minimum_length} characters")
    have = _classes(password)
    for rule, what, phrase in (("require_digit", "digit", "a digit"),
                               ("require_lowercase", "lowercase", "a lowercase letter"),
                               ("require_uppercase", "uppercase", "an uppercase letter"),
                               ("require_symbol", "symbol", "a symbol")):
        if getattr(policy, rule) and what not in have:
            missing.append(phrase)
    return missing


def describe(problems: list[str]) -> str:
    if problems == ["not one of the most common passwords"]:
        return "This password is one of the most common passwords; choose another"
    text = problems[0] if len(problems) == 1 else ", ".join(problems[:-1]) + " and " + problems[-1]
    return f"The password is too weak: it needs {text}"


def check_password(password: str, policy: PasswordPolicyConfig) -> None:
    """Raise 400 M_WEAK_PASSWORD naming what is missing."""
    problems = password_problems(password, policy)
    if problems:
        raise MatrixError(400, "M_WEAK_PASSWORD", describe(problems))


def policy_json(policy: PasswordPolicyConfig) -> dict[str, Any]:
    """The policy as MSC2000 describes it (GET /password_policy, as Synapse serves it), plus
    the common-password list under our namespace so that clients can agree exactly."""
    if not policy.enabled:
        return {}
    out: dict[str, Any] = {
        "m.minimum_length": policy.minimum_length,
        "m.require_digit": policy.require_digit,
        "m.require_lowercase": policy.require_lowercase,
        "m.require_uppercase": policy.require_uppercase,
        "m.require_symbol": policy.require_symbol,
    }
    if policy.refuse_common:
        out["im.nexa.common_passwords"] = sorted(common_passwords())
    return out
