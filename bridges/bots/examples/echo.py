"""An echo bot: `!echo <text>` says it back, `!ping` answers pong, `!help` lists commands."""

from __future__ import annotations

from bridges.bots.sdk import Bot, Context, run_bot


def build() -> Bot:
    bot = Bot("echo")

    @bot.command("echo", help="say the text back", usage="<text>")
    async def echo(ctx: Context) -> None:
        await ctx.reply(ctx.rest if ctx.rest else "Nothing to echo.")

    @bot.command("ping", help="check that the bot is alive")
    async def ping(ctx: Context) -> None:
        await ctx.reply("pong", notice=True)

    return bot


def create(config):
    return run_bot(build(), config)
