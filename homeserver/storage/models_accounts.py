"""Tortoise models: accounts, devices, access tokens, profiles."""

from tortoise import fields
from tortoise.models import Model


class User(Model):
    user_id = fields.CharField(max_length=255, primary_key=True)
    password_hash = fields.CharField(max_length=100, null=True)
    displayname = fields.CharField(max_length=512, null=True)
    avatar_url = fields.CharField(max_length=512, null=True)
    is_admin = fields.BooleanField(default=False)
    deactivated = fields.BooleanField(default=False)
    appservice_id = fields.CharField(max_length=255, null=True)
    # Privacy: hidden from the user directory unless the searcher shares a room.
    searchable = fields.BooleanField(default=True)
    # Who may invite this user: "anyone" or "shared_rooms" (enforced by the room handler).
    invite_policy = fields.CharField(max_length=32, default="anyone")
    created_ts = fields.BigIntField()

    class Meta:
        table = "users"


class Device(Model):
    id = fields.BigIntField(primary_key=True)
    user_id = fields.CharField(max_length=255)
    device_id = fields.CharField(max_length=255)
    display_name = fields.CharField(max_length=512, null=True)
    last_seen_ts = fields.BigIntField(null=True)
    last_seen_ip = fields.CharField(max_length=64, null=True)
    created_ts = fields.BigIntField()

    class Meta:
        table = "devices"
        unique_together = (("user_id", "device_id"),)


class AccessToken(Model):
    id = fields.BigIntField(primary_key=True)
    # sha256 of the token: the token itself is never stored.
    token_hash = fields.CharField(max_length=64, unique=True)
    user_id = fields.CharField(max_length=255, db_index=True)
    device_id = fields.CharField(max_length=255, null=True)
    appservice_id = fields.CharField(max_length=255, null=True)
    created_ts = fields.BigIntField()

    class Meta:
        table = "access_tokens"
