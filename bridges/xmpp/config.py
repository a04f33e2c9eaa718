"""The `xmpp:` section of the bridge config (bridges/xmpp/README.md has a full example)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from bridges.appservice.config import PuppetingSection, Section
from bridges.xmpp.ids import valid_bare_jid, valid_domain

class ComponentSection(Section):
    # The component's own domain: Nexa users appear as <localpart>@<jid>.
    jid: str
    secret: str = Field(min_length=1)
    # Where Prosody (or any XEP-0114 server) accepts components.
    host: str = "127.0.0.1"
    port: int = Field(5347, ge=1, le=65535)
    # The server's own domain, pinged to prove it processed what was sent before (default:
    # the component's domain without its first label, matrix.example.org -> example.org).
    server_domain: str | None = None

    @field_validator("jid", "server_domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        if v is not None:
            v = v.strip().lower()
            if not valid_domain(v):
                raise ValueError("must be a domain name like matrix.example.org")
        return v

    @model_validator(mode="after")
    def _server(self) -> "ComponentSection":
        if self.server_domain is None:
            parts = self.jid.split(".", 1)
            self.server_domain = parts[1] if len(parts) == 2 else self.jid
        return self


class RoomSection(Section):
    # A MUC (room@conference.example.org) and the room it is bridged to: a room ID or alias;
    # without one the bridge creates a public portal room #<alias_prefix><escaped muc>.
    muc: str
    room: str | None = None

    @field_validator("muc")
    @classmethod
    def _muc(cls, v: str) -> str:
        v = v.strip()
        if not valid_bare_jid(v):
            raise ValueError("must be a MUC address like room@conference.example.org")
        return v.lower()

    @field_validator("room")
    @classmethod
    def _room(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[!#][^:\s]+:\S+$", v):
            raise ValueError("must be a room ID (!abc:example.org) or alias (#name:example.org)")
        return v


class XmppSection(PuppetingSection):
    component: ComponentSection
    rooms: list[RoomSection] = []
    # XMPP users are @<puppet_prefix><escaped JID>; portal rooms #<alias_prefix><escaped MUC>.
    # Both must lie in the registration's namespaces.
    puppet_prefix: str = "xmpp_"
    alias_prefix: str = "xmpp_"
    # Joining #<alias_prefix><escaped MUC>:server bridges that MUC on demand, for MUCs on these
    # services (empty: no portals on demand).
    portal_domains: list[str] = []
    # The bridge's own occupant in every MUC (it receives what the room says).
    bot_nick: str = "Matrix Bridge"
    # Resource of the Nexa users' JIDs (<localpart>@<component>/<resource>).
    resource: str = "nexa"
    # Direct chats: XMPP users can message <localpart>@<component>.
    direct_chats: bool = True
    # Icon (mxc://) for third-party protocol lookups.
    icon: str = ""
    # Messages requested from a MUC's history when rejoining after a gap.
    history_max_stanzas: int = Field(100, ge=0, le=10_000)
    # How long to wait for the XMPP server to answer a join or a ping.
    response_timeout_s: float = Field(15, gt=0)
    # A queued message that failed this many times is dropped (and logged).
    max_attempts: int = Field(20, ge=1)

    @field_validator("portal_domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        out = [d.strip().lower() for d in v]
        for d in out:
            if not valid_domain(d):
                raise ValueError(f"{d!r} is not a domain name")
        return out

    @field_validator("bot_nick", "resource")
    @classmethod
    def _nick(cls, v: str) -> str:
        v = v.strip()
        if not v or len(v) > 64 or any(ord(c) < 32 for c in v):
            raise ValueError("must be 1-64 printable characters")
        return v

    @field_validator("icon")
    @classmethod
    def _icon(cls, v: str) -> str:
        if v and not re.match(r"^mxc://[^/\s]+/[^/\s]+$", v):
            raise ValueError("must be an mxc:// URI")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "XmppSection":
        seen: set[str] = set()
        for r in self.rooms:
            if r.muc in seen:
                raise ValueError(f"rooms: {r.muc} is listed twice")
            seen.add(r.muc)
            if r.muc.split("@", 1)[1] == self.component.jid:
                raise ValueError(f"rooms: {r.muc} is on the bridge's own component domain")
        if self.reconnect.base_ms > self.reconnect.max_ms:
            raise ValueError("reconnect.base_ms must not exceed reconnect.max_ms")
        if self.retry_base_ms > self.retry_max_ms:
            raise ValueError("retry_base_ms must not exceed retry_max_ms")
        return self
