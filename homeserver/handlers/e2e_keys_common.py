"""What the parts of the end-to-end keys handler share: limits, the canonical form and
signature helpers, and the base every part builds on (see e2e_keys.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from homeserver.errors import bad_json
from homeserver.events.canonical import canonical_json, decode_b64
from homeserver.types import server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer

MAX_KEYS_PER_UPLOAD = 1000
MAX_KEY_ID_LENGTH = 255
MAX_KEY_OBJECT_BYTES = 4096
MAX_DEVICE_KEYS_BYTES = 16384
MAX_QUERY_USERS = 1000
MAX_QUERY_DEVICES = 1000
MAX_CLAIMS = 1000
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 30_000
KEY_TYPES = {"master_key": "master", "self_signing_key": "self_signing",
             "user_signing_key": "user_signing"}


def canonical(obj: Any, what: str) -> str:
    try:
        return canonical_json(obj).decode()
    except (ValueError, TypeError) as e:
        raise bad_json(f"{what}: {e}") from None


def signable(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def is_ed25519_public(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return len(decode_b64(value)) == 32
    except ValueError:
        return False


def parse_timeout(timeout: Any) -> float:
    if timeout is None:
        return DEFAULT_TIMEOUT_MS / 1000
    if type(timeout) is not int or timeout < 0:
        raise bad_json("timeout must be a non-negative integer")
    return max(1000, min(timeout, MAX_TIMEOUT_MS)) / 1000


def merge_signatures(obj: dict, sigs: list[dict]) -> dict:
    if not sigs:
        return obj
    out = dict(obj)
    merged = {u: dict(v) for u, v in (obj.get("signatures") or {}).items() if isinstance(v, dict)}
    for s in sigs:
        merged.setdefault(s["signer_user_id"], {})[s["signer_key_id"]] = s["signature"]
    out["signatures"] = merged
    return out


def public_key_of(key: dict) -> str:
    return next(iter(key["keys"].values()))


# Answer for a server that federation may not reach: that server's entry under "failures".
FEDERATION_REFUSED = {"status": 403, "message": "federation with this server is not allowed"}

T = TypeVar("T")


class E2eKeysPart:
    """The base of the handler's parts: the homeserver, and which users are ours."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    def _is_local(self, user_id: str) -> bool:
        return server_of(user_id) == self.hs.server_name

    def _split_local(self, by_user: dict[str, T]) -> tuple[dict[str, T], dict[str, dict[str, T]]]:
        """(local users' entries, remote ones grouped by server) of a per-user request."""
        local: dict[str, T] = {}
        remote: dict[str, dict[str, T]] = {}
        for u, v in by_user.items():
            if self._is_local(u):
                local[u] = v
            else:
                remote.setdefault(server_of(u), {})[u] = v
        return local, remote

    def _split_request(self, by_user: dict[str, T], timeout: Any
                       ) -> tuple[dict[str, T], dict[str, dict[str, T]], float]:
        """The shared start of query and claim, on their already parsed body: (local part,
        remote parts by server, timeout in seconds). The timeout is checked after the body."""
        timeout_s = parse_timeout(timeout)
        local, remote = self._split_local(by_user)
        return local, remote, timeout_s

    async def _ask_servers(self, remote: dict[str, T],
                           ask: Callable[[str, T, float], Awaitable[tuple[Any, dict | None]]],
                           timeout_s: float, failures: dict[str, dict]) -> list[tuple[str, Any]]:
        """ask(server, its part, timeout) -> (answer, failure) for every server at once (a slow
        one holds up nobody else); (server, answer) for each, failures go under `failures`."""
        servers = sorted(remote)
        answers = await asyncio.gather(*(ask(s, remote[s], timeout_s) for s in servers))
        for server, (_, failure) in zip(servers, answers):
            if failure is not None:
                failures[server] = failure
        return [(server, answer) for server, (answer, _) in zip(servers, answers)]

    def _may_federate(self, server: str) -> bool:
        from homeserver.handlers.federation.transport import server_allowed

        fed = self.hs.config.federation
        return fed.enabled and server_allowed(fed, server)
