"""A reminder bot: `!remind 10m tea` reminds you in ten minutes, even across restarts.

`!reminders` lists yours in this room, `!cancel <id>` removes one.
"""

from __future__ import annotations

import time

from bridges.bots.sdk import Bot, Context, format_duration, parse_duration, run_bot, stable_txn


def build() -> Bot:
    bot = Bot("reminder")

    @bot.command("remind", help="remind you of something later", usage="<when: 10m, 1h30m, 2d> <what>")
    async def remind(ctx: Context) -> None:
        when, _, what = ctx.rest.partition(" ")
        seconds = parse_duration(when)
        if seconds is None or not what.strip():
            await ctx.reply(f"Usage: {bot.prefix}remind <when, e.g. 10m or 1h30m> <what>",
                            notice=True)
            return
        job_id = await bot.schedule(time.time() + seconds, "remind", ctx.room_id,
                                    {"user": ctx.sender, "what": what.strip(),
                                     "event_id": ctx.event_id},
                                    source_event=ctx.event_id)
        await ctx.reply(f"OK, I'll remind you in {format_duration(seconds)}: {what.strip()} "
                        f"(#{job_id})", notice=True)

    @bot.command("reminders", help="list your reminders in this room")
    async def reminders(ctx: Context) -> None:
        mine = [j for j in await bot.pending_jobs("remind", ctx.room_id)
                if j["payload"]["user"] == ctx.sender]
        if not mine:
            await ctx.reply("You have no reminders here.", notice=True)
            return
        now = time.time()
        lines = [f"#{j['id']} in {format_duration(max(0, j['due_ts'] - now))}: "
                 f"{j['payload']['what']}" for j in mine]
        await ctx.reply("\n".join(lines), notice=True)

    @bot.command("cancel", help="cancel one of your reminders", usage="<id>")
    async def cancel(ctx: Context) -> None:
        wanted = ctx.args[0].lstrip("#") if ctx.args else ""
        mine = {str(j["id"]): j for j in await bot.pending_jobs("remind", ctx.room_id)
                if j["payload"]["user"] == ctx.sender}
        if wanted not in mine:
            await ctx.reply("No such reminder of yours here.", notice=True)
            return
        await bot.cancel_job(int(wanted))
        await ctx.reply(f"Cancelled #{wanted}.", notice=True)

    @bot.job("remind")
    async def fire(bot: Bot, job: dict) -> None:
        p = job["payload"]
        await bot.send(job["room_id"], {
            "msgtype": "m.text", "body": f"{p['user']}: reminder: {p['what']}",
            "m.mentions": {"user_ids": [p["user"]]},
            "m.relates_to": {"m.in_reply_to": {"event_id": p["event_id"]}},
        }, txn_id=stable_txn("reminder", str(job["id"]), p["event_id"]))

    return bot


def create(config):
    return run_bot(build(), config)
