"""The fuzzed server, and the fuzzer's figures (requests, 5xx) in the terminal summary."""

from __future__ import annotations

import pytest

from tests.fuzz.config import HERMETIC_CONFIG
from tests.servers import start_server

_lines: list[str] = []


@pytest.fixture(scope="module")
async def fuzz_target(backend, tmp_path_factory):
    """A server of its own: the fuzzer leaves odd rooms, users and settings behind."""
    srv = await start_server(tmp_path_factory.mktemp("fuzz"), backend, **HERMETIC_CONFIG)
    yield srv
    await srv.destroy()


def pytest_runtest_logreport(report) -> None:
    if report.when == "call":
        _lines.extend(v for k, v in report.user_properties if k == "spec_fuzz")


def pytest_terminal_summary(terminalreporter) -> None:
    if _lines:
        terminalreporter.section("spec fuzz")
        for line in _lines:
            terminalreporter.write_line(line)
