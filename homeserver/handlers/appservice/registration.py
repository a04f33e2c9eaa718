"""An application service's registration, compiled: its namespaces (users, aliases, rooms) and
the questions the rest of the server asks of them."""

from __future__ import annotations

import re
from pathlib import Path

from homeserver.config import AppServiceRegistration
from homeserver.handlers.auth import hash_token
from homeserver.types import is_valid_user_id, server_of


class AppService:
    """One registration, compiled."""

    def __init__(self, reg: AppServiceRegistration, path: Path | None, server_name: str) -> None:
        self.reg = reg
        self.path = path
        self.id = reg.id
        self.url = reg.url
        self.hs_token = reg.hs_token
        self.token_hash = hash_token(reg.as_token)
        self.server_name = server_name
        self.sender = f"@{reg.sender_localpart}:{server_name}"
        self.rate_limited = reg.rate_limited
        self.receive_ephemeral = reg.receive_ephemeral
        self.protocols = tuple(reg.protocols)
        ns = reg.namespaces
        self._users = [(re.compile(n.regex), n.exclusive) for n in ns.users]
        self._aliases = [(re.compile(n.regex), n.exclusive) for n in ns.aliases]
        self._rooms = [(re.compile(n.regex), n.exclusive) for n in ns.rooms]

    @staticmethod
    def _match(patterns: list[tuple[re.Pattern, bool]], value: str, exclusive: bool) -> bool:
        # Anchored at the start, like Synapse (registration files are written for it).
        return any((ex or not exclusive) and p.match(value) for p, ex in patterns)

    @property
    def has_alias_namespaces(self) -> bool:
        return bool(self._aliases)

    @property
    def has_user_namespaces(self) -> bool:
        return bool(self._users)

    def is_interested_in_user(self, user_id: str) -> bool:
        return user_id == self.sender or self._match(self._users, user_id, False)

    def is_exclusive_user(self, user_id: str) -> bool:
        return user_id == self.sender or self._match(self._users, user_id, True)

    def is_interested_in_alias(self, alias: str) -> bool:
        return self._match(self._aliases, alias, False)

    def is_exclusive_alias(self, alias: str) -> bool:
        return self._match(self._aliases, alias, True)

    def is_interested_in_room_id(self, room_id: str) -> bool:
        return self._match(self._rooms, room_id, False)

    def owns_local_user(self, user_id: str) -> bool:
        """May act as this user (given that it exists): its sender or a local user in its
        users namespace."""
        return is_valid_user_id(user_id) and server_of(user_id) == self.server_name and \
            self.is_interested_in_user(user_id)
