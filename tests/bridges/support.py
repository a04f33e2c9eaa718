"""Helpers the bridge tests share: polling a condition with a deadline, stopping a child
process, and the registration of a bridge adapter."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any, Awaitable, Callable

from tests.bridges.fake_as import write_registration


async def poll(cond: Callable[[], Any], timeout: float, what: str, *,
               step: Callable[[], Awaitable[Any]] | None = None,
               detail: Callable[[], str] | None = None) -> Any:
    """cond()'s first truthy value; between tries `step()` (default: a short sleep). Past the
    deadline an AssertionError naming `what` (and `detail()`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}" +
                                 (f"; {detail()}" if detail is not None else ""))
        if step is not None:
            await step()
        else:
            await asyncio.sleep(0.05)


async def stop_process(proc: asyncio.subprocess.Process | None, timeout: float,
                       sig: int = signal.SIGTERM) -> int | None:
    """Signal a child (SIGTERM by default) and wait for it, killing it after `timeout`; its
    exit code (None for no process)."""
    if proc is None:
        return None
    if proc.returncode is None:
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode


def adapter_registration(path: Path, adapter: str, port: int, sender: str) -> dict:
    """The registration of a bridge adapter listening on `port`: exclusive users and aliases
    prefixed `<adapter>_`, the adapter's third-party protocol; written to path."""
    return write_registration(path, id=adapter, url=f"http://127.0.0.1:{port}", sender=sender,
                              users=[(f"@{adapter}_.*", True)],
                              aliases=[(f"#{adapter}_.*", True)], protocols=[adapter])
