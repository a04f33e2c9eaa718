"""The layout at phone, tablet and desktop sizes: no horizontal scrolling on any main screen,
with screenshots saved to test-artifacts/screenshots/ for people to look at."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.client import Api
from tests.web.conftest import PASSWORD, SIZES, login, new_username
from tests.web.test_chat import encode_png

# One long unbroken URL: it must wrap, never make the page scroll sideways.
LONG = ("Here is the route for Saturday: https://maps.example.org/trails/ridge-loop?"
        "from=north-gate&to=lakeside-hut&waypoints=old-mill,pine-pass,the-long-meadow,"
        "eagle-rock,lakeside-hut&elevation=true&units=metric&share=9f2c41d7e0b3")


def lake_png(w: int = 480, h: int = 300) -> bytes:
    """A small landscape (sky, hills, lake) drawn pixel by pixel: a photo for the screenshots."""
    rows = []
    for y in range(h):
        row = bytearray()
        for x in range(w):
            hill = h * 0.55 - 40 * (1 + __import__("math").sin(x / 60)) * 0.8
            if y < hill:  # sky, lighter towards the horizon
                t = y / hill
                px = (int(90 + 120 * t), int(150 + 80 * t), int(230 + 20 * t))
            elif y < h * 0.62:  # hills
                px = (int(50 + (y - hill) / 3), int(110 + (x % 37) / 6), 70)
            else:  # lake with ripples
                ripple = 12 if (y // 6 + x // 40) % 5 == 0 else 0
                px = (40 + ripple, 100 + ripple, 160 + ripple)
            row += bytes(px)
        rows.append(bytes(row))
    return encode_png(w, h, rows)


async def seed(server) -> tuple[str, str]:
    """Two people with a direct chat and a group, some history, a photo, a reaction, a reply
    and read receipts."""
    async with Api(server) as api:
        me_name, friend_name = new_username(), new_username()
        me = await api.register(me_name, PASSWORD)
        friend = await api.register(friend_name, PASSWORD)
        await friend.put(f"/profile/{friend.user_id}/displayname", {"displayname": "Ann Example"})
        await me.put(f"/profile/{me.user_id}/displayname", {"displayname": "Sam Carter"})
        dm = await friend.create_room(preset="trusted_private_chat", is_direct=True,
                                      invite=[me.user_id])
        await me.join(dm)
        await me.put(f"/user/{me.user_id}/account_data/m.direct", {friend.user_id: [dm]})
        first = await friend.send_text(dm, "Hi! Did you get the photos from the trip?")
        up = await friend.request("POST", "/upload", raw=lake_png(), prefix="/_matrix/media/v3",
                                  headers={"Content-Type": "image/png"}, params={"filename": "lake.png"})
        assert up.status == 200, up
        await friend.put(f"/rooms/{dm}/send/m.room.message/img1", {
            "msgtype": "m.image", "body": "lake.png", "url": up.json["content_uri"],
            "info": {"mimetype": "image/png", "w": 480, "h": 300, "size": 1000}})
        mine = await me.send_text(dm, "Yes — they are wonderful. The one by the lake is my favourite.")
        await friend.post(f"/rooms/{dm}/receipt/m.read/{mine}")
        await friend.put(f"/rooms/{dm}/send/m.reaction/r1", {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": first, "key": "👍"}})
        await friend.put(f"/rooms/{dm}/send/m.room.message/t2", {
            "msgtype": "m.text", "body": LONG})
        await friend.put(f"/rooms/{dm}/send/m.room.message/t3", {
            "msgtype": "m.text", "body": "Let's plan the next one 🎉",
            "m.relates_to": {"m.in_reply_to": {"event_id": first}}})
        group = await me.create_room(preset="public_chat", name="Weekend hikes",
                                     topic="Routes, weather and who brings the tea")
        await friend.join(group)
        await friend.send_text(group, "Saturday looks sunny ☀️")
        return me_name, friend_name


@pytest.mark.parametrize("size", list(SIZES))
async def test_layout_has_no_horizontal_scroll(open_tab, server, size):
    me_name, _ = await seed(server)
    tab = await open_tab(size)
    page = tab.page
    await page.goto(f"{tab.base_url}/#/login")
    await page.get_by_role("heading", name="Log in").wait_for()
    await tab.no_horizontal_scroll()
    await tab.screenshot(f"{size}-login")

    await login(tab, me_name)
    await expect(page.locator(".room-item")).to_have_count(2)
    await tab.no_horizontal_scroll()
    await tab.screenshot(f"{size}-rooms")

    await page.locator(".room-item .room-name", has_text="Ann Example").click()
    await expect(page.locator(".msg-text", has_text="Let's plan")).to_be_visible()
    await tab.no_horizontal_scroll()
    await tab.screenshot(f"{size}-room")
    if size == "desktop":  # the "auto" theme follows the system into dark mode
        await page.emulate_media(color_scheme="dark")
        await tab.screenshot(f"{size}-room-dark")
        await page.emulate_media(color_scheme="light")

    for route, heading in (("settings", "Settings"), ("explore", "Explore public rooms"),
                           ("profile", "Your profile"), ("help", "Help")):
        await page.goto(f"{tab.base_url}/#/{route}")
        await page.get_by_role("heading", name=heading, exact=True).wait_for()
        await tab.no_horizontal_scroll()
        if route in ("settings", "explore"):
            await tab.screenshot(f"{size}-{route}")

    await page.goto(f"{tab.base_url}/#/register")
    assert not tab.errors and not tab.dialogs, (tab.errors, tab.dialogs)


CONTRAST = """() => {
  const parse = (c) => { const m = c.match(/[\\d.]+/g).map(Number); return m.length === 3 ? [...m, 1] : m; };
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const bgOf = (el) => { for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
    if (c[3] > 0.5) return c; } return parse(getComputedStyle(document.body).backgroundColor); };
  const bad = [];
  for (const el of document.querySelectorAll('body *')) {
    if (![...el.childNodes].some((n) => n.nodeType === 3 && n.nodeValue.trim())) continue;
    const r = el.getBoundingClientRect();
    const cs = getComputedStyle(el);
    if (!r.width || !r.height || cs.visibility === 'hidden' || el.closest('[hidden], .sr-only, a.room-item-wrap .avatar')) continue;
    if (el.closest('.avatar') || el.closest('.msg-img')) continue;
    const fg = parse(cs.color), bg = bgOf(el);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    if (ratio < 4.5) bad.push(`${el.className || el.tagName}: ${el.textContent.trim().slice(0, 30)} ${ratio.toFixed(2)}`);
  }
  return bad;
}"""


UNNAMED = """() => [...document.querySelectorAll('button, a[href], input, select, textarea, [role=option], [tabindex="0"]')]
  .filter((el) => el.getClientRects().length && getComputedStyle(el).visibility !== 'hidden' && el.type !== 'hidden'
    && !el.closest('[aria-hidden="true"]'))
  .filter((el) => {
    const byId = (ids) => ids.split(/\\s+/).map((id) => document.getElementById(id)?.textContent || '').join(' ');
    const name = el.getAttribute('aria-label') || (el.getAttribute('aria-labelledby') && byId(el.getAttribute('aria-labelledby')))
      || (el.id && document.querySelector(`label[for="${CSS.escape(el.id)}"]`)?.textContent)
      || el.closest('label')?.textContent || el.textContent || el.getAttribute('title') || el.getAttribute('alt');
    return !String(name || '').trim();
  }).map((el) => el.outerHTML.slice(0, 120))"""


@pytest.mark.parametrize("theme", ["light", "dark"])
async def test_contrast_and_accessible_names_in_both_themes(open_tab, server, theme):
    me_name, _ = await seed(server)
    tab = await open_tab("desktop", color_scheme=theme)
    page = tab.page
    await login(tab, me_name)
    await page.locator(".room-item .room-name", has_text="Ann Example").click()
    await expect(page.locator(".msg-text", has_text="Let's plan")).to_be_visible()
    await expect(page.locator("html")).to_have_attribute("data-theme", "auto")
    for route, heading in (("", None), ("settings", "Settings"), ("help", "Help")):
        if route:
            await page.goto(f"{tab.base_url}/#/{route}")
            await expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        # Colours are read at rest, not halfway through a hover or fade-in transition.
        await page.wait_for_function("""() => document.getAnimations().every((a) =>
            a.playState !== 'running' || a.effect.getComputedTiming().endTime === Infinity)""")
        bad = await page.evaluate(CONTRAST)
        assert not bad, (theme, route, bad)
        # And every control has an accessible name (screen readers).
        unnamed = await page.evaluate(UNNAMED)
        assert not unnamed, (route, unnamed)
    # The checks themselves notice poor contrast and a nameless control.
    await page.evaluate("document.querySelector('h1').style.color = getComputedStyle(document.body).backgroundColor")
    assert await page.evaluate(CONTRAST)
    await page.evaluate("document.querySelector('h1').append(document.createElement('button'))")
    assert len(await page.evaluate(UNNAMED)) == 1


async def test_first_screen_on_a_slow_phone_connection(open_tab):
    """Slow 3G-like link (400 kbit/s, 400 ms round trips): the sign-in form is usable within a
    few seconds, because assets are few, compressed and preloaded in parallel."""
    import time

    tab = await open_tab("phone")
    page = tab.page
    cdp = await tab.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    await cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 400, "downloadThroughput": 50_000, "uploadThroughput": 50_000})
    start = time.monotonic()
    await page.goto(f"{tab.base_url}/#/login")
    await page.get_by_role("button", name="Log in").wait_for()
    elapsed = time.monotonic() - start
    transferred = await page.evaluate(
        "() => performance.getEntriesByType('resource').reduce((n, e) => n + e.transferSize, 0)"
        " + performance.getEntriesByType('navigation')[0].transferSize")
    assert transferred < 120_000, transferred
    assert elapsed < 8, f"first screen took {elapsed:.1f}s on a slow connection"
    assert not tab.errors
