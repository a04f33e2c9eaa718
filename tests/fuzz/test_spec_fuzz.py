"""Property-based fuzzing from the Matrix spec's own OpenAPI files (see run_fuzz.py).

No input — wrong types, missing fields, huge numbers, invalid UTF-8, NUL bytes, unknown room IDs,
malformed user IDs — may produce a 5xx, and a rejected write must store nothing. The whole run is
bounded by a time budget (NEXA_FUZZ_BUDGET seconds, default 180) and a request cap; the figures
are printed at the end (`pytest tests/fuzz -s`, and in the terminal summary).
"""

from __future__ import annotations

import os

import pytest

from tests.fuzz.config import CS_DIR
from tests.fuzz.run_fuzz import fuzz_server

IN_CI = os.environ.get("NEXA_REQUIRE_SERVICES") == "1" or bool(os.environ.get("CI"))
BUDGET_S = float(os.environ.get("NEXA_FUZZ_BUDGET", "180"))
EXAMPLES = int(os.environ.get("NEXA_FUZZ_EXAMPLES", "15"))


async def test_spec_fuzz_finds_no_server_errors(fuzz_target, record_property):
    if not CS_DIR.is_dir():
        reason = (f"Matrix spec not found at {CS_DIR.resolve()} (expected the matrix-spec "
                  f"checkout at ../shared/matrix-spec next to the repository)")
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    if not IN_CI:
        pytest.importorskip("schemathesis", reason="pip install -e '.[test]' for schemathesis")

    stats = await fuzz_server(fuzz_target, examples=EXAMPLES, budget_s=BUDGET_S)
    summary = f"[{fuzz_target.backend}] {stats.summary()}"
    print("\n" + summary)
    record_property("spec_fuzz", summary.splitlines()[0])

    assert not stats.load_errors, summary
    assert stats.requests >= 1000, f"too few requests to mean anything:\n{summary}"
    assert stats.server_errors == 0, summary
    assert not stats.store_changes, summary
