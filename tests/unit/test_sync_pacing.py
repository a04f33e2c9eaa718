"""Sync coalescing: each device gets at most one incremental response per window, and only
when the server is busy."""

from __future__ import annotations

from types import SimpleNamespace

from homeserver.handlers.sync import LoopLoad, SyncHandler


def handler(window_ms: int = 60) -> SyncHandler:
    hs = SimpleNamespace(config=SimpleNamespace(limits=SimpleNamespace(sync_coalesce_ms=window_ms)))
    h = SyncHandler(hs)  # type: ignore[arg-type]
    # An idle loop unless a test says otherwise (the test process's own CPU must not count).
    h._load = LoopLoad(cpu=lambda: 0.0, wall=lambda: 0.0)
    return h


def busy(h: SyncHandler, per_second: float) -> None:
    # The decaying rate's steady state for that many responses a second.
    import math

    h._wake_rate._value = per_second * h._wake_rate.half_life_s / math.log(2)


def test_quiet_server_never_waits():
    h = handler()
    busy(h, 10)
    assert [h._pace("dev") for _ in range(5)] == [0.0] * 5


def test_busy_server_paces_each_device_separately():
    h = handler(60)
    busy(h, 2000)
    assert h._pace("a") == 0.0  # the first response goes out at once
    second = h._pace("a")
    assert 0.05 < second <= 0.06  # the next one waits out the window
    third = h._pace("a")
    assert 0.11 < third <= 0.12  # and the one after, the window after that
    assert h._pace("b") == 0.0  # another device is not held back by "a"


def test_window_grows_with_load():
    h = handler(100)
    busy(h, 150)
    h._pace("a")
    half = h._pace("a")
    assert 0.03 < half < 0.07  # halfway between 50/s and 250/s: about half the window


def test_devices_remembered_are_bounded(monkeypatch):
    import homeserver.handlers.sync as sync_mod

    monkeypatch.setattr(sync_mod, "MAX_PACED_DEVICES", 3)
    h = handler()
    for d in "abcde":
        h._pace(d)
    assert list(h._answered) == ["c", "d", "e"]


class Clock:
    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0


def test_loop_load_is_cpu_share_smoothed_and_sampled():
    c = Clock()
    load = LoopLoad(every_s=0.1, cpu=lambda: c.cpu, wall=lambda: c.wall)
    c.wall, c.cpu = 0.05, 0.05
    assert load.busy() == 0.0  # not yet a sample's worth of time
    c.wall, c.cpu = 0.1, 0.1
    assert load.busy() == 0.5  # fully busy, smoothed with the start
    c.wall, c.cpu = 0.2, 0.2
    assert load.busy() == 0.75
    c.wall = 0.4  # idle for 0.2 s
    assert load.busy() == 0.375


def test_a_busy_loop_coalesces_even_at_a_low_response_rate():
    h = handler(100)
    busy(h, 10)  # few responses a second: the rate alone would not coalesce
    c = Clock()
    h._load = LoopLoad(every_s=0.1, cpu=lambda: c.cpu, wall=lambda: c.wall)
    h._load._busy = 0.95
    assert h._pace("a") == 0.0
    assert 0.09 < h._pace("a") <= 0.1  # the whole window
    h._load._busy = 0.3
    h2 = handler(100)
    busy(h2, 10)
    h2._load = h._load
    h2._pace("b")
    assert h2._pace("b") == 0.0  # a quiet loop and few responses: none
