"""Shared fixtures: real servers over loopback and an HTTP client.

The database backend is chosen per test process with NEXA_TEST_DB=sqlite|postgres (tortoise
binds model classes to one SQL dialect per process); .ci/run runs the suite once for each.
"""

from __future__ import annotations

import os

import pytest

from tests.client import Api
from tests.servers import REQUIRE_SERVICES, postgres_available, start_server

BACKEND = os.environ.get("NEXA_TEST_DB", "sqlite")


@pytest.fixture(scope="session")
async def backend():
    if BACKEND == "postgres":
        reason = await postgres_available()
        if reason:
            if REQUIRE_SERVICES:
                pytest.fail(reason)
            pytest.skip(reason)
    return BACKEND


@pytest.fixture(scope="module")
async def server(backend, tmp_path_factory):
    """One homeserver per test module."""
    srv = await start_server(tmp_path_factory.mktemp("hs"), backend)
    yield srv
    await srv.destroy()


@pytest.fixture
async def api(server):
    async with Api(server) as a:
        yield a


# --- diagnosis of hangs --------------------------------------------------------------------
# The servers under test run in the test process. When a test fails, its report gets the stack
# of every thread and of every pending asyncio task, so a request that never got an answer
# shows where the server was waiting (an intermittent hang was seen in full CI runs).

def _stacks_text() -> str:
    import asyncio
    import sys
    import threading
    import traceback

    out = []
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.append(f"--- thread {names.get(ident, ident)}")
        out.extend(line.rstrip() for line in traceback.format_stack(frame, limit=12))
    tasks = [t for t in list(getattr(asyncio.tasks, "_all_tasks", ())) if not t.done()]
    out.append(f"--- {len(tasks)} pending asyncio tasks")
    for task in tasks:
        frames = task.get_stack(limit=6)
        where = " <- ".join(f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno} "
                            f"{f.f_code.co_name}" for f in reversed(frames))
        out.append(f"{task.get_name()}: {where or '(not started)'}")
    return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        try:
            report.sections.append(("threads and asyncio tasks at failure", _stacks_text()))
        except Exception as e:  # the diagnosis must never hide the failure itself
            report.sections.append(("threads and asyncio tasks at failure", f"unavailable: {e}"))
