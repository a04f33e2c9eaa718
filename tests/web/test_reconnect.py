"""The realtime channel survives the server going away: a banner says the connection is lost,
the client reconnects by itself with its last next_batch, and what was sent meanwhile arrives
exactly once."""

from __future__ import annotations

from playwright.async_api import expect

from tests.client import Api
from tests.web.conftest import PASSWORD, login, new_username


async def test_reconnects_without_gaps_or_duplicates(open_tab, server):
    async with Api(server) as api:
        me_name = new_username()
        me = await api.register(me_name, PASSWORD)
        other = await api.register(new_username(), PASSWORD)
        room = await other.create_room(preset="trusted_private_chat", is_direct=True,
                                       invite=[me.user_id])
        await me.join(room)
        await other.send_text(room, "before the outage")

    tab = await open_tab("desktop")
    page = tab.page
    await login(tab, me_name)
    await page.locator(".room-item").first.click()
    await expect(page.locator(".msg-text", has_text="before the outage")).to_be_visible()

    await server.stop()
    banner = page.locator(".conn-banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("Connection lost")
    await server.start()
    async with Api(server) as api:
        other.api = api
        await other.send_text(room, "during the outage")
        await expect(page.locator(".msg-text", has_text="during the outage")).to_be_visible(timeout=20_000)
        await expect(banner).to_be_hidden()
        await other.send_text(room, "after the outage")
        await expect(page.locator(".msg-text", has_text="after the outage")).to_be_visible()
    for text in ("before the outage", "during the outage", "after the outage"):
        await expect(page.locator(".msg-text", has_text=text)).to_have_count(1)
    assert not tab.errors
