"""Bots on the SDK: the echo/help bot and the reminder bot as application services, the poll
bot as a plain logged-in user, and a bot started through the `nexa-bridge` command."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import yaml

from bridges.bots.examples import echo, poll, reminder
from bridges.bots.sdk import Bot, parse_duration
from tests.bridges.conftest import messages, wait_for_message
from tests.client import Api
from tests.servers import free_port, start_server

ROOT = Path(__file__).resolve().parents[2]


def body_is(text):
    return lambda e: e["content"].get("body") == text


def body_has(text):
    return lambda e: text in e["content"].get("body", "")


async def invite_bot(human, room: str, bot_user: str) -> None:
    r = await human.post(f"/rooms/{room}/invite", {"user_id": bot_user})
    assert r.status == 200, r
    for _ in range(200):
        joined = (await human.get(f"/rooms/{room}/joined_members")).json["joined"]
        if bot_user in joined:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{bot_user} did not join")


def as_bot(module):
    return lambda config: module.create(config)


async def test_echo_bot_as_an_application_service(bridge_stack):
    st = await bridge_stack(as_bot(echo), id="echo", sender="echobot", users=())
    bot_user = st.bridge.user_id
    async with Api(st.srv) as api:
        human = await api.register()
        room = await human.create_room()
        await invite_bot(human, room, bot_user)
        cmd = await human.send_text(room, "!echo hello there")
        reply = await wait_for_message(human, room, body_is("hello there"))
        assert reply["sender"] == bot_user
        assert reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == cmd
        await human.send_text(room, "!ping")
        await wait_for_message(human, room, body_is("pong"))
        await human.send_text(room, "!help")
        helptext = await wait_for_message(human, room, body_has("echo commands:"))
        for name in ("!echo <text>", "!ping", "!help"):
            assert name in helptext["content"]["body"]
        await human.send_text(room, "!frobnicate")
        await wait_for_message(human, room, body_has("Unknown command !frobnicate"))
        await human.send_text(room, "just chatting, no command")
        await human.send_text(room, "!echo last")
        await wait_for_message(human, room, body_is("last"))
        # Exactly one answer per command, none to plain chat or to itself.
        from_bot = [m for m in await messages(human, room) if m["sender"] == bot_user]
        assert len(from_bot) == 5
        assert st.bridge.bot_sdk.history == [
            (room, "echo", ["hello", "there"]), (room, "ping", []), (room, "help", []),
            (room, "echo", ["last"])]


async def test_a_failing_command_answers_and_does_not_block(bridge_stack):
    from bridges.bots.sdk import run_bot

    bot = Bot("fragile")

    @bot.command("boom", help="always fails")
    async def boom(ctx):
        raise ValueError("bug in the command")

    @bot.command("fine")
    async def fine(ctx):
        await ctx.reply("still here")

    st = await bridge_stack(lambda config: run_bot(bot, config), id="fragile",
                            sender="fragilebot", users=())
    async with Api(st.srv) as api:
        human = await api.register()
        room = await human.create_room()
        await invite_bot(human, room, st.bridge.user_id)
        await human.send_text(room, "!boom")
        await wait_for_message(human, room, body_is("Sorry, !boom failed."))
        await human.send_text(room, "!fine")
        await wait_for_message(human, room, body_is("still here"))


async def test_reminder_bot_reminds_even_across_a_restart(bridge_stack):
    st = await bridge_stack(as_bot(reminder), id="remind", sender="remindbot", users=())
    bot_user = st.bridge.user_id
    async with Api(st.srv) as api:
        human = await api.register()
        room = await human.create_room()
        await invite_bot(human, room, bot_user)
        await human.send_text(room, "!remind 1s tea")
        await wait_for_message(human, room, body_has("OK, I'll remind you in 1s: tea"))
        fired = await wait_for_message(human, room, body_is(f"{human.user_id}: reminder: tea"))
        assert fired["content"]["m.mentions"] == {"user_ids": [human.user_id]}
        # Listing and cancelling.
        await human.send_text(room, "!remind 1h call mum")
        ack = await wait_for_message(human, room, body_has("call mum (#"))
        job_id = ack["content"]["body"].rsplit("#", 1)[1].rstrip(")")
        await human.send_text(room, "!reminders")
        listed = await wait_for_message(human, room, body_has(f"#{job_id} in "))
        assert listed["content"]["body"].endswith(": call mum")
        await human.send_text(room, f"!cancel {job_id}")
        await wait_for_message(human, room, body_is(f"Cancelled #{job_id}."))
        await human.send_text(room, "!remind soon things")
        await wait_for_message(human, room, body_has("Usage: !remind"))
        # Durable: scheduled, the bot goes away, the time passes, the bot comes back.
        await human.send_text(room, "!remind 2s stretch")
        await wait_for_message(human, room, body_has("remind you in 2s: stretch"))
        [job] = [j for j in await st.bridge.bot_sdk.pending_jobs("remind", room)
                 if j["payload"]["what"] == "stretch"]
        await st.bridge.stop()
        # Not synchronisation: the due time itself has to pass while the bot is down, so wait
        # for exactly that moment on the clock the bot schedules by.
        while time.time() <= job["due_ts"]:
            await asyncio.sleep(job["due_ts"] - time.time() + 0.01)
        st.bridge = st.factory(st.config)
        await st.bridge.start()
        await wait_for_message(human, room, body_is(f"{human.user_id}: reminder: stretch"))
        reminders = [m for m in await messages(human, room)
                     if m["content"]["body"].endswith("reminder: stretch")]
        assert len(reminders) == 1


async def test_poll_bot_as_a_plain_user(backend, tmp_path):
    from bridges.appservice.config import load_bridge_config

    srv = await start_server(tmp_path, backend)
    runner = None
    try:
        async with Api(srv) as api:
            botacct = await api.register("pollbot", password="bot password 7")
            alice = await api.register()
            bob = await api.register()
            config = load_bridge_config(data={
                "homeserver": {"url": srv.base_url}, "database": str(tmp_path / "poll.db"),
                "bot": {"mode": "client", "user_id": botacct.user_id,
                        "password": "bot password 7", "sync_timeout_ms": 1000}})
            runner = poll.create(config)
            await runner.start()
            await asyncio.wait_for(runner.synced.wait(), 10)
            room = await alice.create_room(preset="public_chat")
            await invite_bot(alice, room, botacct.user_id)
            await bob.join(room)
            await alice.send_text(room, "!poll Lunch? | pizza | sushi | salad")
            await wait_for_message(alice, room, body_has("Poll: Lunch?"))
            await alice.send_text(room, "!vote 2")
            await wait_for_message(alice, room, body_is("Vote recorded: sushi."))
            await bob.send_text(room, "!vote 2")
            await bob.send_text(room, "!vote 9")
            await wait_for_message(alice, room, body_has("Vote with a number from 1 to 3"))
            await bob.send_text(room, "!vote 1")
            await wait_for_message(alice, room, body_is("Vote recorded: pizza."))
            await alice.send_text(room, "!results")
            res = await wait_for_message(alice, room, body_has("2. sushi: 1 vote\n"))
            assert "1. pizza: 1 vote" in res["content"]["body"]
            # The room's poll is state that survives the bot restarting (same session).
            await runner.stop()
            runner = poll.create(config)
            await runner.start()
            await asyncio.wait_for(runner.synced.wait(), 10)
            await alice.send_text(room, "!endpoll")
            final = await wait_for_message(alice, room, body_has("Final results: Lunch?"))
            assert "3. salad: 0 votes" in final["content"]["body"]
            await alice.send_text(room, "!results")
            await wait_for_message(alice, room, body_is("No poll is running here."))
            devices = (await botacct.get("/devices")).json["devices"]
            assert len(devices) == 2  # the registration's and the bot's one login, reused
    finally:
        if runner is not None:
            await runner.stop()
        await srv.destroy()


async def test_nexa_bridge_command_runs_a_bot(backend, tmp_path):
    from tests.bridges.fake_as import write_registration

    port = free_port()
    reg_path = tmp_path / "echo-registration.yaml"
    write_registration(reg_path, id="echo", url=f"http://127.0.0.1:{port}", sender="echobot")
    srv = await start_server(tmp_path, backend, appservices=[str(reg_path)],
                             appservice_sender={"retry_base_ms": 50, "retry_max_ms": 400})
    cfg = tmp_path / "bot.yaml"
    cfg.write_text(yaml.safe_dump({
        "homeserver": {"url": srv.base_url}, "registration": reg_path.name,
        "listen": {"host": "127.0.0.1", "port": port}, "database": "echo.db",
        "logging": {"level": "WARNING"}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridges", "echo-bot", "-c", str(cfg), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"listening on" in line, line
        assert (tmp_path / "echo.db").exists()
        async with Api(srv) as api:
            human = await api.register()
            room = await human.create_room()
            await invite_bot(human, room, f"@echobot:{srv.server_name}")
            await human.send_text(room, "!echo out of process")
            await wait_for_message(human, room, body_is("out of process"))
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await srv.destroy()
    assert proc.returncode == 0
    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridges", "no-such-adapter", "-c", str(cfg), cwd=tmp_path,
        env=env, stderr=asyncio.subprocess.PIPE)
    _, err = await bad.communicate()
    assert bad.returncode == 2 and b"unknown adapter" in err


def test_sdk_pieces():
    assert parse_duration("10m") == 600 and parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800 and parse_duration("1w") == 604800
    for bad in ("", "10", "m", "-5m", "10 minutes", "999w", "0s"):
        assert parse_duration(bad) is None, bad
    bot = Bot("t")

    @bot.command("Remind")
    async def _r(ctx):
        pass

    assert "remind" in bot.commands and "help" in bot.commands
