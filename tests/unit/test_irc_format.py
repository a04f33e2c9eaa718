"""The IRC bridge's pure parts: mIRC codes <-> HTML, splitting at the line limit, rendering of
Matrix content for IRC, nick and localpart rules, line parsing."""

from __future__ import annotations

import pytest

from bridges.irc.formatting import (html_to_irc, irc_to_matrix, split_message,
                                    strip_formatting, strip_reply_fallback)
from bridges.irc.inbound import puppet_localpart
from bridges.irc.protocol import irc_lower, parse_line, sanitize_nick
from bridges.irc.render import media_link, render


def test_irc_to_matrix_codes():
    assert irc_to_matrix("plain & <text>") == ("plain & <text>", None)
    body, html = irc_to_matrix("\x02b\x02 \x1di\x1d \x1fu\x1f \x1es\x1e \x11m\x11")
    assert body == "b i u s m"
    assert html == "<b>b</b> <i>i</i> <u>u</u> <del>s</del> <code>m</code>"
    body, html = irc_to_matrix("\x0304,01red on black\x03 \x04ff8800hex\x0f <&>")
    assert body == "red on black hex <&>"
    assert '<font data-mx-color="#FF0000" data-mx-bg-color="#000000">red on black</font>' in html
    assert '<font data-mx-color="#FF8800">hex</font>' in html and html.endswith(" &lt;&amp;&gt;")
    # Reset ends everything; unknown controls and reverse are dropped.
    body, html = irc_to_matrix("\x02\x1dboth\x0f none\x16rev\x07")
    assert body == "both nonerev" and html == "<b><i>both</i></b> nonerev"
    # A colour code with no digits resets colours; digits after it stay text.
    assert irc_to_matrix("\x0312blue\x03 7 items")[0] == "blue 7 items"
    assert strip_formatting("\x0399,99x\x02y") == "xy"


def test_html_to_irc():
    assert html_to_irc("<b>bold</b> <strong>s</strong> <i>i</i> <em>e</em> <u>u</u> "
                       "<del>d</del> <code>c</code>") == \
        "\x02bold\x02 \x02s\x02 \x1di\x1d \x1de\x1d \x1fu\x1f \x1ed\x1e \x11c\x11"
    # Nested bold does not toggle off early.
    assert html_to_irc("<b>a <strong>b</strong> c</b>") == "\x02a b c\x02"
    assert html_to_irc('<font data-mx-color="#ff0000">r <span data-mx-color="#0000fc">b'
                       '</span> r</font>') == "\x0304r \x0312b\x0304 r\x03"
    assert html_to_irc('<a href="https://nexa.example/x">site</a> and '
                       '<a href="https://nexa.example/y">https://nexa.example/y</a>') == \
        "site (https://nexa.example/x) and https://nexa.example/y"
    assert html_to_irc("<p>one</p><p>two<br>three</p>") == "one\ntwo\nthree"
    assert html_to_irc("<ul><li>a</li><li>b</li></ul><ol start='3'><li>c</li></ol>") == \
        "• a\n• b\n3. c"
    assert html_to_irc("<blockquote>quoted<br>twice</blockquote>after") == \
        "> quoted\n> twice\nafter"
    assert html_to_irc("<mx-reply><blockquote>old</blockquote></mx-reply>new") == "new"
    assert html_to_irc("<h1>Title</h1>text &amp; more &lt;3") == "\x02Title\x02\ntext & more <3"
    assert html_to_irc("<pre><code>x = 1\n  y</code></pre>") == "x = 1\n  y"
    assert html_to_irc("<script>alert(1)</script><unknown>kept</unknown>") == "alert(1)kept"
    pill = '<a href="https://matrix.to/#/%40irc_alice%3Ahs">alice</a>: hi'
    assert html_to_irc(pill, {"@irc_alice:hs": "Alice"}.get) == "Alice: hi"
    assert html_to_irc(pill) == "alice: hi"


def _bytes(s: str) -> int:
    return len(s.encode("utf-8"))


@pytest.mark.parametrize("limit", [8, 40, 100, 400])
def test_split_respects_limit_and_loses_nothing(limit):
    text = " ".join(f"wörd{i}-ünïcödé" for i in range(120)) + " " + "€" * 300
    lines = split_message(text, limit)
    assert all(_bytes(ln) <= limit for ln in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    for ln in lines:
        ln.encode("utf-8").decode("utf-8")  # whole characters only


def test_split_prefers_spaces_and_keeps_formatting():
    lines = split_message("aaaa bbbb cccc dddd", 10)
    assert lines == ["aaaa bbbb", "cccc dddd"]
    lines = split_message("\x02bold " + "x" * 30 + "\x02 after", 20)
    assert lines[0].startswith("\x02bold")
    assert all(ln.startswith("\x02") for ln in lines[1:-1])  # bold re-opened after a break
    assert strip_formatting("".join(lines)).replace(" ", "") == "bold" + "x" * 30 + "after"
    # Never inside a colour code.
    lines = split_message("ab\x0304,12colour", 17)
    assert all("\x0304,12" in ln or "\x03" not in ln for ln in lines)
    # Newlines are line breaks; empty lines are dropped; formatting carries over lines.
    assert split_message("one\n\ntwo\r\nthree", 100) == ["one", "two", "three"]
    assert split_message("\x02a\nb\x02", 100) == ["\x02a", "\x02b\x02"]
    with pytest.raises(ValueError):
        split_message("x", 4)


def test_render_matrix_content():
    base = "https://hs.example"
    assert render({"msgtype": "m.text", "body": "hi"}, media_base=base).text == "hi"
    r = render({"msgtype": "m.emote", "body": "waves"}, media_base=base)
    assert (r.kind, r.text) == ("action", "waves")
    assert render({"msgtype": "m.notice", "body": "n"}, media_base=base).kind == "notice"
    r = render({"msgtype": "m.text", "body": "> <@a:hs> question\n\nanswer",
                "m.relates_to": {"m.in_reply_to": {"event_id": "$x"}}},
               media_base=base, reply_to=("alice", "question " * 20))
    first, second = r.text.split("\n")
    assert first.startswith("> <alice> question question") and first.endswith("…")
    assert second == "answer"
    r = render({"msgtype": "m.text", "body": "* fixed", "m.new_content": {
        "msgtype": "m.text", "body": "fixed"}, "m.relates_to": {"rel_type": "m.replace",
                                                               "event_id": "$x"}},
               media_base=base)
    assert r.text == "* fixed"
    r = render({"msgtype": "m.image", "body": "cat.png", "url": "mxc://hs.example/abc123",
                "info": {"size": 2048}}, media_base=base)
    assert r.text == ("cat.png (2 KB): "
                      "https://hs.example/_matrix/media/v3/download/hs.example/abc123/cat.png")
    r = render({"msgtype": "m.file", "body": "secret.txt", "file": {"url": "mxc://hs/x"}},
               media_base=base)
    assert "encrypted" in r.text and "http" not in r.text
    assert render({"msgtype": "m.image", "body": "x", "url": "https://evil/x"},
                  media_base=base) is None
    assert render({"msgtype": "m.text"}, media_base=base) is None
    assert render({"msgtype": "m.text", "body": "  "}, media_base=base) is None
    assert media_link(base, "mxc://hs/id", "a b.txt").endswith("/hs/id/a%20b.txt")
    assert strip_reply_fallback("> <@a:b> x\n> y\n\nreal") == "real"
    assert strip_reply_fallback("> not a fallback") == "> not a fallback"


def test_nicks_localparts_and_lines():
    assert sanitize_nick("Bob Smith", 30, "[m]") == "Bob_Smith[m]"
    assert sanitize_nick("9lives", 30) == "m9lives"
    assert sanitize_nick("Ünïcode", 30, "[m]") == "ncode[m]"
    assert sanitize_nick("x" * 50, 12, "[m]") == "x" * 9 + "[m]"
    assert sanitize_nick("", 10) == "m"
    assert irc_lower("Nick[A]\\~") == "nick{a}|^"
    assert puppet_localpart("irc_", "Alice") == "irc_alice"
    assert puppet_localpart("irc_", "we|rd[x]") == "irc_we=7crd=7bx=7d"
    m = parse_line(":nick!u@h PRIVMSG #chan :hello :world")
    assert (m.nick, m.command, m.params) == ("nick", "PRIVMSG", ["#chan", "hello :world"])
    m = parse_line("@time=x :srv 005 me NICKLEN=30 :are supported")
    assert m.command == "005" and m.params == ["me", "NICKLEN=30", "are supported"]
    assert parse_line("PING :abc").text == "abc"
