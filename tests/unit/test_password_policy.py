"""The password policy rule function (homeserver.handlers.password_policy): pure logic."""

import pytest

from homeserver.config import PasswordPolicyConfig, build_config
from homeserver.errors import MatrixError
from homeserver.handlers.password_policy import (
    check_password, common_passwords, describe, password_problems, policy_json,
)

DEFAULT = PasswordPolicyConfig()
STRICT = PasswordPolicyConfig(minimum_length=12, require_uppercase=True, require_symbol=True)


@pytest.mark.parametrize("password,missing", [
    ("correct horse 42", []),
    ("abcdefg1", []),
    ("abcdefgh", ["a digit"]),
    ("ABCDEFG1", ["a lowercase letter"]),
    ("abc1", ["at least 8 characters"]),
    ("12345678", ["a lowercase letter"]),
    ("", ["at least 8 characters", "a digit", "a lowercase letter"]),
    ("ПРИВЕТмир2024", []),  # Cyrillic lowercase counts
    ("ПРИВЕТМИР2024", ["a lowercase letter"]),
    ("ab٣cdefg", []),  # an Arabic-Indic digit is a digit
    ("a1😀😀", ["at least 8 characters"]),  # code points, not UTF-16 units
])
def test_default_policy(password, missing):
    assert password_problems(password, DEFAULT) == missing


def test_strict_policy_names_everything_missing():
    assert password_problems("abcdefgh", STRICT) == [
        "at least 12 characters", "a digit", "an uppercase letter", "a symbol"]
    assert password_problems("Abcdefgh-1234", STRICT) == []
    assert password_problems("Abcdefgh 1234", STRICT) == []  # a space is a symbol
    msg = describe(password_problems("abcdefgh", STRICT))
    assert msg == ("The password is too weak: it needs at least 12 characters, a digit, "
                   "an uppercase letter and a symbol")


def test_common_passwords_refused_in_any_case():
    assert "password1" in common_passwords()
    assert all(not p.startswith("#") for p in common_passwords())
    for pw in ("password1", "PASSWORD1", "Passw0rd", "qwerty123", "пароль123"):
        assert password_problems(pw, DEFAULT) == ["not one of the most common passwords"], pw
    assert "most common" in describe(password_problems("password1", DEFAULT))
    off = PasswordPolicyConfig(refuse_common=False)
    assert password_problems("password1", off) == []


def test_disabled_policy_accepts_anything():
    off = PasswordPolicyConfig(enabled=False)
    assert password_problems("x", off) == []
    assert policy_json(off) == {}


def test_check_raises_weak_password():
    with pytest.raises(MatrixError) as e:
        check_password("short", DEFAULT)
    assert (e.value.status, e.value.errcode) == (400, "M_WEAK_PASSWORD")
    assert "at least 8 characters" in e.value.error and "a digit" in e.value.error
    check_password("long enough 1", DEFAULT)


def test_policy_json_and_config():
    out = policy_json(DEFAULT)
    assert out["m.minimum_length"] == 8
    assert out["m.require_digit"] is True and out["m.require_lowercase"] is True
    assert out["m.require_uppercase"] is False and out["m.require_symbol"] is False
    assert "password1" in out["im.nexa.common_passwords"]
    cfg = build_config({"password_policy": {"minimum_length": 10, "require_symbol": True}})
    assert cfg.password_policy.minimum_length == 10 and cfg.password_policy.require_symbol
    assert cfg.password_policy.require_digit  # defaults kept
    from homeserver.config import ConfigError
    with pytest.raises(ConfigError, match="password_policy.minimum_length"):
        build_config({"password_policy": {"minimum_length": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        build_config({"password_policy": {"min_length": 10}})
