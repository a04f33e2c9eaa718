"""English and Russian translations are complete: the same keys, every {placeholder} kept, and
plural entries with every form the language needs."""

from __future__ import annotations

import json
import re
from pathlib import Path

I18N = Path(__file__).resolve().parents[2] / "web" / "static" / "i18n"
JS = Path(__file__).resolve().parents[2] / "web" / "static" / "js"
PLURAL_FORMS = {"en": {"one", "other"}, "ru": {"one", "few", "many", "other"}}
CATEGORIES = {"zero", "one", "two", "few", "many", "other"}


def load(code: str) -> dict:
    return json.loads((I18N / f"{code}.json").read_text("utf-8"))


def placeholders(value) -> set[str]:
    texts = value.values() if isinstance(value, dict) else [value]
    return {p for t in texts for p in re.findall(r"\{(\w+)\}", t)}


def test_same_keys_in_every_language():
    langs = {p.stem for p in I18N.glob("*.json")}
    assert {"en", "ru"} <= langs
    en = load("en")
    for code in langs:
        other = load(code)
        assert set(other) == set(en), (code, set(en) ^ set(other))


def test_values_placeholders_and_plurals():
    en, ru = load("en"), load("ru")
    for key, value in en.items():
        for code, d in (("en", en), ("ru", ru)):
            v = d[key]
            assert isinstance(v, (str, dict)) and v, (code, key)
            if isinstance(v, dict):
                assert isinstance(value, dict), (code, key, "plural in one language only")
                assert set(v) <= CATEGORIES and PLURAL_FORMS[code] <= set(v), (code, key, set(v))
                assert all(isinstance(x, str) and x for x in v.values()), (code, key)
        assert placeholders(ru[key]) == placeholders(value), key


def test_every_key_used_in_code_exists():
    en = load("en")
    used = set()
    for f in JS.rglob("*.js"):
        used |= set(re.findall(r"""\bt\(\s*'([a-z_]+\.[a-z_0-9.]+)'""", f.read_text("utf-8")))
    missing = sorted(k for k in used if k not in en)
    assert not missing, missing
