"""Accounts: registration, login, logout, passwords, deactivation and devices."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homeserver.errors import AuthRequired, MatrixError, forbidden
from homeserver.handlers.auth import Requester
from homeserver.handlers.password_policy import check_password
from homeserver.storage import accounts as store
from homeserver.handlers.usernames import validate_localpart
from homeserver.types import new_device_id, split_id

if TYPE_CHECKING:
    from homeserver.server import HomeServer

MAX_PASSWORD_LENGTH = 512


@dataclass
class LoginResult:
    user_id: str
    device_id: str
    access_token: str


class AccountHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        # UIA sessions: session id -> stages completed (in memory: a restart only means the
        # client starts the flow again).
        self._uia: dict[str, list[str]] = {}

    # --- user-interactive auth -------------------------------------------------------------

    def registration_flows(self) -> list[list[str]]:
        if self.hs.config.registration.mode == "token":
            return [["m.login.registration_token"]]
        return [["m.login.dummy"]]

    def _session(self, auth: dict[str, Any] | None) -> str:
        sess = auth.get("session") if isinstance(auth, dict) else None
        if isinstance(sess, str) and sess in self._uia:
            return sess
        sess = secrets.token_urlsafe(16)
        if len(self._uia) > 10_000:
            self._uia.clear()
        self._uia[sess] = []
        return sess

    def check_new_password(self, password: str) -> None:
        """The configured password policy (400 M_WEAK_PASSWORD naming what is missing)."""
        check_password(password, self.hs.config.password_policy)

    def check_registration_auth(self, auth: Any) -> None:
        flows = self.registration_flows()
        if not isinstance(auth, dict) or "type" not in auth:
            raise AuthRequired(flows, self._session(auth))
        session = self._session(auth)
        kind = auth.get("type")
        if kind == "m.login.dummy" and flows == [["m.login.dummy"]]:
            return
        if kind == "m.login.registration_token" and flows == [["m.login.registration_token"]]:
            token = auth.get("token")
            if isinstance(token, str) and any(
                secrets.compare_digest(token.encode(), t.encode())
                for t in self.hs.config.registration.tokens
            ):
                return
            raise AuthRequired(flows, session, errcode="M_FORBIDDEN",
                               error="Invalid registration token")
        raise AuthRequired(flows, session, errcode="M_UNRECOGNIZED",
                           error=f"Unsupported authentication type {kind!r}")

    async def check_password_auth(self, requester: Requester, auth: Any) -> None:
        """UIA for sensitive actions on an existing account: the account password."""
        flows = [["m.login.password"]]
        if not isinstance(auth, dict) or "type" not in auth:
            raise AuthRequired(flows, self._session(auth))
        session = self._session(auth)
        if auth.get("type") != "m.login.password":
            raise AuthRequired(flows, session, errcode="M_UNRECOGNIZED",
                               error="Only m.login.password is supported")
        ident = auth.get("identifier") or {}
        named = ident.get("user") if isinstance(ident, dict) else None
        named = named or auth.get("user")
        if named is not None and self.resolve_user(named) != requester.user_id:
            raise AuthRequired(flows, session, errcode="M_FORBIDDEN",
                               error="Authentication must be for your own account")
        password = auth.get("password")
        user = await store.get_user(requester.user_id)
        if (not isinstance(password, str) or user is None
                or not await self.hs.auth.check_password(password, user.password_hash)):
            raise AuthRequired(flows, session, errcode="M_FORBIDDEN", error="Invalid password")
        self._uia.pop(session, None)

    # --- registration ----------------------------------------------------------------------

    def resolve_user(self, name: str) -> str:
        """'alice' or '@alice:server' -> '@alice:server' (lowercased localpart for our users)."""
        if name.startswith("@"):
            parts = split_id("@", name)
            if parts is None:
                raise forbidden("Invalid username or password")
            local, server = parts
            if server == self.hs.server_name:
                return f"@{local.lower()}:{server}"
            return name
        return f"@{name.lower()}:{self.hs.server_name}"

    async def check_username(self, username: str) -> str:
        local = username.lower()
        err = validate_localpart(local, self.hs.server_name)
        if err:
            raise MatrixError(400, "M_INVALID_USERNAME", err)
        user_id = f"@{local}:{self.hs.server_name}"
        if await store.user_exists(user_id):
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken")
        return user_id

    async def register(
        self, username: str | None, password: str | None, *, device_id: str | None = None,
        device_name: str | None = None, inhibit_login: bool = False, admin: bool = False,
        appservice_id: str | None = None,
    ) -> LoginResult | str:
        if username is None:
            for _ in range(10):
                username = str(secrets.randbelow(10**9))
                if not await store.user_exists(f"@{username}:{self.hs.server_name}"):
                    break
        user_id = await self.check_username(username)
        if password is not None and len(password) > MAX_PASSWORD_LENGTH:
            raise MatrixError(400, "M_INVALID_PARAM", "Password too long")
        pw_hash = await self.hs.auth.hash_password(password) if password else None
        try:
            await store.create_user(user_id, pw_hash, is_admin=admin, appservice_id=appservice_id,
                                    displayname=user_id[1:].split(":")[0])
        except Exception as e:  # a concurrent registration of the same name won the race
            if await store.user_exists(user_id):
                raise MatrixError(400, "M_USER_IN_USE", "User ID already taken") from e
            raise
        if inhibit_login:
            return user_id
        return await self._new_session(user_id, device_id, device_name, appservice_id)

    async def _new_session(self, user_id: str, device_id: str | None, device_name: str | None,
                           appservice_id: str | None = None) -> LoginResult:
        device_id = device_id or new_device_id()
        await store.upsert_device(user_id, device_id, device_name)
        token = await self.hs.auth.issue_token(user_id, device_id, appservice_id)
        return LoginResult(user_id, device_id, token)

    # --- login / logout --------------------------------------------------------------------

    async def login_password(self, name: str, password: str, device_id: str | None,
                             device_name: str | None) -> LoginResult:
        user_id = self.resolve_user(name)
        user = await store.get_user(user_id) if split_id("@", user_id) else None
        ok = await self.hs.auth.check_password(password, user.password_hash if user else None)
        if not ok or user is None or user.deactivated:
            raise forbidden("Invalid username or password")
        if device_id is not None:
            # Logging in again with a known device replaces its old tokens.
            self.hs.auth.forget_tokens(await store.delete_devices(user_id, [device_id]))
        return await self._new_session(user_id, device_id, device_name)

    async def logout(self, requester: Requester) -> None:
        if requester.device_id:
            hashes = await store.delete_devices(requester.user_id, [requester.device_id])
        else:
            hashes = [requester.token_hash]
        await store.delete_token(requester.token_hash)
        await self._devices_gone(requester.user_id, [*hashes, requester.token_hash],
                                 [requester.device_id] if requester.device_id else [])

    async def logout_all(self, requester: Requester) -> None:
        hashes = await store.delete_user_tokens(requester.user_id)
        hashes += await store.delete_devices_except(requester.user_id, None)
        await self._devices_gone(requester.user_id, hashes)

    async def change_password(self, requester: Requester, new_password: str,
                              logout_devices: bool) -> None:
        if len(new_password) > MAX_PASSWORD_LENGTH:
            raise MatrixError(400, "M_INVALID_PARAM", "Password too long")
        self.check_new_password(new_password)
        await store.set_password_hash(requester.user_id,
                                      await self.hs.auth.hash_password(new_password))
        if logout_devices:
            hashes = await store.delete_devices_except(requester.user_id, requester.device_id)
            hashes += await store.delete_user_tokens(requester.user_id, requester.token_hash)
            await self._devices_gone(requester.user_id, hashes, keep_device=requester.device_id)

    async def deactivate(self, requester: Requester) -> None:
        await self.hs.rooms.leave_all_rooms(requester.user_id)
        hashes = await store.delete_user_tokens(requester.user_id)
        await store.deactivate(requester.user_id)
        await self._devices_gone(requester.user_id, hashes)

    # --- devices ---------------------------------------------------------------------------

    async def list_devices(self, user_id: str) -> list:
        return await store.get_devices(user_id)

    async def get_device(self, user_id: str, device_id: str):
        dev = await store.get_device(user_id, device_id)
        if dev is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown device")
        return dev

    async def rename_device(self, user_id: str, device_id: str, name: str | None) -> None:
        if not await store.update_device_name(user_id, device_id, name):
            raise MatrixError(404, "M_NOT_FOUND", "Unknown device")

    async def delete_devices(self, requester: Requester, device_ids: list[str]) -> None:
        await self._devices_gone(requester.user_id,
                                 await store.delete_devices(requester.user_id, device_ids),
                                 device_ids)

    async def _devices_gone(self, user_id: str, token_hashes: list[str],
                            device_ids: list[str] | None = None,
                            keep_device: str | None = None) -> None:
        """After devices (`device_ids`; None: all but `keep_device`) and tokens were deleted:
        cached tokens are forgotten, the devices' pushers removed, and their keys, one-time
        keys and to-device inbox go too (other users learn of it)."""
        self.hs.auth.forget_tokens(token_hashes)
        if device_ids is None or device_ids:
            await self.hs.pushers.devices_removed(user_id, device_ids, keep_device=keep_device)
        await self.hs.e2e_keys.on_devices_removed(user_id)
