"""A small bot SDK on the bridge base: command routing, event handlers, replies, per-room state
and durable scheduled jobs; a bot runs as an application service or as a logged-in user."""

from bridges.bots.sdk import Bot, BotSection, Context, RoomState, parse_duration, run_bot
from bridges.bots.transports import AppServiceTransport, ClientTransport

__all__ = ["AppServiceTransport", "Bot", "BotSection", "ClientTransport", "Context", "RoomState",
           "parse_duration", "run_bot"]
