"""User content is inert (text, or sanitised HTML); the theme and drafts persist across a
reload and follow the user to another browser."""

from __future__ import annotations

import asyncio

from playwright.async_api import expect

from tests.client import Api
from tests.web.conftest import PASSWORD, login, new_username

XSS = '<img src=x onerror=alert(1)> and <script>alert(2)</script>'


async def dm_pair(api: Api):
    me_name, other_name = new_username(), new_username()
    me = await api.register(me_name, PASSWORD)
    other = await api.register(other_name, PASSWORD)
    room = await other.create_room(preset="trusted_private_chat", is_direct=True,
                                   invite=[me.user_id])
    await me.join(room)
    return me, other, room, me_name


async def test_hostile_messages_render_as_text_and_run_nothing(open_tab, api):
    me, other, room, me_name = await dm_pair(api)
    await other.send_text(room, XSS)
    # The same, as "formatted" HTML: only the safe subset survives.
    await other.put(f"/rooms/{room}/send/m.room.message/h1", {
        "msgtype": "m.text", "body": "formatted",
        "format": "org.matrix.custom.html",
        "formatted_body": ('<b>bold</b> <img src=x onerror=alert(3)><script>alert(4)</script>'
                           '<a href="javascript:alert(5)">js link</a> '
                           '<a href="https://example.org/" onclick="alert(6)">ok link</a>'
                           '<iframe src="https://example.org"></iframe>'
                           '<p style="color:red" onmouseover="alert(7)">para</p>'),
    })
    tab = await open_tab("desktop")
    page = tab.page
    await login(tab, me_name)
    await page.locator(".room-item").first.click()

    plain = page.locator(".msg-text", has_text="onerror=alert(1)")
    await expect(plain).to_have_text(XSS)
    formatted = page.locator(".msg-text.formatted")
    await expect(formatted.locator("b")).to_have_text("bold")
    await expect(formatted.locator("p")).to_have_text("para")
    assert await formatted.locator("p").get_attribute("style") is None
    assert await formatted.locator("p").get_attribute("onmouseover") is None
    js_link = formatted.locator("a", has_text="js link")
    assert await js_link.get_attribute("href") is None
    ok_link = formatted.locator("a", has_text="ok link")
    assert await ok_link.get_attribute("href") == "https://example.org/"
    assert await ok_link.get_attribute("onclick") is None
    assert "noopener" in await ok_link.get_attribute("rel")

    # Sending the hostile text from the UI shows it as text too.
    await page.locator(".composer-input").fill(XSS + " (mine)")
    await page.keyboard.press("Enter")
    await expect(page.locator(".msg-text", has_text="(mine)")).to_have_text(XSS + " (mine)")

    # Nothing ran, nothing was created: no <img src=x>, <script>, <iframe> in messages.
    assert await page.locator(".events img[src='x'], .events script, .events iframe").count() == 0
    await page.hover(".msg-text.formatted p")
    # A mouseover handler would have run (and its alert opened) while the hover was dispatched;
    # a round trip through the next frame comes after any dialog it could have opened.
    await page.evaluate("() => new Promise((done) => requestAnimationFrame(() => done()))")
    assert tab.dialogs == [], tab.dialogs
    assert tab.errors == [], tab.errors
    assert not [e for e in tab.console_errors if "alert" in e or "Content Security Policy" in e], \
        tab.console_errors
    assert not [u for u in tab.requests if u.endswith("/x") or "example.org" in u], tab.requests


async def test_sanitiser_allow_list(open_tab, server):
    tab = await open_tab("desktop")
    await tab.page.goto(tab.base_url + "/")
    result = await tab.page.evaluate("""async () => {
        const { sanitizeHtml, safeHref } = await import('/static/js/sanitize.js');
        const html = (s) => { const d = document.createElement('div'); d.append(sanitizeHtml(s)); return d.innerHTML; };
        return {
          basic: html('<b>b</b><i>i</i><em>e</em><strong>s</strong><code>c</code><pre>p</pre><br>'),
          lists: html('<ul><li>a</li></ul><ol><li>b</li></ol><blockquote>q</blockquote><p>x</p>'),
          unknown: html('<div class="x"><span style="color:red">kept text</span></div>'),
          dropped: html('<script>bad()</script><style>*{}</style><svg><a href="x">s</a></svg><mx-reply>quoted</mx-reply>after'),
          attrs: html('<b onclick="x()" class="c" id="i">b</b>'),
          links: html('<a href="https://a.example/x">h</a><a href="http://b.example">p</a><a href="mxc://s/id">m</a>'
                      + '<a href="javascript:alert(1)">j</a><a href=" data:text/html,x">d</a><a href="/rel">r</a>'),
          hrefs: [safeHref('https://x.org'), safeHref('JAVASCRIPT:alert(1)'), safeHref('vbscript:x'), safeHref('mxc://a/b')],
          entities: html('&lt;script&gt;alert(1)&lt;/script&gt;'),
        };
    }""")
    assert result["basic"] == "<b>b</b><i>i</i><em>e</em><strong>s</strong><code>c</code><pre>p</pre><br>"
    assert result["lists"] == "<ul><li>a</li></ul><ol><li>b</li></ol><blockquote>q</blockquote><p>x</p>"
    assert result["unknown"] == "kept text"
    assert result["dropped"] == "after"
    assert result["attrs"] == "<b>b</b>"
    links = result["links"]
    assert '<a href="https://a.example/x" rel="noopener noreferrer nofollow" target="_blank">h</a>' in links
    assert 'href="http://b.example/"' in links and 'href="mxc://s/id"' in links
    assert "javascript" not in links and "data:" not in links and 'href="/rel"' not in links
    assert result["hrefs"] == ["https://x.org/", None, None, "mxc://a/b"]
    assert result["entities"] == "&lt;script&gt;alert(1)&lt;/script&gt;"


async def test_theme_persists_and_follows_the_user(open_tab, api):
    me, _, _, me_name = await dm_pair(api)
    tab = await open_tab("desktop", color_scheme="light")
    page = tab.page
    await login(tab, me_name)
    html = page.locator("html")
    await expect(html).to_have_attribute("data-theme", "auto")
    await page.goto(f"{tab.base_url}/#/settings")
    await page.get_by_label("Dark").check()
    await expect(html).to_have_attribute("data-theme", "dark")
    bg = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(17, 19, 24)", bg
    await page.reload()
    await expect(html).to_have_attribute("data-theme", "dark")
    await page.locator(".sidebar .me-name").wait_for()
    await expect(html).to_have_attribute("data-theme", "dark")
    await tab.screenshot("desktop-settings-dark")
    # Another browser: the setting comes with the account.
    other = await open_tab("desktop", color_scheme="light")
    await login(other, me_name)
    await expect(other.page.locator("html")).to_have_attribute("data-theme", "dark")
    await other.page.goto(f"{tab.base_url}/#/settings")
    await other.page.get_by_label("Automatic (follow the system)").check()
    await expect(other.page.locator("html")).to_have_attribute("data-theme", "auto")
    # "auto" follows the system: light here, dark when the system is dark.
    await other.page.emulate_media(color_scheme="dark")
    bg = await other.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(17, 19, 24)", bg
    assert not tab.errors and not other.errors


async def test_draft_survives_reload_and_follows_the_user(open_tab, api):
    me, _, room, me_name = await dm_pair(api)
    tab = await open_tab("desktop")
    page = tab.page
    await login(tab, me_name)
    await page.locator(".room-item").first.click()
    box = page.locator(".composer-input")
    await box.press_sequentially("half-written thought", delay=10)
    await page.reload()
    await expect(page.locator(".composer-input")).to_have_value("half-written thought")
    # Saved to account data too (flushed as the page went away): another browser sees it.
    # The reloaded page's request cannot be watched; the account's /sync wakes when it lands.
    since = (await me.sync())["next_batch"]
    async with asyncio.timeout(30):
        while (await me.get(f"/user/{me.user_id}/rooms/{room}/account_data/im.nexa.draft")
               ).json.get("body") != "half-written thought":
            since = (await me.sync(since, timeout=5000))["next_batch"]
    other = await open_tab("desktop")
    await login(other, me_name)
    await other.page.locator(".room-item").first.click()
    await expect(other.page.locator(".composer-input")).to_have_value("half-written thought")
    # Sending clears it everywhere.
    await page.locator(".composer-input").press("Enter")
    sent = page.locator("li.msg[data-event-id^='$']", has_text="half-written thought")
    await expect(sent).to_be_visible()
    await page.reload()
    await expect(page.locator(".composer-input")).to_have_value("")
    assert not tab.errors and not other.errors
