"""Reading history: infinite scroll backwards through /messages, the "new messages" line and
jump to first unread, replies, day separators and a file download."""

from __future__ import annotations

import re

from playwright.async_api import expect

from tests.client import Api
from tests.web.conftest import PASSWORD, login, new_username


async def pair(api: Api, direct: bool = True):
    me_name, other_name = new_username(), new_username()
    me = await api.register(me_name, PASSWORD)
    other = await api.register(other_name, PASSWORD)
    room = await other.create_room(preset="trusted_private_chat", is_direct=direct,
                                   invite=[me.user_id])
    await me.join(room)
    return me, other, room, me_name


async def test_infinite_scroll_back_to_the_start(open_tab, api):
    me, other, room, me_name = await pair(api)
    for i in range(120):
        await other.send_text(room, f"history message {i}")
    tab = await open_tab("tablet")
    page = tab.page
    await login(tab, me_name)
    await page.locator(".room-item").first.click()
    await expect(page.locator(".msg-text", has_text="history message 119")).to_be_visible()
    assert await page.locator(".msg-text", has_text="history message 0").count() == 0
    timeline = page.locator(".timeline")
    for _ in range(30):
        if await page.locator(".timeline-top.done").count():
            break
        shown = await page.locator(".msg-text").count()
        await timeline.evaluate("t => t.scrollTop = 0")
        # The older page has landed (more messages above), or there is nothing older.
        await page.wait_for_function(
            "n => document.querySelector('.timeline-top.done')"
            " || document.querySelectorAll('.msg-text').length > n", arg=shown)
    await expect(page.locator(".timeline-top")).to_have_text("This is the beginning of the conversation.")
    await expect(page.locator(".msg-text", has_text=re.compile(r"^history message 0$"))).to_have_count(1)
    # Every message exactly once, in order.
    texts = await page.locator(".msg-text").all_text_contents()
    numbers = [int(t.rsplit(" ", 1)[1]) for t in texts if t.startswith("history message")]
    assert numbers == list(range(120))
    assert any("/messages" in u for u in tab.requests)
    assert await page.locator(".day-sep", has_text="Today").count() == 1
    assert not tab.errors


async def test_jump_to_first_unread(open_tab, api):
    me, other, room, me_name = await pair(api)
    ids = [await other.send_text(room, f"old {i}") for i in range(5)]
    r = await me.post(f"/rooms/{room}/receipt/m.read/{ids[-1]}")
    assert r.status == 200
    for i in range(80):
        await other.send_text(room, f"unread {i}")
    tab = await open_tab("desktop")
    page = tab.page
    await login(tab, me_name)
    item = page.locator(".room-item").first
    # The server's count: all 80, though only the newest page of history is loaded.
    await expect(item.locator(".badge")).to_have_text("80")
    await item.click()
    await expect(page.locator(".msg-text", has_text="unread 79")).to_be_visible()
    jump = page.get_by_role("button", name="Jump to first unread")
    await expect(jump).to_be_visible()
    await jump.click()
    await expect(page.locator(".unread-line")).to_be_in_viewport()
    await expect(page.locator(".msg-text", has_text=re.compile(r"^unread 0$"))).to_be_in_viewport()
    await expect(jump).to_be_hidden()
    # Reading to the end clears the badge and sends a read receipt the other side can see.
    await page.locator(".timeline").evaluate("t => t.scrollTop = t.scrollHeight")
    await expect(item.locator(".badge")).to_have_count(0)
    assert not tab.errors


async def test_unread_badge_comes_from_the_server(open_tab, api):
    me, other, room, me_name = await pair(api, direct=False)
    tab = await open_tab("desktop")
    page = tab.page
    await login(tab, me_name)
    item = page.locator(".room-item", has_text=other.user_id[1:].split(":")[0]).first
    await expect(item).to_be_visible()
    await expect(item.locator(".badge")).to_have_count(0)
    for i in range(3):
        await other.send_text(room, f"news {i}")
    badge = item.locator(".badge")
    await expect(badge).to_have_text("3")
    await expect(badge).not_to_have_class(re.compile("badge-highlight"))
    # A mention: highlighted, and counted by the server's push rules.
    r = await other.put(f"/rooms/{room}/send/m.room.message/mention1", {
        "msgtype": "m.text", "body": "are you there?",
        "m.mentions": {"user_ids": [me.user_id]}})
    assert r.status == 200
    mention = r.json["event_id"]
    await expect(badge).to_have_text("4")
    await expect(badge).to_have_class(re.compile("badge-highlight"))
    assert (await me.sync())["rooms"]["join"][room]["unread_notifications"] == {
        "notification_count": 4, "highlight_count": 1}
    # Opening the room reads it: the badge goes, the server agrees, a reload keeps it at 0.
    async with page.expect_response(lambda r: r.request.method == "POST" and "/read_markers" in r.url
                                    and mention in (r.request.post_data or "")) as marked:
        await item.click()
    assert (await marked.value).ok
    await expect(page.locator(".msg-text", has_text="are you there?")).to_be_visible()
    await expect(badge).to_have_count(0)
    counts = (await me.sync())["rooms"]["join"][room]["unread_notifications"]
    assert counts == {"notification_count": 0, "highlight_count": 0}
    await page.reload()
    await page.locator(".sidebar .me-name").wait_for()
    await expect(page.locator(".room-item", has_text=other.user_id[1:].split(":")[0])).to_be_visible()
    await expect(page.locator(".room-item .badge")).to_have_count(0)
    assert not tab.errors


async def test_reply_and_file_download(open_tab, api):
    me, other, room, me_name = await pair(api)
    await other.send_text(room, "Which trail do you prefer?")
    tab = await open_tab("desktop", accept_downloads=True)
    page = tab.page
    await login(tab, me_name)
    await page.locator(".room-item").first.click()
    question = page.locator("li.msg", has_text="Which trail")
    await question.hover()
    await question.get_by_role("button", name="Reply").click()
    await expect(page.locator(".composer-context")).to_contain_text("Replying to")
    await page.locator(".composer-input").fill("The ridge one")
    await page.keyboard.press("Enter")
    answer = page.locator("li.msg", has_text="The ridge one")
    await expect(answer.locator(".reply-quote")).to_contain_text("Which trail do you prefer?")
    sync = await other.sync()
    events = sync["rooms"]["join"][room]["timeline"]["events"]
    reply = next(e for e in events if e["content"].get("body") == "The ridge one")
    assert reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]

    # A non-image file is offered as a download, fetched with the access token.
    await page.locator(".composer input[type=file]").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"pack a map\n"}])
    chip = page.get_by_role("button", name="Download notes.txt")
    await expect(chip).to_be_visible()
    async with page.expect_download() as dl:
        await chip.click()
    download = await dl.value
    assert download.suggested_filename == "notes.txt"
    path = await download.path()
    assert open(path, "rb").read() == b"pack a map\n"
    assert not tab.errors


async def test_day_labels(open_tab):
    tab = await open_tab("desktop")
    await tab.page.goto(tab.base_url + "/")
    labels = await tab.page.evaluate("""async () => {
        const i18n = await import('/static/js/i18n.js');
        await i18n.setLanguage('en');
        const f = await import('/static/js/format.js');
        const now = new Date(2024, 2, 14, 12, 0).getTime();  // Thursday 14 March 2024
        const day = 86400000;
        return [f.dayLabel(now - 3600e3, now), f.dayLabel(now - day, now),
                f.dayLabel(now - 3 * day, now), f.dayLabel(new Date(2023, 0, 5).getTime(), now)];
    }""")
    assert labels[0] == "Today" and labels[1] == "Yesterday"
    assert "Monday" in labels[2] and "11" in labels[2]
    assert "2023" in labels[3]
