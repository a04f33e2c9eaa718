"""The `irc:` section of the bridge config (see bridges/irc/README.md for a full example)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bridges.appservice.config import PuppetingSection, Section

_CHANNEL_RE = re.compile(r"^[#&][^\s,\x07:]{1,49}$")
_NETWORK_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


def valid_channel(name: str) -> bool:
    return bool(_CHANNEL_RE.match(name))


class ServerSection(Section):
    host: str
    port: int = Field(6667, ge=1, le=65535)
    tls: bool = False
    tls_verify: bool = True
    password: str | None = None


class ChannelSection(Section):
    channel: str
    # A room ID to bridge to; without one the bridge creates a public portal room with the
    # alias #<alias_prefix><channel name>.
    room: str | None = None

    @field_validator("channel")
    @classmethod
    def _channel(cls, v: str) -> str:
        if not valid_channel(v):
            raise ValueError("must be an IRC channel name like #nexa")
        return v

    @field_validator("room")
    @classmethod
    def _room(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^!\S+:\S+$", v):
            raise ValueError("must be a room ID like !abc:example.org")
        return v


class RateSection(Section):
    # Lines per second per IRC connection, with a burst: servers disconnect flooders.
    lines_per_second: float = Field(2.0, gt=0, le=1000)
    burst: int = Field(5, ge=1, le=1000)


class IrcSection(PuppetingSection):
    server: ServerSection
    # Network ID for third-party lookups and the protocol's instance; a display name for it.
    network: str = "irc"
    network_name: str | None = None
    # The bridge's own connection: listens in every bridged channel (and speaks in relay mode).
    bot_nick: str = "NexaBridge"
    # "puppets": each Nexa user gets an IRC connection with their own nick;
    # "relay": the bot says "<name> text" for everyone (clearly marked as relayed).
    mode: Literal["puppets", "relay"] = "puppets"
    nick_suffix: str = "[m]"
    # IRC users are @<puppet_prefix><nick>; portal rooms #<alias_prefix><channel>.
    puppet_prefix: str = "irc_"
    alias_prefix: str = "irc_"
    channels: list[ChannelSection] = []
    # Joining #<alias_prefix><channel>:server creates a portal for any channel.
    dynamic_channels: bool = True
    max_nick_length: int = Field(30, ge=9, le=64)
    # A message longer than this many IRC lines is cut, with a link to the full text.
    max_lines: int = Field(5, ge=1, le=100)
    rate: RateSection = RateSection()

    @field_validator("network")
    @classmethod
    def _network(cls, v: str) -> str:
        if not _NETWORK_RE.match(v):
            raise ValueError("lowercase letters, digits, '.' and '-' only")
        return v

    @field_validator("bot_nick")
    @classmethod
    def _nick(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]*$", v):
            raise ValueError("not a valid IRC nick")
        return v

    @field_validator("nick_suffix")
    @classmethod
    def _suffix(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9\[\]\\`_^{|}-]{0,8}$", v):
            raise ValueError("at most 8 characters valid in an IRC nick")
        return v

    @model_validator(mode="after")
    def _unique(self) -> "IrcSection":
        seen = set()
        for c in self.channels:
            if c.channel.lower() in seen:
                raise ValueError(f"channel {c.channel} is listed twice")
            seen.add(c.channel.lower())
        return self
