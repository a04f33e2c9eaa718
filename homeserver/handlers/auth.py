"""Passwords, access tokens and the requester behind each authenticated request."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import bcrypt

from homeserver.errors import MatrixError
from homeserver.handlers.lru import LRU
from homeserver.storage import accounts as account_store

if TYPE_CHECKING:
    from homeserver.server import HomeServer

# A real bcrypt hash to compare against when the user does not exist, so that a login for an
# unknown user costs the same time as one with a wrong password.
_DUMMY_HASH = bcrypt.hashpw(b"nexa-dummy-password", bcrypt.gensalt(4))


@dataclass(frozen=True)
class Requester:
    user_id: str
    device_id: str | None
    token_hash: str
    appservice_id: str | None = None
    is_admin: bool = False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_access_token() -> str:
    # 256 random bits.
    return "nx_" + secrets.token_urlsafe(32)


def _bcrypt_input(password: str) -> bytes:
    """bcrypt reads at most 72 bytes; bcrypt >= 5 raises instead of ignoring the rest, so cut
    explicitly (the same hashes as before, and as Synapse's)."""
    return password.encode("utf-8", "surrogatepass")[:72]


class AuthHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._tokens: LRU = LRU(20_000)  # token hash -> Requester

    async def hash_password(self, password: str) -> str:
        rounds = self.hs.config.security.bcrypt_rounds
        pw = _bcrypt_input(password)
        # bcrypt is slow by design: keep it off the event loop.
        hashed = await asyncio.to_thread(bcrypt.hashpw, pw, bcrypt.gensalt(rounds))
        return hashed.decode()

    async def check_password(self, password: str, password_hash: str | None) -> bool:
        pw = _bcrypt_input(password)
        target = password_hash.encode() if password_hash else _DUMMY_HASH
        ok = await asyncio.to_thread(bcrypt.checkpw, pw, target)
        return ok and password_hash is not None

    async def issue_token(self, user_id: str, device_id: str | None,
                          appservice_id: str | None = None) -> str:
        token = new_access_token()
        await account_store.add_token(hash_token(token), user_id, device_id, appservice_id)
        return token

    async def requester_for_token(self, token: str, *, user_id: str | None = None,
                                  device_id: str | None = None) -> Requester:
        """The requester behind an access token. An application service's as_token acts as
        its sender, or (`user_id`, `device_id`: identity assertion) as one of its users."""
        appservices = getattr(self.hs, "appservices", None)
        service = appservices.for_token(token) if appservices is not None else None
        if service is not None:
            return await appservices.requester(service, user_id, device_id)
        th = hash_token(token)
        cached = self._tokens.get_item(th)
        if cached is not None:
            return cached
        row = await account_store.get_token(th)
        # Compare digests in constant time even though the lookup was by hash.
        if row is None or not hmac.compare_digest(row.token_hash, th):
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown access token", soft_logout=False)
        user = await account_store.get_user(row.user_id)
        if user is None or user.deactivated:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown access token", soft_logout=False)
        req = Requester(row.user_id, row.device_id, th, row.appservice_id, user.is_admin)
        self._tokens.put(th, req)
        return req

    def forget_tokens(self, hashes: list[str]) -> None:
        for h in hashes:
            self._tokens.pop(h, None)
