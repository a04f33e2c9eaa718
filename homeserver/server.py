"""The HomeServer container: builds each component once and owns their lifecycle."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from homeserver.config import Config
from homeserver.crypto.keystore import LiveKeyring
from homeserver.events.signing import SigningKey
from homeserver.notifier import InProcessNotifier, Notifier
from homeserver.ratelimit import RateLimiter
from homeserver.storage.database import Database, IdGenerator, max_of, min_of
from homeserver.storage.e2e import max_to_device_position

log = logging.getLogger(__name__)


@dataclass
class StreamIds:
    events: IdGenerator
    state_groups: IdGenerator
    receipts: IdGenerator
    account_data: IdGenerator
    presence: IdGenerator
    # Outliers and backfilled history get negative positions: before everything, never synced.
    backfill: IdGenerator
    to_device: IdGenerator
    device_lists: IdGenerator


class HomeServer:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        from homeserver.handlers.account_data import AccountDataHandler
        from homeserver.handlers.accounts import AccountHandler
        from homeserver.handlers.auth import AuthHandler
        from homeserver.handlers.directory import DirectoryHandler
        from homeserver.handlers.events import EventHandler
        from homeserver.handlers.federation.backfill import Backfiller
        from homeserver.handlers.federation.edus import FederationEduHandler
        from homeserver.handlers.federation.history import FederationHistory
        from homeserver.handlers.federation.keyring import Keyring
        from homeserver.handlers.federation.membership import FederationMembership
        from homeserver.handlers.federation.queries import FederationQueries
        from homeserver.handlers.federation.receiver import FederationReceiver
        from homeserver.handlers.federation.sender import FederationSender
        from homeserver.handlers.federation.transport import FederationClient
        from homeserver.handlers.filters import FilterHandler
        from homeserver.handlers.media import MediaHandler
        from homeserver.handlers.messages import MessagesHandler
        from homeserver.handlers.spaces import SpacesHandler
        from homeserver.handlers.threads import ThreadsHandler
        from homeserver.handlers.notifications import NotificationHandler
        from homeserver.handlers.presence import PresenceHandler
        from homeserver.handlers.profile import ProfileHandler
        from homeserver.handlers.push_rules import PushRulesHandler
        from homeserver.handlers.pushers import PusherHandler
        from homeserver.handlers.receipts import ReceiptsHandler
        from homeserver.handlers.rooms import RoomHandler
        from homeserver.handlers.search import SearchHandler
        from homeserver.handlers.state import StateHandler
        from homeserver.handlers.sync import SyncHandler
        from homeserver.handlers.typing import TypingHandler

        self.config = config
        self.server_name = config.server_name
        self.db = Database(config.database_url, config.database.sqlite_synchronous,
                           sqlite_cache_kib=config.database.sqlite_cache_kib,
                           wal_checkpoints=True)
        if notifier is None and config.notifier.backend == "redis":
            from homeserver.notifier_redis import RedisNotifier

            notifier = RedisNotifier(config.notifier.redis_url or "",
                                     channel=f"nexa:notify:{config.server_name}")
        self.notifier: Notifier = notifier or InProcessNotifier()
        self.signing_key: SigningKey | None = None
        self.ids: StreamIds | None = None
        limits = config.limits
        self.login_limiter = RateLimiter(limits.login)
        self.register_limiter = RateLimiter(limits.registration)
        self.message_limiter = RateLimiter(limits.messages)

        self.state = StateHandler(self)
        self.auth = AuthHandler(self)
        self.events = EventHandler(self)
        self.accounts = AccountHandler(self)
        self.rooms = RoomHandler(self)
        self.messages = MessagesHandler(self)
        self.threads = ThreadsHandler(self)
        self.spaces = SpacesHandler(self)
        self.sync = SyncHandler(self)
        self.typing = TypingHandler(self)
        self.receipts = ReceiptsHandler(self)
        self.presence = PresenceHandler(self)
        self.account_data = AccountDataHandler(self)
        self.profile = ProfileHandler(self)
        self.directory = DirectoryHandler(self)
        self.filters = FilterHandler(self)
        self.push_rules = PushRulesHandler(self)
        self.notifications = NotificationHandler(self)
        self.pushers = PusherHandler(self)
        self.notifications.on_notified = self.pushers.on_notified
        self.media = MediaHandler(self)
        # Federation
        self.keyring = Keyring(self)
        self.federation_client = FederationClient(self)
        self.receiver = FederationReceiver(self)
        self.fed_membership = FederationMembership(self)
        self.fed_history = FederationHistory(self)
        self.fed_queries = FederationQueries(self)
        self.backfiller = Backfiller(self)
        self.federation_sender = FederationSender(self)
        self.federation_edus = FederationEduHandler(self)
        # End-to-end encryption
        from homeserver.handlers.device_lists import DeviceListHandler
        from homeserver.handlers.e2e_keys import E2eKeysHandler
        from homeserver.handlers.key_backup import KeyBackupHandler
        from homeserver.handlers.to_device import ToDeviceHandler

        self.device_lists = DeviceListHandler(self)
        self.e2e_keys = E2eKeysHandler(self)
        self.to_device = ToDeviceHandler(self)
        self.key_backup = KeyBackupHandler(self)
        self.events.on_outbox = self.federation_sender.wake
        # Application services (bridges): registrations validated here (ConfigError naming
        # the file), durable per-service delivery queues.
        from homeserver.handlers.appservice import AppServiceHandler

        self.appservices = AppServiceHandler(self)
        from homeserver.realtime import Realtime

        self.realtime = Realtime(self)
        self.search = SearchHandler(self)  # the blind message search index

    async def start(self) -> None:
        data_dir = self.config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.signing_key = SigningKey.load_or_generate(data_dir / "signing.key")
        # Encryption at rest: message content and media are sealed with these keys.
        self.db.at_rest = LiveKeyring.load(self.config.at_rest_key_path)
        await self.db.open()
        token = self.db.activate()
        try:
            await self._check_at_rest_keys()
            await self.search.start()  # its key, before any event can be indexed
            conn = self.db.conn()
            self.ids = StreamIds(
                events=IdGenerator(await max_of(conn, "events", "stream_ordering")),
                state_groups=IdGenerator(await max_of(conn, "state_groups", "id")),
                receipts=IdGenerator(await max_of(conn, "receipts", "stream_id")),
                account_data=IdGenerator(await max_of(conn, "account_data", "stream_id")),
                presence=IdGenerator(await max_of(conn, "presence", "stream_id")),
                backfill=IdGenerator(min(0, await min_of(conn, "events", "stream_ordering")), -1),
                to_device=IdGenerator(await max_to_device_position(conn)),
                device_lists=IdGenerator(await max_of(conn, "device_list_changes", "stream_id")),
            )
        finally:
            self.db.deactivate(token)
        notifier_start = getattr(self.notifier, "start", None)
        if notifier_start is not None:
            await notifier_start()
        await self.media.start()
        self.federation_sender.start()
        await self.appservices.start()
        await self.pushers.start()
        log.info("homeserver %s started (database %s)", self.server_name,
                 "sqlite" if self.db.is_sqlite else "postgres")

    async def _check_at_rest_keys(self) -> None:
        from homeserver.storage.sealed import WrongKeys, check_keys_match

        try:
            await check_keys_match()
        except WrongKeys:
            if self.db.at_rest.generated:  # made just now for a database that has keys
                os.unlink(self.db.at_rest.path)
            await self.db.close()
            raise

    async def stop(self) -> None:
        await self.realtime.stop()
        self.typing.stop()
        await self.presence.stop()
        await self.media.stop()
        await self.federation_sender.stop()
        await self.appservices.stop()
        await self.pushers.stop()
        await self.federation_client.close()
        await self.events.writer.close()  # what was queued commits before the database closes
        notifier_stop = getattr(self.notifier, "stop", None)
        if notifier_stop is not None:
            await notifier_stop()
        await self.db.close()
