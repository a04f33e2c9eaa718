"""Two people in two browsers: register, start a direct chat, talk in both directions, and see
typing, read receipts, reactions, edits, deletions and an image thumbnail arrive live (over the
Socket.IO channel — the UI never polls)."""

from __future__ import annotations

import re
import struct
import zlib

from playwright.async_api import expect

from tests.web.conftest import new_username, register

def encode_png(w: int, h: int, rows: list[bytes]) -> bytes:
    """An RGB PNG from rows of w*3 bytes (zlib only: the tests need no image files)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _png(w: int = 64, h: int = 48) -> bytes:
    """A solid blue w×h PNG."""
    return encode_png(w, h, [bytes((40, 90, 200)) * w] * h)


async def start_dm(a, b_name: str):
    page = a.page
    await page.get_by_role("button", name="New direct chat").first.click()
    await page.get_by_label("Search people").fill(b_name)
    await page.get_by_role("option", name=re.compile(b_name)).click()
    await page.locator(".room-title").wait_for()


async def test_two_people_chat_live(open_tab):
    a = await open_tab("desktop")
    b = await open_tab("desktop")
    alice, bob = new_username(), new_username()
    await register(a, alice)
    await register(b, bob)

    # Alice starts a direct chat with Bob; Bob accepts the invitation.
    await start_dm(a, bob)
    invite = b.page.locator(".room-item.invite")
    await expect(invite).to_contain_text(alice)
    await invite.click()
    await b.page.get_by_role("button", name="Accept").click()
    await b.page.locator(".composer-input").wait_for()

    # Messages both ways.
    await a.page.locator(".composer-input").fill("Hello Bob")
    await a.page.keyboard.press("Enter")
    await expect(b.page.locator(".msg-text", has_text="Hello Bob")).to_be_visible()

    # Typing indicator, live.
    await b.page.locator(".composer-input").press_sequentially("Hi Al", delay=20)
    await expect(a.page.locator(".typing")).to_contain_text(f"{bob} is typing")
    await b.page.locator(".composer-input").press_sequentially("ice")
    await b.page.keyboard.press("Enter")
    await expect(a.page.locator(".msg-text", has_text="Hi Alice")).to_be_visible()
    await expect(a.page.locator(".typing")).to_have_text("")

    # Read receipts: Bob has read "Hello Bob"; Alice read "Hi Alice".
    # Read receipts, live: each sees that the other has read their latest message.
    await expect(a.page.locator("li.msg", has_text="Hello Bob").locator(".receipts")).to_have_attribute(
        "aria-label", f"Seen by {bob}")
    await expect(b.page.locator("li.msg", has_text="Hi Alice").locator(".receipts")).to_have_attribute(
        "aria-label", f"Seen by {alice}")

    # Reaction from Alice on Bob's message.
    theirs = a.page.locator("li.msg", has_text="Hi Alice")
    await theirs.hover()
    await theirs.get_by_role("button", name="React").click()
    await a.page.get_by_role("button", name="React with 👍").click()
    await expect(b.page.locator("li.msg", has_text="Hi Alice").locator(".reaction")).to_contain_text("👍1")

    # Alice edits her message; Bob sees the new text marked as edited.
    own = a.page.locator("li.msg", has_text="Hello Bob")
    await own.hover()
    await own.get_by_role("button", name="Edit").click()
    await a.page.locator(".composer-input").fill("Hello Bob, how are you?")
    await a.page.keyboard.press("Enter")
    edited = b.page.locator("li.msg", has_text="Hello Bob, how are you?")
    await expect(edited.locator(".edited")).to_have_text("(edited)")

    # Alice sends and deletes a message; Bob sees it deleted.
    await a.page.locator(".composer-input").fill("oops, wrong chat")
    await a.page.keyboard.press("Enter")
    await expect(b.page.locator(".msg-text", has_text="oops, wrong chat")).to_be_visible()
    oops = a.page.locator("li.msg", has_text="oops, wrong chat")
    await oops.hover()
    await oops.get_by_role("button", name="Delete").click()
    await a.page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(b.page.locator(".msg-text", has_text="oops, wrong chat")).to_have_count(0)
    await expect(b.page.locator(".msg-text.deleted", has_text="Message deleted").last).to_be_visible()

    # An image: uploaded by Bob, shown to Alice as a thumbnail (authenticated, via a blob: URL).
    await b.page.locator(".composer input[type=file]").set_input_files(
        files=[{"name": "blue.png", "mimeType": "image/png", "buffer": _png()}])
    img = a.page.locator("img.msg-img")
    await expect(img).to_have_attribute("src", re.compile(r"^blob:"))
    assert await img.evaluate("i => i.complete && i.naturalWidth > 0")
    assert any("/_matrix/client/v1/media/thumbnail/" in u for u in a.requests)

    # No polling: no /sync requests at all, only the realtime channel; nothing from elsewhere.
    for t in (a, b):
        assert not [u for u in t.requests if "/sync" in u], "the UI must not poll /sync"
        foreign = [u for u in t.requests if not u.startswith((t.base_url, "blob:", "data:"))]
        assert not foreign, foreign
        assert not t.errors and not t.dialogs, (t.errors, t.dialogs)
        assert not [e for e in t.console_errors if "Content Security Policy" in e], t.console_errors
