"""Queries for accounts, devices and access tokens."""

from __future__ import annotations

from tortoise.expressions import Q

from homeserver.storage.models_accounts import AccessToken, Device, User
from homeserver.types import now_ms


async def get_user(user_id: str) -> User | None:
    return await User.get_or_none(user_id=user_id)


async def user_exists(user_id: str) -> bool:
    return await User.filter(user_id=user_id).exists()


async def create_user(
    user_id: str, password_hash: str | None, *, is_admin: bool = False,
    appservice_id: str | None = None, displayname: str | None = None,
) -> User:
    return await User.create(
        user_id=user_id, password_hash=password_hash, is_admin=is_admin,
        appservice_id=appservice_id, displayname=displayname, created_ts=now_ms(),
    )


async def set_password_hash(user_id: str, password_hash: str) -> None:
    await User.filter(user_id=user_id).update(password_hash=password_hash)


async def set_profile(user_id: str, **fields: str | None) -> None:
    await User.filter(user_id=user_id).update(**fields)


async def deactivate(user_id: str) -> None:
    await User.filter(user_id=user_id).update(deactivated=True, password_hash=None)
    await AccessToken.filter(user_id=user_id).delete()
    await Device.filter(user_id=user_id).delete()


# --- devices -------------------------------------------------------------------------------

async def upsert_device(user_id: str, device_id: str, display_name: str | None) -> Device:
    dev = await Device.get_or_none(user_id=user_id, device_id=device_id)
    if dev is None:
        dev = await Device.create(
            user_id=user_id, device_id=device_id, display_name=display_name, created_ts=now_ms()
        )
    elif display_name is not None and dev.display_name != display_name:
        dev.display_name = display_name
        await dev.save(update_fields=["display_name"])
    return dev


async def get_devices(user_id: str) -> list[Device]:
    return await Device.filter(user_id=user_id).order_by("device_id")


# Longer IDs cannot be stored, so they match nothing (and tortoise rejects them in filters).
MAX_DEVICE_ID = 255


async def get_device(user_id: str, device_id: str) -> Device | None:
    if len(device_id) > MAX_DEVICE_ID:
        return None
    return await Device.get_or_none(user_id=user_id, device_id=device_id)


async def update_device_name(user_id: str, device_id: str, name: str | None) -> int:
    if len(device_id) > MAX_DEVICE_ID:
        return 0
    return await Device.filter(user_id=user_id, device_id=device_id).update(display_name=name)


async def delete_devices(user_id: str, device_ids: list[str]) -> list[str]:
    """Deletes devices and their tokens; returns the token hashes removed (for cache eviction)."""
    device_ids = [d for d in device_ids if len(d) <= MAX_DEVICE_ID]
    hashes = await AccessToken.filter(user_id=user_id, device_id__in=device_ids).values_list(
        "token_hash", flat=True
    )
    await AccessToken.filter(user_id=user_id, device_id__in=device_ids).delete()
    await Device.filter(user_id=user_id, device_id__in=device_ids).delete()
    return list(hashes)


async def touch_device(user_id: str, device_id: str, ip: str | None) -> None:
    await Device.filter(user_id=user_id, device_id=device_id).update(
        last_seen_ts=now_ms(), last_seen_ip=ip
    )


# --- access tokens -------------------------------------------------------------------------

async def add_token(token_hash: str, user_id: str, device_id: str | None,
                    appservice_id: str | None = None) -> None:
    await AccessToken.create(
        token_hash=token_hash, user_id=user_id, device_id=device_id,
        appservice_id=appservice_id, created_ts=now_ms(),
    )


async def get_token(token_hash: str) -> AccessToken | None:
    return await AccessToken.get_or_none(token_hash=token_hash)


async def delete_token(token_hash: str) -> None:
    await AccessToken.filter(token_hash=token_hash).delete()


async def delete_user_tokens(user_id: str, except_hash: str | None = None) -> list[str]:
    q = AccessToken.filter(user_id=user_id)
    if except_hash:
        q = q.exclude(token_hash=except_hash)
    hashes = list(await q.values_list("token_hash", flat=True))
    await AccessToken.filter(token_hash__in=hashes).delete()
    return hashes


async def delete_devices_except(user_id: str, keep_device: str | None) -> list[str]:
    """Logs out every other session (password change): devices and their tokens go."""
    q = Device.filter(user_id=user_id)
    if keep_device:
        q = q.exclude(device_id=keep_device)
    ids = list(await q.values_list("device_id", flat=True))
    return await delete_devices(user_id, ids)


# --- user directory ------------------------------------------------------------------------

async def search_users(term: str, limit: int) -> list[User]:
    """Candidates whose ID or display name contains the term (ranking is the handler's job)."""
    return await User.filter(
        Q(user_id__icontains=term) | Q(displayname__icontains=term), deactivated=False
    ).limit(limit)
