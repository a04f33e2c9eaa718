"""Tortoise models: end-to-end encryption. Keys and ciphertext only; the server never sees
plaintext. Key objects are stored as the JSON the client signed, so they are served verbatim."""

from tortoise import fields
from tortoise.models import Model


class DeviceKeys(Model):
    """Identity keys of a local device (signatures checked against its own ed25519 key)."""

    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255)
    device_id = fields.CharField(max_length=255)
    key_json = fields.TextField()
    ts = fields.BigIntField()

    class Meta:
        table = "e2e_device_keys"
        unique_together = (("user_id", "device_id"),)


class OneTimeKey(Model):
    """An unclaimed one-time key, a claim deletes the row it returns (id = upload order)."""

    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255)
    device_id = fields.CharField(max_length=255)
    algorithm = fields.CharField(max_length=255)
    key_id = fields.CharField(max_length=255)
    key_json = fields.TextField()
    ts = fields.BigIntField()

    class Meta:
        table = "e2e_one_time_keys"
        unique_together = (("user_id", "device_id", "algorithm", "key_id"),)
        indexes = (("user_id", "device_id", "algorithm", "id"),)


class FallbackKey(Model):
    """At most one per device and algorithm, handed out when no one-time key is left."""

    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255)
    device_id = fields.CharField(max_length=255)
    algorithm = fields.CharField(max_length=255)
    key_id = fields.CharField(max_length=255)
    key_json = fields.TextField()
    used = fields.BooleanField(default=False)
    ts = fields.BigIntField()

    class Meta:
        table = "e2e_fallback_keys"
        unique_together = (("user_id", "device_id", "algorithm"),)


class CrossSigningKey(Model):
    """A local user master, self_signing or user_signing key."""

    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255)
    key_type = fields.CharField(max_length=32)
    public_key = fields.CharField(max_length=255)
    key_json = fields.TextField()
    ts = fields.BigIntField()

    class Meta:
        table = "e2e_cross_signing_keys"
        unique_together = (("user_id", "key_type"),)


class CrossSigningSignature(Model):
    """A signature uploaded through /keys/signatures/upload, merged into keys when served."""

    id = fields.BigIntField(primary_key=True)
    signer_user_id = fields.CharField(max_length=255)
    signer_key_id = fields.CharField(max_length=255)
    target_user_id = fields.CharField(max_length=255)
    target_key_id = fields.CharField(max_length=255)
    signature = fields.TextField()
    ts = fields.BigIntField()

    class Meta:
        table = "e2e_cross_signing_signatures"
        unique_together = (("signer_user_id", "signer_key_id", "target_user_id",
                            "target_key_id"),)
        indexes = (("target_user_id", "target_key_id"),)


class DeviceListChange(Model):
    """The device list stream: a user (local, or remote and reported by an EDU) changed a
    device or cross-signing keys at this position. device_id is empty for cross-signing."""

    id = fields.BigIntField(primary_key=True)
    stream_id = fields.BigIntField(db_index=True)
    user_id = fields.CharField(max_length=255)
    device_id = fields.CharField(max_length=255, default="")
    ts = fields.BigIntField()

    class Meta:
        table = "device_list_changes"
        indexes = (("user_id", "stream_id"),)


class RemoteDeviceList(Model):
    """Cached device list of a remote user who shares a room with a local user: kept current
    by m.device_list_update EDUs, dropped when an EDU shows a gap (the next query refetches).
    valid_from is the local events stream position when it was fetched."""

    user_id = fields.CharField(max_length=255, primary_key=True)
    stream_id = fields.BigIntField()
    content = fields.TextField()
    valid_from = fields.BigIntField()
    ts = fields.BigIntField()

    class Meta:
        table = "e2e_remote_device_lists"


class DeviceInboxMessage(Model):
    """A to-device message waiting for a local device, deleted once the device acknowledged
    it by syncing with a token past its position."""

    id = fields.BigIntField(primary_key=True)
    stream_id = fields.BigIntField()
    user_id = fields.CharField(max_length=255)
    device_id = fields.CharField(max_length=255)
    sender = fields.CharField(max_length=255)
    type = fields.CharField(max_length=255)
    content = fields.TextField()
    ts = fields.BigIntField()

    class Meta:
        table = "device_inbox"
        indexes = (("user_id", "device_id", "stream_id"),)


class ToDeviceTxn(Model):
    """A to-device send already applied: (sender device, txnId) from local clients (origin
    empty), (origin, sender, message_id) from other servers. stream_id also keeps the stream
    position durable after the inbox has been emptied."""

    id = fields.BigIntField(primary_key=True)
    origin = fields.CharField(max_length=255, default="")
    user_id = fields.CharField(max_length=255)
    device_id = fields.CharField(max_length=255, default="")
    txn_id = fields.CharField(max_length=255)
    stream_id = fields.BigIntField()
    ts = fields.BigIntField()

    class Meta:
        table = "to_device_txns"
        unique_together = (("origin", "user_id", "device_id", "txn_id"),)


class RoomKeyBackupVersion(Model):
    """A server-side key backup, the version string is the id."""

    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255, db_index=True)
    algorithm = fields.CharField(max_length=255)
    auth_data = fields.TextField()
    etag = fields.BigIntField(default=0)
    deleted = fields.BooleanField(default=False)
    ts = fields.BigIntField()

    class Meta:
        table = "room_key_backup_versions"


class RoomKeyBackupKey(Model):
    """One backed-up (encrypted) megolm session key."""

    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255)
    version = fields.BigIntField()
    room_id = fields.CharField(max_length=255)
    session_id = fields.CharField(max_length=255)
    first_message_index = fields.BigIntField()
    forwarded_count = fields.BigIntField()
    is_verified = fields.BooleanField()
    session_data = fields.TextField()

    class Meta:
        table = "room_key_backup_keys"
        unique_together = (("user_id", "version", "room_id", "session_id"),)
