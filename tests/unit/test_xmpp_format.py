"""The XMPP bridge's pure parts: names on both sides (JID escaping), message bodies between
Matrix HTML and XHTML-IM, replies, emotes, attachments, and reading/writing stanzas."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.xmpp.format import (XHTML_NS, cut_ranges, edit_content, html_to_xhtml,
                                 matrix_to_xmpp, media_url, reply_fallback,
                                 strip_matrix_reply_fallback, xhtml_to_html, xml_safe,
                                 xmpp_to_matrix)
from bridges.xmpp.ids import (jid_matrix_user, jid_of_puppet, matrix_escape, matrix_unescape,
                              matrix_user_jid, muc_of_portal_alias, occupant_puppet_localpart,
                              portal_alias, puppet_localpart, sanitize_nick, valid_bare_jid,
                              xep0106_escape, xep0106_unescape)
from bridges.xmpp.stanzas import (join_presence, message, parse_message, parse_presence,
                                  parse_stamp, format_stamp)

HS = "example.org"
COMPONENT = "matrix.example.org"
LOCALPART_RE = re.compile(r"^[a-z0-9._=/+\-]+$")


# --- names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("jid, escaped", [
    ("bob@localhost", "bob=40localhost"),
    ("Bob_Smith@Example.ORG", "_bob___smith=40_example._o_r_g"),
    ("ä@x.org", "=c3=a4=40x.org"),
    ("a=b+c/d", "a=3db=2bc=2fd"),
])
def test_matrix_escaping(jid, escaped):
    assert matrix_escape(jid) == escaped
    assert matrix_unescape(escaped) == jid
    assert LOCALPART_RE.match(escaped)


@given(st.text(min_size=1, max_size=60))
@settings(max_examples=300)
def test_matrix_escaping_round_trips(s):
    out = matrix_escape(s)
    assert LOCALPART_RE.match(out) and "/" not in out
    assert matrix_unescape(out) == s


@pytest.mark.parametrize("bad", ["_", "_1", "=4", "=zz", "=61", "A", "ü", "a b"])
def test_matrix_unescape_refuses_what_escaping_never_makes(bad):
    with pytest.raises(ValueError):
        matrix_unescape(bad)


def test_puppets_and_portals():
    uid = f"@xmpp_{puppet_localpart('', 'bob@localhost')}:{HS}"
    assert uid == "@xmpp_bob=40localhost:example.org"
    assert jid_of_puppet("xmpp_", uid, HS) == "bob@localhost"
    assert jid_of_puppet("xmpp_", uid, "other.org") is None
    assert jid_of_puppet("irc_", uid, HS) is None
    assert jid_of_puppet("xmpp_", "@xmpp_=zz:example.org", HS) is None
    assert jid_of_puppet("xmpp_", "@xmpp_bob:example.org", HS) is None  # not a bare JID
    # Only the canonical form of a JID is a puppet (no two puppets for one person).
    assert jid_of_puppet("xmpp_", "@xmpp__bob=40localhost:example.org", HS) is None
    occ = occupant_puppet_localpart("xmpp_", "room@muc.x", "id:abc")
    assert occ.startswith("xmpp_room=40muc.x/") and LOCALPART_RE.match(occ)
    assert occ == occupant_puppet_localpart("xmpp_", "room@muc.x", "id:abc")
    assert occ != occupant_puppet_localpart("xmpp_", "room@muc.x", "id:abd")
    assert jid_of_puppet("xmpp_", f"@{occ}:{HS}", HS) is None
    alias = portal_alias("xmpp_", "room@muc.x", HS)
    assert alias == "#xmpp_room=40muc.x:example.org"
    assert muc_of_portal_alias("xmpp_", alias, HS) == "room@muc.x"
    assert muc_of_portal_alias("xmpp_", "#xmpp_nope:example.org", HS) is None
    assert muc_of_portal_alias("xmpp_", "#other:example.org", HS) is None


@pytest.mark.parametrize("node, escaped", [
    ("alice", "alice"),
    ("a/b", "a\\2fb"),
    ("carol@other.org:8448", "carol\\40other.org\\3a8448"),
    ("x\\20y", "x\\5c20y"),  # a backslash that would read as an escape is escaped itself
    ("x\\y", "x\\y"),
])
def test_xep0106(node, escaped):
    assert xep0106_escape(node) == escaped
    assert xep0106_unescape(escaped) == node


@pytest.mark.parametrize("user_id, jid", [
    ("@alice:example.org", "alice@matrix.example.org"),
    ("@a/b:example.org", "a\\2fb@matrix.example.org"),
    ("@carol:other.org", "carol\\40other.org@matrix.example.org"),
    ("@dave:localhost:8448", "dave\\40localhost\\3a8448@matrix.example.org"),
])
def test_nexa_users_on_xmpp(user_id, jid):
    assert matrix_user_jid(user_id, HS, COMPONENT) == jid
    assert valid_bare_jid(jid)
    assert jid_matrix_user(jid, HS, COMPONENT) == user_id
    assert jid_matrix_user(jid + "/nexa", HS, COMPONENT) == user_id


@pytest.mark.parametrize("jid", ["alice@elsewhere.org", "@matrix.example.org",
                                 "a b@matrix.example.org", "x\\40@matrix.example.org",
                                 "matrix.example.org"])
def test_not_nexa_users(jid):
    assert jid_matrix_user(jid, HS, COMPONENT) is None


def test_nicks():
    assert sanitize_nick("  Alice \n Liddell\x00 ", "alice") == "Alice Liddell"
    assert sanitize_nick("\u200b\x07", "alice") == "alice"
    assert sanitize_nick(None, "bob") == "bob"
    assert len(sanitize_nick("x" * 200, "y")) == 48


# --- Matrix -> XMPP ----------------------------------------------------------------------------

def _xhtml(html: str) -> str | None:
    el = html_to_xhtml(html)
    if el is None:
        return None
    text = ET.tostring(el, encoding="unicode")
    return re.sub(r' xmlns:\w+="[^"]+"|(?<=<)\w+:|(?<=</)\w+:', "", text)


def test_html_to_xhtml_whitelist():
    assert _xhtml("<b>bold</b> <i>it</i> <code>c</code>") == \
        "<body><strong>bold</strong> <em>it</em> <code>c</code></body>"
    assert _xhtml('<a href="https://x.org/?a=1&amp;b=2">l</a>') == \
        '<body><a href="https://x.org/?a=1&amp;b=2">l</a></body>'
    assert _xhtml('<a href="javascript:alert(1)">l</a>') is None  # only its text is left
    assert _xhtml("<script>alert(1)</script><b>x</b>") == "<body><strong>x</strong></body>"
    assert _xhtml("<mx-reply><blockquote>old</blockquote></mx-reply><em>new</em>") == \
        "<body><em>new</em></body>"
    assert _xhtml('<font color="#ff0000">red</font>') == \
        '<body><span style="color: #ff0000">red</span></body>'
    assert _xhtml('<span data-mx-color="red; x">x</span>') is None  # bad colour: text only
    assert _xhtml("line<br>two") == "<body>line<br />two</body>"
    assert _xhtml("<del>gone</del>") == \
        '<body><span style="text-decoration: line-through">gone</span></body>'
    assert _xhtml("just text &amp; entities") is None
    assert _xhtml("<p>unclosed <b>bold") == "<body><p>unclosed <strong>bold</strong></p></body>"
    assert _xhtml('<img src="mxc://x/y" alt="pic"> <b>b</b>') == \
        "<body>pic <strong>b</strong></body>"


def test_matrix_to_xmpp_bodies():
    out = matrix_to_xmpp({"msgtype": "m.text", "body": "hi\x00\x07 there"}, "http://hs")
    assert out == {"body": "hi there", "xhtml": None, "oob": None}
    out = matrix_to_xmpp({"msgtype": "m.emote", "body": "waves", "format":
                          "org.matrix.custom.html", "formatted_body": "<b>waves</b>"}, "http://hs")
    assert out["body"] == "/me waves"
    assert out["xhtml"].text == "/me " and out["xhtml"][0].tag == f"{{{XHTML_NS}}}strong"
    out = matrix_to_xmpp({"msgtype": "m.text", "body": "> <@a:x> old\n> more\n\nnew",
                          "m.relates_to": {"m.in_reply_to": {"event_id": "$e"}}}, "http://hs")
    assert out["body"] == "new"
    assert matrix_to_xmpp({"msgtype": "m.text", "body": "  "}, "http://hs") is None
    assert matrix_to_xmpp({"msgtype": "m.text"}, "http://hs") is None


def test_attachments_become_links():
    out = matrix_to_xmpp({"msgtype": "m.image", "body": "cat photo.png",
                          "url": "mxc://example.org/AbC123"}, "https://hs.example.org/")
    url = "https://hs.example.org/_matrix/media/v3/download/example.org/AbC123/cat%20photo.png"
    assert out == {"body": url, "xhtml": None, "oob": url}
    out = matrix_to_xmpp({"msgtype": "m.file", "body": "see this", "filename": "a.pdf",
                          "url": "mxc://example.org/x"}, "http://hs")
    assert out["body"] == "see this\nhttp://hs/_matrix/media/v3/download/example.org/x/a.pdf"
    assert matrix_to_xmpp({"msgtype": "m.file", "body": "f", "url": "http://evil/x"},
                          "http://hs") is None
    assert media_url("mxc://a/../b", "http://hs") is None


def test_reply_fallback_and_edits():
    assert reply_fallback("Bob", "one\ntwo") == "> Bob:\n> one\n> two\n"
    assert strip_matrix_reply_fallback("> quoted\nnot a fallback") == "> quoted\nnot a fallback"
    edit = edit_content({"msgtype": "m.text", "body": "new"}, "$orig")
    assert edit["body"] == "* new" and edit["m.new_content"] == {"msgtype": "m.text",
                                                                  "body": "new"}
    assert edit["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$orig"}


# --- XMPP -> Matrix ----------------------------------------------------------------------------

def test_xmpp_to_matrix():
    assert xmpp_to_matrix("/me waves") == {"msgtype": "m.emote", "body": "waves"}
    assert xmpp_to_matrix("/mention") == {"msgtype": "m.text", "body": "/mention"}
    quoted = "> Bob:\n> old\n"
    assert xmpp_to_matrix(quoted + "new", fallback=[(0, len(quoted))])["body"] == "new"
    assert cut_ranges("abcdef", [(1, 3), (4, 99)]) == "ad"
    assert cut_ranges("abc", [(5, 9), (2, 1)]) == "abc"
    oob = xmpp_to_matrix("https://x.org/f.png", oob_url="https://x.org/f.png")
    assert oob["body"] == "https://x.org/f.png"
    assert oob["formatted_body"] == '<a href="https://x.org/f.png">https://x.org/f.png</a>'
    assert "formatted_body" not in xmpp_to_matrix("x", oob_url="javascript:alert(1)")


def test_xhtml_to_matrix_html():
    body = ET.fromstring(
        f'<body xmlns="{XHTML_NS}"><strong>b</strong> <span style="font-style: italic; '
        'color: #00ff00">g</span> <a href="https://x.org">l</a> <a href="data:x">d</a> '
        '&lt;tag&gt;<br/><img alt="pic" src="x"/><table><tr><td>cell</td></tr></table></body>')
    assert xhtml_to_html(body) == (
        '<strong>b</strong> <em><span data-mx-color="#00ff00">g</span></em> '
        '<a href="https://x.org">l</a> d &lt;tag&gt;<br>piccell')
    plain = ET.fromstring(f'<body xmlns="{XHTML_NS}">only text</body>')
    assert xhtml_to_html(plain) is None
    quoted = ET.fromstring(f'<body xmlns="{XHTML_NS}"><blockquote>old</blockquote>'
                           '<em>new</em></body>')
    assert xhtml_to_html(quoted, drop_leading_quote=True) == "<em>new</em>"
    me = ET.fromstring(f'<body xmlns="{XHTML_NS}">/me <em>waves</em></body>')
    assert xhtml_to_html(me, strip_me=True) == "<em>waves</em>"


# --- stanzas -----------------------------------------------------------------------------------

def test_message_round_trip():
    xhtml = html_to_xhtml("<b>hi</b>")
    el = message(frm="alice@m.x/nexa", to="room@muc.x", type="groupchat", id="nx1",
                 body="> Bob:\n> q\nhi\x01", xhtml=xhtml, replace_id="nx0",
                 reply=("room@muc.x/Bob", "sid1"), fallback_end=12, oob="https://f/x")
    back = parse_message(ET.fromstring(ET.tostring(el)))
    assert back.frm == "alice@m.x/nexa" and back.type == "groupchat" and back.id == "nx1"
    assert back.body == "> Bob:\n> q\nhi"
    assert back.origin_id == "nx1" and back.replace_id == "nx0"
    assert (back.reply_to, back.reply_id, back.reply_fallback) == ("room@muc.x/Bob", "sid1",
                                                                   [(0, 12)])
    assert back.oob_url == "https://f/x"
    assert xhtml_to_html(back.xhtml) == "<strong>hi</strong>"


def test_parse_muc_stanzas():
    msg = parse_message(ET.fromstring(
        '<message xmlns="jabber:component:accept" from="r@muc.x/Bob" to="b@m.x/bridge" '
        'type="groupchat" id="c1"><body>hi</body>'
        '<stanza-id xmlns="urn:xmpp:sid:0" by="r@muc.x" id="S1"/>'
        '<stanza-id xmlns="urn:xmpp:sid:0" by="evil@x" id="S2"/>'
        '<delay xmlns="urn:xmpp:delay" from="r@muc.x" stamp="2024-01-02T03:04:05Z"/>'
        '<occupant-id xmlns="urn:xmpp:occupant-id:0" id="occ"/>'
        '<x xmlns="http://jabber.org/protocol/muc#user"><item jid="bob@x/res"/></x></message>'))
    assert msg.stanza_ids == {"r@muc.x": "S1", "evil@x": "S2"}
    assert msg.delay_ms == 1704164645000 and msg.occupant_id == "occ"
    assert msg.real_jid == "bob@x/res" and msg.subject is None
    pres = parse_presence(ET.fromstring(
        '<presence xmlns="jabber:client" from="r@muc.x/Bob" to="b@m.x/bridge" '
        'type="unavailable"><x xmlns="http://jabber.org/protocol/muc#user">'
        '<item nick="Bobby" role="participant"/><status code="303"/><status code="110"/></x>'
        '</presence>'))
    assert pres.type == "unavailable" and pres.status_codes == {"303", "110"}
    assert pres.new_nick == "Bobby" and pres.muc_user
    err = parse_presence(ET.fromstring(
        '<presence xmlns="jabber:component:accept" type="error" from="r@muc.x/A" id="j1">'
        '<error type="cancel"><conflict xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">taken</text></error></presence>'))
    assert err.error.condition == "conflict" and err.error.text == "taken"


def test_join_presence_and_stamps():
    el = join_presence(frm="a@m.x/nexa", to="r@muc.x/A", id="j", maxstanzas=50,
                       since_ms=1704164645000)
    hist = el.find("{http://jabber.org/protocol/muc}x/{http://jabber.org/protocol/muc}history")
    assert hist.get("maxstanzas") == "50" and hist.get("since") == "2024-01-02T03:04:05Z"
    assert parse_stamp(format_stamp(1704164645000)) == 1704164645000
    assert parse_stamp("2024-01-02T03:04:05.250+01:00") == 1704161045250
    assert parse_stamp("yesterday") is None and parse_stamp(None) is None
    assert xml_safe("a\x00b\ufffec\U0001F600") == "ab" + "c\U0001F600"


def test_huge_xmpp_bodies_fit_in_a_matrix_event():
    out = xmpp_to_matrix("😀" * 50_000)
    assert len(out["body"].encode()) <= 24 * 1024 + 3 and out["body"].endswith("…")
