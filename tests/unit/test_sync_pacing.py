"""Sync coalescing: each device gets at most one incremental response per window, and only
when the server is busy."""

from __future__ import annotations

from types import SimpleNamespace

from homeserver.handlers.sync import SyncHandler


def handler(window_ms: int = 60) -> SyncHandler:
    hs = SimpleNamespace(config=SimpleNamespace(limits=SimpleNamespace(sync_coalesce_ms=window_ms)))
    return SyncHandler(hs)  # type: ignore[arg-type]


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
