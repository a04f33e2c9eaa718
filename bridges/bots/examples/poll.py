"""A poll bot, one poll per room kept in the room's bot state:
`!poll Lunch? | pizza | sushi`, `!vote 2`, `!results`, `!endpoll`."""

from __future__ import annotations

from bridges.bots.sdk import Bot, Context, run_bot


def tally(poll: dict) -> str:
    counts = [0] * len(poll["options"])
    for choice in poll["votes"].values():
        counts[choice] += 1
    lines = [poll["question"]]
    for i, (opt, n) in enumerate(zip(poll["options"], counts), 1):
        lines.append(f"  {i}. {opt}: {n} vote{'s' if n != 1 else ''}")
    return "\n".join(lines)


def build() -> Bot:
    bot = Bot("poll")

    @bot.command("poll", help="start a poll", usage="<question> | <option> | <option> ...")
    async def poll(ctx: Context) -> None:
        parts = [p.strip() for p in ctx.rest.split("|")]
        if len(parts) < 3 or not all(parts) or len(parts) > 21:
            await ctx.reply(f"Usage: {bot.prefix}poll <question> | <option> | <option> (2-20 "
                            "options)", notice=True)
            return
        if await ctx.state.get("poll"):
            await ctx.reply(f"A poll is already running; {bot.prefix}endpoll first.", notice=True)
            return
        await ctx.state.set("poll", {"question": parts[0], "options": parts[1:], "votes": {},
                                     "by": ctx.sender})
        options = "\n".join(f"  {i}. {o}" for i, o in enumerate(parts[1:], 1))
        await ctx.reply(f"Poll: {parts[0]}\n{options}\nVote with {bot.prefix}vote <number>.")

    @bot.command("vote", help="vote in the running poll", usage="<number>")
    async def vote(ctx: Context) -> None:
        current = await ctx.state.get("poll")
        if not current:
            await ctx.reply("No poll is running here.", notice=True)
            return
        try:
            choice = int(ctx.args[0]) - 1
        except (IndexError, ValueError):
            choice = -1
        if not 0 <= choice < len(current["options"]):
            await ctx.reply(f"Vote with a number from 1 to {len(current['options'])}.",
                            notice=True)
            return
        current["votes"][ctx.sender] = choice
        await ctx.state.set("poll", current)
        await ctx.reply(f"Vote recorded: {current['options'][choice]}.", notice=True)

    @bot.command("results", help="show the running poll's votes")
    async def results(ctx: Context) -> None:
        current = await ctx.state.get("poll")
        await ctx.reply(tally(current) if current else "No poll is running here.", notice=True)

    @bot.command("endpoll", help="close the running poll")
    async def endpoll(ctx: Context) -> None:
        current = await ctx.state.get("poll")
        if not current:
            await ctx.reply("No poll is running here.", notice=True)
            return
        await ctx.state.delete("poll")
        await ctx.reply("Final results: " + tally(current))

    return bot


def create(config):
    return run_bot(build(), config)
