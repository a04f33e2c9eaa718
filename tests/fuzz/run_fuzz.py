"""Property-based fuzzing of the Client-Server API, driven by the Matrix spec's own OpenAPI files.

For every operation in ../shared/matrix-spec/data/api/client-server/*.yaml, schemathesis
generates requests (schema-conforming and schema-violating ones) against a running Nexa server,
authenticated with a real access token and with path parameters filled with real IDs (a room, a
user, an event, a device, a filter, an alias) so the generated bodies and queries reach the code
behind the ID checks; a second pass leaves path parameters to the generator (unknown and malformed
IDs), and a deterministic edge pass adds what generators rarely produce: invalid UTF-8 and NUL
bytes in paths, queries and bodies, integers beyond 2**53 / 2**63, non-object JSON, deep nesting.

The one property checked: no response has a status >= 500. Besides, for write requests that were
rejected (4xx), the row count of every table (and on SQLite the connection's count of rows
written) must be unchanged: a rejected request stores nothing.

The server is hermetic (HERMETIC_CONFIG): it refuses to contact any other server, so generated
IDs on example.com or matrix.org exercise the refusal paths instead of the network.

Run it alone (starts its own server):

    python -m tests.fuzz.run_fuzz [--backend sqlite|postgres] [--budget 180] [--examples 15]

or through pytest: tests/fuzz/test_spec_fuzz.py.

The pieces: config.py (what is fuzzed, and how), seeding.py (the real IDs), inputs.py (nasty
values and the edge cases), fuzzer.py (schemathesis runs and the edge pass), store.py (the store
fingerprint of rejected writes), report.py (the figures and the summary).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.fuzz.config import CS_DIR, HERMETIC_CONFIG
from tests.fuzz.fuzzer import Fuzzer
from tests.fuzz.report import Stats
from tests.fuzz.store import fingerprint_for


async def fuzz_server(server, **kw: Any) -> Stats:
    """Fuzz a running tests.servers.RunningServer from a worker thread (the server keeps
    running on this event loop)."""
    loop = asyncio.get_running_loop()
    fuzzer = Fuzzer(server.base_url, server.server_name,
                    store_fingerprint=fingerprint_for(server, loop), **kw)
    return await asyncio.to_thread(fuzzer.run)


async def _main(args: argparse.Namespace) -> int:
    from tests.servers import start_server

    with tempfile.TemporaryDirectory() as tmp:
        server = await start_server(Path(tmp), args.backend, **HERMETIC_CONFIG)
        try:
            log = (lambda s: print(s, flush=True)) if args.verbose else None
            stats = await fuzz_server(server, examples=args.examples, budget_s=args.budget,
                                      only=args.only, log=log)
        finally:
            await server.destroy()
    print(stats.summary())
    if args.report:
        Path(args.report).write_text(json.dumps(stats.to_json(), indent=1, default=repr))
    return 1 if stats.server_errors or stats.store_changes else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    ap.add_argument("--budget", type=float, default=180.0, help="seconds for all operations")
    ap.add_argument("--examples", type=int, default=15, help="generated cases per mode")
    ap.add_argument("--only", help="only spec files whose name contains this")
    ap.add_argument("--report", help="write every failure and per-operation statuses as JSON")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if not CS_DIR.is_dir():
        sys.exit(f"Matrix spec not found at {CS_DIR.resolve()}")
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
