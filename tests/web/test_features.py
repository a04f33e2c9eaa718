"""The rest of the messenger: public directory, invitations, groups, profile and avatar,
language, privacy (enforced by the server), muting and notifications, help, and the error
messages on the sign-in pages."""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import expect

from tests.client import Api
from tests.servers import start_server
from tests.web.conftest import PASSWORD, login, new_username, register
from tests.web.test_chat import _png


def saved(page, kind: str):
    """The page's PUT of account data `kind`: a setting is stored once the server answers it."""
    return page.expect_response(
        lambda r: r.request.method == "PUT" and r.url.endswith(f"/account_data/{kind}"))


async def people(api: Api, n: int = 2):
    names = [new_username() for _ in range(n)]
    users = [await api.register(name, PASSWORD) for name in names]
    return names, users


async def test_directory_invites_and_groups(open_tab, api):
    (me_name, other_name), (me, other) = await people(api)
    public = await other.create_room(preset="public_chat", name="Board games",
                                     topic="Tuesdays at eight", visibility="public")
    await other.send_text(public, "Who brings Carcassonne?")
    private = await other.create_room(preset="private_chat", name="Secret plans",
                                      invite=[me.user_id])
    tab = await open_tab("desktop")
    page = tab.page
    await login(tab, me_name)

    # The invitation: visible in the list, declined, gone.
    invite = page.locator(".room-item.invite", has_text="Secret plans")
    await expect(invite).to_contain_text(f"Invitation from {other_name}")
    await invite.click()
    await expect(page.get_by_role("heading", name="You’re invited to Secret plans")).to_be_visible()
    await page.get_by_role("button", name="Decline").click()
    await expect(page.locator(".room-item", has_text="Secret plans")).to_have_count(0)
    r = await me.get(f"/rooms/{private}/state/m.room.member/{me.user_id}")
    assert r.json["membership"] == "leave"

    # The public directory: search, join, read.
    await page.get_by_role("link", name="Explore", exact=True).click()
    await page.get_by_label("Search rooms").fill("board")
    card = page.locator(".directory-item", has_text="Board games")
    await expect(card).to_contain_text("Tuesdays at eight")
    await card.get_by_role("button", name="Join").click()
    await expect(page.locator(".room-title")).to_have_text("Board games")
    await expect(page.locator(".msg-text", has_text="Who brings Carcassonne?")).to_be_visible()

    # A new group with an invitation, from the UI.
    await page.get_by_role("button", name="New group").click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_label("Name").fill("Book club")
    await dialog.get_by_label("Topic (optional)").fill("One book a month")
    await dialog.get_by_label("Invite people (optional)").fill(other_name)
    await dialog.get_by_role("option", name=re.compile(other_name)).click()
    await expect(dialog.locator(".chips")).to_contain_text(other_name)
    await dialog.get_by_role("button", name="Create").click()
    await expect(page.locator(".room-title")).to_have_text("Book club")
    await expect(page.locator(".room-sub")).to_contain_text("One book a month")
    sync = await other.sync()
    invited = sync["rooms"]["invite"]
    assert any(any(e.get("content", {}).get("name") == "Book club" for e in r["invite_state"]["events"])
               for r in invited.values())

    # Muting a room from its header is remembered in settings.
    await page.get_by_role("button", name="Mute notifications").click()
    await expect(page.get_by_role("button", name="Unmute notifications")).to_have_attribute("aria-pressed", "true")
    await page.get_by_role("link", name="Settings").click()
    await expect(page.locator(".muted-list")).to_contain_text("Book club")
    # ... and the server knows it: a room push rule without actions, so the room's messages no
    # longer count as unread for this account, in every client.
    book_club = next(rid for rid, r in invited.items() if any(
        e.get("content", {}).get("name") == "Book club" for e in r["invite_state"]["events"]))
    for _ in range(200):  # the rule is stored right after the setting; poll with a deadline
        rule = await me.get(f"/pushrules/global/room/{book_club}")
        if rule.status == 200:
            break
        await asyncio.sleep(0.05)
    assert (rule.status, rule.json.get("actions")) == (200, []), rule
    await other.join(book_club)
    await other.send_text(book_club, "quiet please")
    counts = (await me.sync())["rooms"]["join"][book_club]["unread_notifications"]
    assert counts == {"notification_count": 0, "highlight_count": 0}
    assert not tab.errors


async def test_profile_name_and_avatar(open_tab, api):
    (me_name, _), (me, other) = await people(api)
    room = await other.create_room(preset="trusted_private_chat", invite=[me.user_id], is_direct=True)
    await me.join(room)
    tab = await open_tab("phone")
    page = tab.page
    await login(tab, me_name)
    await page.goto(f"{tab.base_url}/#/profile")
    await page.get_by_label("Display name").fill("Zed Tester")
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator(".toast")).to_contain_text("Profile saved.")
    r = await other.get(f"/profile/{me.user_id}/displayname")
    assert r.json["displayname"] == "Zed Tester"
    await page.locator(".profile-top input[type=file]").set_input_files(
        files=[{"name": "me.png", "mimeType": "image/png", "buffer": _png(40, 40)}])
    await expect(page.locator(".profile-avatar img.avatar-img")).to_have_attribute("src", re.compile("^blob:"))
    r = await other.get(f"/profile/{me.user_id}")
    assert r.json["avatar_url"].startswith("mxc://")
    await tab.no_horizontal_scroll()
    await tab.screenshot("phone-profile")

    # Log out: back to the sign-in page, and the session is gone on the server too.
    token = await page.evaluate("JSON.parse(localStorage.getItem('nexa.session')).accessToken")
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert await page.evaluate("localStorage.getItem('nexa.session')") is None
    r = await api.request("GET", "/account/whoami", token=token)
    assert r.status == 401
    assert not tab.errors


async def test_language_privacy_and_help(open_tab, api):
    (me_name, stranger_name), (me, stranger) = await people(api)
    tab = await open_tab("desktop")
    page = tab.page
    await login(tab, me_name)
    await page.goto(f"{tab.base_url}/#/settings")

    # Privacy: hidden from search and invitations only from people I share a room with —
    # the server enforces both.
    # One save at a time: two PUTs in flight together may reach the server in either order.
    async with saved(page, "im.nexa.privacy") as put:
        await page.get_by_label("Let people find me in search").uncheck()
    assert (await put.value).ok
    async with saved(page, "im.nexa.privacy") as put:
        await page.get_by_label("Only people I share a room with").check()
    assert (await put.value).ok
    await expect(page.get_by_label("Only people I share a room with")).to_be_checked()
    r = await me.get(f"/user/{me.user_id}/account_data/im.nexa.privacy")
    assert r.json == {"searchable": False, "invite_policy": "shared_rooms"}
    r = await stranger.post("/user_directory/search", {"search_term": me_name})
    assert all(u["user_id"] != me.user_id for u in r.json["results"])
    room = await stranger.create_room(preset="private_chat")
    r = await stranger.post(f"/rooms/{room}/invite", {"user_id": me.user_id})
    assert r.status == 403
    async with saved(page, "im.nexa.settings") as put:
        await page.get_by_label("Send read receipts").uncheck()
    assert (await put.value).ok
    r = await me.get(f"/user/{me.user_id}/account_data/im.nexa.settings")
    assert r.json["send_receipts"] is False

    # Language: Russian everywhere, kept across a reload.
    await page.get_by_label("Language").select_option("ru")
    await expect(page.get_by_role("heading", name="Настройки")).to_be_visible()
    await expect(page.get_by_role("link", name="Помощь")).to_be_visible()
    await expect(page.locator("html")).to_have_attribute("lang", "ru")
    await page.reload()
    await expect(page.get_by_role("heading", name="Настройки")).to_be_visible()
    await tab.screenshot("desktop-settings-ru")
    await page.get_by_role("link", name="Помощь").click()
    await expect(page.get_by_role("heading", name="Помощь", exact=True)).to_be_visible()
    await page.get_by_label("Язык").count()  # not on this page
    await page.goto(f"{tab.base_url}/#/settings")
    await page.get_by_label("Язык").select_option("en")
    await expect(page.get_by_role("heading", name="Settings")).to_be_visible()

    # Help centre.
    await page.get_by_role("link", name="Help", exact=True).click()
    item = page.locator("details.faq", has_text="Are unsent messages kept?")
    await item.locator("summary").click()
    await expect(item.locator("p")).to_contain_text("saved per conversation")
    assert not tab.errors
    _ = stranger_name


async def test_browser_notification_for_a_direct_message(open_tab, api):
    (me_name, other_name), (me, other) = await people(api)
    room = await other.create_room(preset="trusted_private_chat", is_direct=True, invite=[me.user_id])
    await me.join(room)
    # A second conversation, never muted: its message shows that later news was processed.
    loud = await other.create_room(preset="trusted_private_chat", is_direct=True, invite=[me.user_id])
    await me.join(loud)
    await me.put(f"/user/{me.user_id}/account_data/m.direct", {other.user_id: [room, loud]})
    tab = await open_tab("desktop", permissions=["notifications"])
    page = tab.page
    await page.add_init_script("""
        window.__shown = [];
        const Real = window.Notification;
        window.Notification = class extends Real {
          constructor(title, opts) { super(title, opts); window.__shown.push({ title, body: opts && opts.body }); }
        };
        Object.defineProperty(window.Notification, 'permission', { get: () => Real.permission });
        window.Notification.requestPermission = (...a) => Real.requestPermission(...a);
    """)
    await login(tab, me_name)
    await page.goto(f"{tab.base_url}/#/settings")
    # Stored before the ping is sent: the sync that brings the ping also brings the server's
    # copy of the settings, so it cannot arrive later and undo the mute below.
    async with saved(page, "im.nexa.settings") as put:
        await page.get_by_label("Browser notifications").check()
    assert (await put.value).ok
    await expect(page.get_by_label("Browser notifications")).to_be_checked()
    await other.send_text(room, "ping from a friend")
    await page.wait_for_function("() => window.__shown.length > 0")
    shown = await page.evaluate("window.__shown")
    assert shown[0] == {"title": other_name, "body": "ping from a friend"}
    # Muted rooms stay quiet.
    await page.goto(f"{tab.base_url}/#/room/{room}")
    await page.get_by_role("button", name="Mute notifications").click()
    await page.goto(f"{tab.base_url}/#/settings")
    await other.send_text(room, "second ping")
    # Sent after the muted one, so by the time it is shown the muted one has been handled too.
    await other.send_text(loud, "third ping")
    await page.wait_for_function("() => window.__shown.some((n) => n.body === 'third ping')")
    bodies = [n["body"] for n in await page.evaluate("window.__shown")]
    assert bodies == ["ping from a friend", "third ping"], bodies
    assert not tab.errors


async def test_sign_in_errors(open_tab, api, tmp_path, backend):
    (taken,), _ = await people(api, 1)
    tab = await open_tab("phone")
    page = tab.page
    # Registration: taken name with suggestions, weak password, mismatch.
    await page.goto(f"{tab.base_url}/#/register")
    await page.get_by_label("Username").fill(taken)
    await expect(page.get_by_text("That username is taken.")).to_be_visible()
    suggestion = page.locator(".suggestions .chip").first
    await expect(suggestion).to_be_visible()
    picked = await suggestion.text_content()
    await suggestion.click()
    await expect(page.get_by_label("Username")).to_have_value(picked)
    await expect(page.get_by_text(f"{picked} is available.")).to_be_visible()
    # The rules come from the server's policy: the hint says what a password needs.
    hint = page.locator(".pass-problem")
    await expect(hint).to_have_text(
        "At least 8 characters, with a digit and a lowercase letter; longer is stronger.")
    await page.get_by_label("Password", exact=True).fill("password1")
    await expect(page.locator(".strength-label")).to_have_text(re.compile("weak", re.I))
    await expect(hint).to_have_text("That is one of the most common passwords. Choose another.")
    await page.get_by_label("Repeat password").fill("password1")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator(".form-error")).to_contain_text("most common passwords")
    await page.get_by_label("Password", exact=True).fill("LONGER BUT NO")
    await expect(hint).to_have_text("The password needs a digit and a lowercase letter.")
    await expect(page.locator(".strength-label")).to_have_text(re.compile("weak", re.I))
    await page.get_by_label("Password", exact=True).fill("Long-and-unusual-77")
    await page.get_by_label("Repeat password").fill("Long-and-unusual-78")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator(".form-error")).to_have_text("The passwords don’t match.")
    await tab.screenshot("phone-register")

    # Log in: wrong password, then rate limited by a strict server.
    await page.goto(f"{tab.base_url}/#/login")
    await page.get_by_label("Username").fill(taken)
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator(".form-error")).to_have_text("Wrong username or password.")

    strict = await start_server(tmp_path, backend, limits={"login": {"per_second": 0.01, "burst": 1}})
    try:
        page2 = (await open_tab("phone")).page
        await page2.goto(f"{strict.base_url}/#/login")
        for _ in range(2):
            await page2.get_by_label("Username").fill("nobody")
            await page2.get_by_label("Password").fill("whatever")
            # Each attempt answered before the next: the second is the one over the limit.
            async with page2.expect_response(
                    lambda r: r.request.method == "POST" and r.url.endswith("/login")):
                await page2.get_by_role("button", name="Log in").click()
        await expect(page2.locator(".form-error")).to_contain_text(re.compile(r"Too many attempts\. Try again in \d+ seconds?\."))
        await expect(page2.get_by_role("button", name="Log in")).to_be_disabled()
    finally:
        await strict.destroy()
    _ = register


async def test_password_rules_follow_the_server(open_tab, tmp_path, backend):
    strict = await start_server(tmp_path, backend, password_policy={
        "minimum_length": 12, "require_uppercase": True, "require_symbol": True})
    try:
        page = (await open_tab("desktop")).page
        await page.goto(f"{strict.base_url}/#/register")
        hint = page.locator(".pass-problem")
        await expect(hint).to_have_text(
            "At least 12 characters, with a digit, a lowercase letter, an uppercase letter, "
            "and a symbol (not a letter or a digit); longer is stronger.")
        password = page.get_by_label("Password", exact=True)
        await password.fill("abcdefgh1")
        await expect(hint).to_have_text("The password needs at least 12 characters, "
                                        "an uppercase letter, and a symbol (not a letter or a digit).")
        await expect(page.locator(".strength-label")).to_have_text(re.compile("weak", re.I))
        # What this server accepts, the meter never calls weak.
        await password.fill("Abcdefgh-123")
        await expect(page.locator(".strength-label")).not_to_have_text(re.compile("weak", re.I))
        await page.get_by_label("Username").fill("strictuser")
        await page.get_by_text("strictuser is available.").wait_for()
        await page.get_by_label("Repeat password").fill("Abcdefgh-123")
        await page.get_by_role("button", name="Create account").click()
        await page.locator(".sidebar .me-name").wait_for()
    finally:
        await strict.destroy()


async def test_server_refusal_is_shown_in_its_words(open_tab):
    tab = await open_tab("desktop")
    page = tab.page
    # A page that could not learn the policy: the server still refuses, and says why.
    await page.route("**/password_policy", lambda route: route.fulfill(
        status=200, content_type="application/json", body="{}"))
    await page.goto(f"{tab.base_url}/#/register")
    name = new_username()
    await page.get_by_label("Username").fill(name)
    await page.get_by_text(f"{name} is available.").wait_for()
    await page.get_by_label("Password", exact=True).fill("abc")
    await page.get_by_label("Repeat password").fill("abc")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator(".form-error")).to_have_text(
        "The server refused this password: The password is too weak: it needs at least "
        "8 characters and a digit")
    assert not tab.errors


async def test_keyboard_only(open_tab, api):
    (me_name, _), (me, other) = await people(api)
    for name in ("Alpha", "Beta"):
        room = await other.create_room(preset="private_chat", name=name, invite=[me.user_id])
        await me.join(room)
        await other.send_text(room, f"hello from {name}")
    tab = await open_tab("desktop")
    page = tab.page
    await login(tab, me_name)
    # The skip link is the first stop; then the sidebar, in order.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to the conversation")).to_be_focused()
    first = page.locator(".room-item").first
    await first.focus()
    await page.keyboard.press("ArrowDown")
    await expect(page.locator(".room-item").nth(1)).to_be_focused()
    await page.keyboard.press("ArrowUp")
    await expect(first).to_be_focused()
    await page.keyboard.press("Enter")
    box = page.locator(".composer-input")
    await expect(box).to_be_focused()
    await page.keyboard.type("typed without a mouse")
    await page.keyboard.press("Enter")
    await expect(page.locator("li.msg[data-event-id^='$']", has_text="typed without a mouse")).to_be_visible()
    # Up in the empty box edits the last message; Escape cancels.
    await page.keyboard.press("ArrowUp")
    await expect(page.locator(".composer-context")).to_contain_text("Editing message")
    await expect(box).to_have_value("typed without a mouse")
    await page.keyboard.press("Escape")
    await expect(page.locator(".composer-context")).to_be_hidden()
    # Messages are reachable with the arrow keys, and their actions with Tab.
    await page.locator(".timeline").focus()
    await page.keyboard.press("ArrowUp")
    await expect(page.locator("li.msg").last).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.locator("li.msg").last.get_by_role("button", name="React")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("button", name="React with 👍")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.locator(".picker")).to_have_count(0)
    # Dialogs: open from the keyboard, close with Escape.
    await page.get_by_role("button", name="New group").focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("dialog")).to_be_visible()
    await expect(page.get_by_role("dialog").get_by_label("Name")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.get_by_role("dialog")).to_have_count(0)
    assert not tab.errors
