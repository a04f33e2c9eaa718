"""Browser tests: Playwright driving Debian's chromium against real homeservers on loopback.

Chromium comes from apt (scripts/test installs it when missing), never from `playwright
install`. Without /usr/bin/chromium or the playwright package the browser tests skip with the
reason — and fail instead when NEXA_REQUIRE_SERVICES=1 (CI), so they can never silently vanish.

Screenshots of the main screens go to test-artifacts/screenshots/ (git-ignored).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers import REQUIRE_SERVICES

CHROMIUM = os.environ.get("NEXA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
SIZES = {"phone": (375, 812), "tablet": (768, 1024), "desktop": (1440, 900)}
TIMEOUT_MS = 15_000

try:
    from playwright.async_api import expect as _expect
except ImportError:  # reported by the browser fixture
    pass
else:
    # Assertions wait as long as actions do: with both cores busy, the first screen took longer
    # than expect()'s default 5 s to leave "Loading…".
    _expect.set_options(timeout=TIMEOUT_MS)


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (NEXA_REQUIRE_SERVICES=1: browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
async def browser():
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    async with async_playwright() as pw:
        try:
            b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                         headless=True)
        except Exception as e:  # e.g. a chromium that cannot start on this machine
            _unavailable(f"{CHROMIUM} did not start: {e}")
        yield b
        await b.close()


@dataclass
class Tab:
    """One browser context + page, recording anything that would mean script ran or failed."""

    context: Any
    page: Any
    base_url: str
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.page.mouse.move(1, 1)  # no hover effects in the picture
        # "disabled" runs CSS transitions (the hover fading out) to their end before capturing.
        await self.page.screenshot(path=str(path), animations="disabled")
        return path

    async def no_horizontal_scroll(self) -> None:
        sizes = await self.page.evaluate(
            "() => [document.scrollingElement.scrollWidth, window.innerWidth,"
            " Math.max(...[...document.querySelectorAll('.main, .sidebar, .timeline, .page-body')]"
            ".map(e => e.scrollWidth - e.clientWidth), 0)]")
        assert sizes[0] <= sizes[1], f"horizontal scrolling: scrollWidth {sizes[0]} > {sizes[1]}"
        assert sizes[2] <= 0, f"a panel scrolls sideways by {sizes[2]}px"


@pytest.fixture
async def open_tab(browser, server):
    tabs: list[Tab] = []

    async def make(size: str = "desktop", **context_kw: Any) -> Tab:
        w, h = SIZES[size]
        ctx = await browser.new_context(viewport={"width": w, "height": h}, **context_kw)
        ctx.set_default_timeout(TIMEOUT_MS)
        page = await ctx.new_page()
        tab = Tab(ctx, page, server.base_url)
        page.on("dialog", lambda d: (tab.dialogs.append(d.message), _dismiss(d)))
        page.on("pageerror", lambda e: tab.errors.append(str(e)))
        page.on("console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: tab.requests.append(r.url))
        tabs.append(tab)
        return tab

    yield make
    for t in tabs:
        await t.context.close()


def _dismiss(dialog) -> None:
    import asyncio

    asyncio.ensure_future(dialog.dismiss())


def new_username() -> str:
    return f"web{secrets.token_hex(4)}"


PASSWORD = "Correct-Horse-42-battery"


async def register(tab: Tab, username: str, password: str = PASSWORD) -> None:
    page = tab.page
    await page.goto(f"{tab.base_url}/#/register")
    await page.get_by_label("Username").fill(username)
    await page.get_by_text(f"{username} is available.").wait_for()
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_label("Repeat password").fill(password)
    await page.get_by_role("button", name="Create account").click()
    await page.locator(".sidebar .me-name").wait_for()


async def login(tab: Tab, username: str, password: str = PASSWORD) -> None:
    page = tab.page
    await page.goto(f"{tab.base_url}/#/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await page.locator(".sidebar .me-name").wait_for()
