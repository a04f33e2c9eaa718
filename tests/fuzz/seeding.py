"""The real IDs the fuzzer fills path parameters with (users, a room, an event, a filter, an
alias, a media ID), created through the API and repaired after operations that break them."""

from __future__ import annotations

import secrets
from typing import Any, Callable

import requests

from tests.fuzz.config import REQUEST_TIMEOUT
from tests.fuzz.report import Stats


class Fixture:
    """The real IDs the fuzzer fills in, and the requests that (re)create them."""

    def __init__(self, base_url: str, server_name: str, stats: Stats,
                 on_call: Callable[[], None] = lambda: None) -> None:
        self.base_url = base_url
        self.server_name = server_name
        self.stats = stats
        self.on_call = on_call  # the store changes: a cached fingerprint is stale
        self.session = requests.Session()
        self.main: dict[str, str] = {}
        self.other: dict[str, str] = {}
        self.throwaway: dict[str, str] = {}
        self.room_id = self.event_id = self.alias = ""
        self.filter_id = "0"
        self.media_id = "x"

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             prefix: str = "/_matrix/client/v3") -> tuple[int, Any]:
        self.stats.setup_requests += 1
        self.on_call()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = self.session.request(method, self.base_url + prefix + path, json=body,
                                 headers=headers, timeout=REQUEST_TIMEOUT)
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    def register(self, prefix: str) -> dict[str, str]:
        password = secrets.token_hex(12) + "Aa1!"  # passes any password policy
        status, data = self.call("POST", "/register", {
            "username": f"{prefix}{secrets.token_hex(4)}", "password": password,
            "auth": {"type": "m.login.dummy"}})
        if status != 200:
            raise RuntimeError(f"fuzz setup: register failed: {status} {data}")
        return {"user_id": data["user_id"], "token": data["access_token"],
                "device_id": data["device_id"], "password": password}

    def setup(self) -> None:
        self.main = self.register("fuzzmain")
        self.other = self.register("fuzzother")
        self.throwaway = self.register("fuzzthrow")
        self.new_room()
        status, data = self.call("POST", f"/user/{self.main['user_id']}/filter",
                                 {"room": {"timeline": {"limit": 5}}}, self.main["token"])
        if status == 200 and isinstance(data, dict):
            self.filter_id = str(data.get("filter_id", "0"))
        self.upload_media()

    def upload_media(self) -> None:
        """A real media ID for {serverName}/{mediaId}, when the media repository is there."""
        self.stats.setup_requests += 1
        self.on_call()
        r = self.session.post(self.base_url + "/_matrix/media/v3/upload?filename=fuzz.txt",
                              data=b"fuzz", timeout=REQUEST_TIMEOUT,
                              headers={"Authorization": f"Bearer {self.main['token']}",
                                       "Content-Type": "text/plain"})
        try:
            uri = r.json().get("content_uri", "") if r.status_code == 200 else ""
        except ValueError:
            uri = ""
        if isinstance(uri, str) and uri.startswith("mxc://") and uri.count("/") == 3:
            self.media_id = uri.rsplit("/", 1)[1]

    def new_room(self) -> None:
        token = self.main["token"]
        local = f"fuzz{secrets.token_hex(4)}"
        status, data = self.call("POST", "/createRoom", {
            "preset": "public_chat", "room_alias_name": local, "name": "fuzz room",
            "topic": "fuzzing"}, token)
        if status != 200:
            raise RuntimeError(f"fuzz setup: createRoom failed: {status} {data}")
        self.room_id = data["room_id"]
        self.alias = f"#{local}:{self.server_name}"
        self.call("POST", f"/join/{self.room_id}", {}, self.other["token"])
        status, data = self.call(
            "PUT", f"/rooms/{self.room_id}/send/m.room.message/{secrets.token_hex(6)}",
            {"msgtype": "m.text", "body": "hello fuzz"}, token)
        if status != 200:
            raise RuntimeError(f"fuzz setup: send failed: {status} {data}")
        self.event_id = data["event_id"]

    def _valid(self, user: dict[str, str]) -> bool:
        status, _ = self.call("GET", "/account/whoami", token=user["token"])
        return status == 200

    def _relogin(self, user: dict[str, str], prefix: str) -> dict[str, str]:
        if self._valid(user):
            return user
        status, data = self.call("POST", "/login", {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user["user_id"]},
            "password": user["password"]})
        if status == 200:
            return {**user, "token": data["access_token"], "device_id": data["device_id"]}
        return self.register(prefix)

    def repair(self, check_room: bool) -> None:
        """After an operation: valid tokens again, and a fresh room when writes fuzzed the last
        one out of shape (someone left, or the main user lost power)."""
        main = self._relogin(self.main, "fuzzmain")
        fresh_room = main["user_id"] != self.main["user_id"]
        self.main = main
        self.other = self._relogin(self.other, "fuzzother")
        if fresh_room or check_room and not self._room_intact():
            self.new_room()

    def _room_intact(self) -> bool:
        token, me = self.main["token"], self.main["user_id"]
        status, pl = self.call("GET", f"/rooms/{self.room_id}/state/m.room.power_levels",
                               token=token)
        if status != 200 or not isinstance(pl, dict) or not isinstance(pl.get("users"), dict):
            return False
        if pl["users"].get(me) != 100 or pl.get("state_default", 50) != 50:
            return False
        status, data = self.call("GET", f"/rooms/{self.room_id}/joined_members", token=token)
        joined = data.get("joined") if status == 200 and isinstance(data, dict) else None
        return isinstance(joined, dict) and me in joined and self.other["user_id"] in joined

    def fresh_throwaway(self) -> dict[str, str]:
        if not self._valid(self.throwaway):
            self.throwaway = self.register("fuzzthrow")
        return self.throwaway

    def path_values(self, user: dict[str, str]) -> dict[str, str]:
        return {
            "roomId": self.room_id, "roomIdOrAlias": self.room_id, "roomAlias": self.alias,
            "userId": user["user_id"], "eventId": self.event_id, "deviceId": user["device_id"],
            "filterId": self.filter_id, "serverName": self.server_name, "mediaId": self.media_id,
        }
