"""Username rules and suggestions: pure functions, no I/O.

`validate_localpart` is the single place that says whether a localpart may be registered (the
registration handler reuses it); `suggestion_candidates` turns a wanted name, valid or not, into
an ordered list of valid alternatives. Which of them are free is the caller's question (one
database query for the whole list).
"""

from __future__ import annotations

import datetime
import random
import re
import unicodedata

from homeserver.types import LOCALPART_RE, MAX_ID_LENGTH

# Separators allowed inside a localpart; they never start or end a sanitised suggestion.
SEPARATORS = "._=-/+"
# Longest username input we look at (anything longer is invalid anyway).
MAX_INPUT_LENGTH = 512
_SEP_RUN = re.compile(r"[._=\-/+]{2,}")
_INVALID_CHAR = re.compile(r"[^a-z0-9._=\-/+]")


def max_localpart_length(server_name: str | None) -> int:
    """Longest localpart whose full user ID '@local:server' fits in 255 characters."""
    if not server_name:
        return MAX_ID_LENGTH - 2
    return MAX_ID_LENGTH - 2 - len(server_name)


def validate_localpart(localpart: object, server_name: str | None = None) -> str | None:
    """An error message when `localpart` may not be registered, or None when it may.

    Spec grammar for new user IDs: a-z, 0-9 and ._=-/+ only; the full ID at most 255
    characters (checked only when `server_name` is given; otherwise against 253).
    """
    if not isinstance(localpart, str) or not localpart:
        return "Username must not be empty"
    if not LOCALPART_RE.match(localpart):
        if localpart.lower() != localpart and LOCALPART_RE.match(localpart.lower()):
            return "Username must be lowercase"
        return "Username may only contain the characters a-z, 0-9, and ._=-/+"
    limit = max_localpart_length(server_name)
    if len(localpart) > limit:
        return f"Username is too long (at most {limit} characters)"
    return None


def sanitise(wanted: str, max_len: int = MAX_ID_LENGTH - 2) -> str:
    """The closest valid localpart to `wanted`, or "" when nothing usable is left.

    '@Alice:example.org' -> 'alice', 'José Núñez' -> 'jose_nunez', 'a  b!!c' -> 'a_bc'.
    """
    s = wanted.strip()[:MAX_INPUT_LENGTH]
    if s.startswith("@"):
        s = s[1:].partition(":")[0]
    # Accents off (é -> e), compatibility forms folded (ﬁ -> fi), then lowercase.
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c)).lower()
    s = re.sub(r"\s+", "_", s)
    s = _INVALID_CHAR.sub("", s)
    s = _SEP_RUN.sub(lambda m: m.group(0)[0], s)
    s = s.strip(SEPARATORS)
    return s[:max_len].rstrip(SEPARATORS)


def _fit(base: str, suffix: str, max_len: int) -> str:
    """base + suffix, shortening base so the whole fits."""
    room = max_len - len(suffix)
    if room <= 0:
        return ""
    return base[:room].rstrip(SEPARATORS) + suffix


def suggestion_candidates(
    wanted: str,
    server_name: str | None = None,
    *,
    year: int | None = None,
    rng: random.Random | None = None,
    count: int = 24,
) -> list[str]:
    """Ordered, de-duplicated, valid localparts to offer instead of `wanted`.

    The first few are the most natural (the sanitised name, its separator variants, name plus
    year); later ones add random digits so that at least some are very likely free. `wanted`
    itself is never included.
    """
    rng = rng or random.Random()
    year = year if year is not None else datetime.date.today().year
    max_len = max_localpart_length(server_name)
    base = sanitise(wanted, max_len) or "user"
    out: list[str] = []

    def add(candidate: str) -> None:
        if (candidate and candidate != wanted and candidate not in out
                and validate_localpart(candidate, server_name) is None):
            out.append(candidate)

    add(base)
    parts = [p for p in re.split(r"[._=\-/+]", base) if p]
    if len(parts) > 1:
        add("".join(parts)[:max_len])
        add(".".join(parts)[:max_len])
        add("_".join(parts)[:max_len])
    add(_fit(base, str(year), max_len))
    add(_fit(base, f"_{rng.randint(10, 99)}", max_len))
    add(_fit(base, str(rng.randint(100, 999)), max_len))
    if len(parts) > 1:
        # Initial plus last part: 'john_smith' -> 'jsmith'.
        add(_fit(parts[0][0] + parts[-1], "", max_len))
    for n in range(1, 4):
        add(_fit(base, str(n), max_len))
    add(_fit(base, f"_{year % 100:02d}", max_len))
    add(_fit(base, f".{year}", max_len))
    for _ in range(count * 4):  # bounded: short limits may leave nothing more to add
        if len(out) >= count:
            break
        add(_fit(base, str(rng.randint(1000, 99999)), max_len))
    return out[:count]


def pick_suggestions(candidates: list[str], taken: set[str], n: int = 5) -> list[str]:
    """The first `n` candidates that are not taken, in order."""
    return [c for c in candidates if c not in taken][:n]
