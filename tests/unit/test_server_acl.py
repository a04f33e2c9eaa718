from homeserver.events.server_acl import server_allowed_by_acl as ok


def test_allow_and_deny_globs():
    acl = {"allow": ["*"], "deny": ["evil.example", "*.bad.org"]}
    assert ok(acl, "good.example")
    assert ok(acl, "good.example:8448")
    assert not ok(acl, "evil.example")
    assert not ok(acl, "evil.example:443")
    assert not ok(acl, "x.bad.org")
    assert ok(acl, "bad.org")


def test_empty_allow_denies_everyone_and_question_mark():
    assert not ok({"deny": []}, "a.example")
    assert ok({"allow": ["s?.example"]}, "s1.example")
    assert not ok({"allow": ["s?.example"]}, "s12.example")


def test_ip_literals():
    acl = {"allow": ["*"], "allow_ip_literals": False}
    assert not ok(acl, "127.0.0.1:8008")
    assert not ok(acl, "[::1]:8448")
    assert ok(acl, "localhost:8008")
    assert ok({"allow": ["*"]}, "127.0.0.1")


def test_malformed_content_is_tolerated():
    assert ok(None, "a")
    assert not ok({"allow": "nope"}, "a")
    assert ok({"allow": ["*", 5], "deny": [None]}, "a")
