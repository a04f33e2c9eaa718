"""Cross-signing: a user's master, self-signing and user-signing keys (POST
/keys/device_signing/upload), and the signatures users upload on their own devices and master
key and on other users' master keys (POST /keys/signatures/upload). Every signature is verified
before the one transaction that stores it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from homeserver.storage.transactions import in_transaction

from homeserver.errors import MatrixError, bad_json, forbidden, invalid_param
from homeserver.events.signing import SignatureError, verify_json
from homeserver.handlers.auth import Requester
from homeserver.handlers.e2e_keys_common import (KEY_TYPES, MAX_DEVICE_KEYS_BYTES,
                                                 MAX_QUERY_USERS, E2eKeysPart, canonical,
                                                 is_ed25519_public, public_key_of, signable)
from homeserver.storage import e2e as store
from homeserver.types import is_valid_user_id

if TYPE_CHECKING:
    from homeserver.handlers.e2e_keys_query import KeyQueries
    from homeserver.server import HomeServer


class CrossSigning(E2eKeysPart):
    def __init__(self, hs: HomeServer, queries: KeyQueries) -> None:
        super().__init__(hs)
        self.queries = queries  # other users' master keys, local or remote

    def _parse_cross_signing_key(self, name: str, key: Any, user_id: str) -> dict:
        usage = KEY_TYPES[name]
        if not isinstance(key, dict):
            raise bad_json(f"{name} must be an object")
        if key.get("user_id") != user_id:
            raise invalid_param(f"{name}.user_id must be the user uploading it")
        usages = key.get("usage")
        if not isinstance(usages, list) or usage not in usages or not all(
                u in KEY_TYPES.values() for u in usages):
            raise bad_json(f"{name}.usage must contain {usage!r}")
        keys = key.get("keys")
        if not isinstance(keys, dict) or len(keys) != 1:
            raise bad_json(f"{name}.keys must hold exactly one key")
        (key_id, pub), = keys.items()
        if not isinstance(key_id, str) or key_id != f"ed25519:{pub}" or not is_ed25519_public(pub):
            raise bad_json(f"{name}.keys must be {{\"ed25519:<public key>\": \"<public key>\"}}")
        if "signatures" in key and not isinstance(key["signatures"], dict):
            raise bad_json(f"{name}.signatures must be an object")
        clean = {k: v for k, v in key.items() if k != "unsigned"}
        if len(canonical(clean, name)) > MAX_DEVICE_KEYS_BYTES:
            raise MatrixError(413, "M_TOO_LARGE", f"{name} is too large")
        return clean

    async def upload_signing_keys(self, requester: Requester, body: dict[str, Any]) -> None:
        user_id = requester.user_id
        given = {name: self._parse_cross_signing_key(name, body[name], user_id)
                 for name in KEY_TYPES if body.get(name) is not None}
        if not given:
            return
        stored = (await store.get_cross_signing_keys([user_id])).get(user_id, {})
        master = given.get("master_key")
        if master is None and "master" in stored:
            master = orjson.loads(stored["master"])
        if master is None:
            raise MatrixError(400, "M_MISSING_PARAM", "No master key available to verify "
                                                      "the signature")
        master_pub = public_key_of(master)
        for name in ("self_signing_key", "user_signing_key"):
            if name in given:
                try:
                    verify_json(given[name], user_id, f"ed25519:{master_pub}", master_pub)
                except SignatureError as e:
                    raise MatrixError(400, "M_INVALID_SIGNATURE",
                                      f"{name} is not signed by the master key: {e}") from None
        texts = {KEY_TYPES[n]: canonical(k, n) for n, k in given.items()}
        changed = {t: text for t, text in texts.items() if stored.get(t) != text}
        if not changed:
            return  # the same keys again: idempotent, no authentication needed
        if "master" in stored and requester.appservice_id is None:
            await self.hs.accounts.check_password_auth(requester, body.get("auth"))
        devices = (await store.existing_devices([user_id])).get(user_id, set())
        for n, k in given.items():
            if public_key_of(k) in devices:
                raise forbidden("Key ID in use: a cross-signing key equals a device ID")
        old_ids = [f"ed25519:{public_key_of(orjson.loads(stored[t]))}"
                   for t in changed if t in stored]

        async def write(conn) -> None:
            if old_ids:  # signatures made by replaced keys no longer mean anything
                await store.delete_signatures_by_signer_key(user_id, old_ids, conn)
            if "master" in changed and "master" in stored:
                await store.delete_signatures_on_target(
                    user_id, public_key_of(orjson.loads(stored["master"])), conn)
            for t, text in changed.items():
                key = orjson.loads(text)
                await store.set_cross_signing_key(user_id, t, public_key_of(key), text, conn)

        await self.hs.device_lists.local_change(user_id, [""], write)

    async def upload_signatures(self, requester: Requester,
                                body: dict[str, Any]) -> dict[str, Any]:
        me = requester.user_id
        failures: dict[str, dict[str, dict]] = {}
        rows: list[tuple[str, str, str, str, str]] = []
        signed_devices: list[str] = []
        own_master_signed = False
        if len(body) > MAX_QUERY_USERS:
            raise MatrixError(413, "M_TOO_LARGE", "Too many users")
        mine = (await store.get_cross_signing_keys([me])).get(me, {})
        for target_user, by_key in body.items():
            if not is_valid_user_id(target_user):
                raise invalid_param(f"{target_user[:80]!r} is not a valid user ID")
            if not isinstance(by_key, dict):
                raise bad_json(f"{target_user}: must map key IDs to signed objects")
            for key_id, obj in by_key.items():
                try:
                    new, kind = await self._check_signature(me, mine, target_user, key_id, obj)
                except MatrixError as e:
                    failures.setdefault(target_user, {})[key_id] = {
                        "errcode": e.errcode, "error": e.error}
                    continue
                rows += new
                if kind == "device":
                    signed_devices.append(key_id)
                elif kind == "own_master":
                    own_master_signed = True
        if rows:
            async def write(conn) -> None:
                await store.add_signatures(rows, conn)

            changes = signed_devices + ([""] if own_master_signed else [])
            if changes:
                await self.hs.device_lists.local_change(me, changes, write)
            else:
                async with in_transaction() as conn:
                    await write(conn)
        return {"failures": failures}

    async def _check_signature(self, me: str, mine: dict[str, str], target_user: str,
                               key_id: str, obj: Any) -> tuple[list[tuple], str]:
        if not isinstance(obj, dict) or not isinstance(obj.get("signatures"), dict):
            raise bad_json("The signed object must be an object with signatures")
        my_sigs = obj["signatures"].get(me)
        if not isinstance(my_sigs, dict) or not my_sigs:
            raise MatrixError(400, "M_INVALID_SIGNATURE", "No signature from the uploader")
        if not key_id or len(key_id) > 255 or "\x00" in key_id:
            raise invalid_param("Invalid key ID")
        if target_user == me:
            master = orjson.loads(mine["master"]) if "master" in mine else None
            if master is not None and key_id == public_key_of(master):
                # Our own master key, signed by one of our devices.
                if canonical(signable(obj), "key") != canonical(signable(master), "key"):
                    raise invalid_param("The signed object does not match the master key")
                out = []
                for sig_key_id, sig in my_sigs.items():
                    alg, _, dev = str(sig_key_id).partition(":")
                    if alg != "ed25519" or not isinstance(sig, str) or not dev \
                            or len(dev) > 255 or "\x00" in dev:
                        continue
                    dk_text = await store.get_device_keys(me, dev)
                    if dk_text is None:
                        continue
                    dk = orjson.loads(dk_text)
                    try:
                        verify_json(obj, me, sig_key_id, dk["keys"][f"ed25519:{dev}"])
                    except (SignatureError, KeyError):
                        raise MatrixError(400, "M_INVALID_SIGNATURE",
                                          f"Invalid signature by {sig_key_id}") from None
                    out.append((me, sig_key_id, me, key_id, sig))
                if not out:
                    raise MatrixError(400, "M_INVALID_SIGNATURE", "No signature by a device")
                return out, "own_master"
            # One of our devices, signed by our self-signing key.
            dk_text = await store.get_device_keys(me, key_id)
            if dk_text is None:
                raise MatrixError(404, "M_NOT_FOUND", "Unknown device")
            if "self_signing" not in mine:
                raise MatrixError(400, "M_MISSING_PARAM", "No self-signing key uploaded")
            if canonical(signable(obj), "key") != canonical(signable(orjson.loads(dk_text)),
                                                                "key"):
                raise invalid_param("The signed object does not match the device keys")
            ssk_pub = public_key_of(orjson.loads(mine["self_signing"]))
            return [self._verified(obj, me, ssk_pub, key_id)], "device"
        # Someone else's master key, signed by our user-signing key.
        if "user_signing" not in mine:
            raise MatrixError(400, "M_MISSING_PARAM", "No user-signing key uploaded")
        master = await self.queries.master_key_of(target_user)
        if master is None or key_id != public_key_of(master):
            raise MatrixError(404, "M_NOT_FOUND", "Unknown master key")
        if canonical(signable(obj), "key") != canonical(signable(master), "key"):
            raise invalid_param("The signed object does not match the master key")
        usk_pub = public_key_of(orjson.loads(mine["user_signing"]))
        row = self._verified(obj, me, usk_pub, key_id)
        return [(row[0], row[1], target_user, row[3], row[4])], "other_master"

    @staticmethod
    def _verified(obj: dict, me: str, pub: str, target_key_id: str) -> tuple:
        sig_key_id = f"ed25519:{pub}"
        try:
            verify_json(obj, me, sig_key_id, pub)
        except SignatureError as e:
            raise MatrixError(400, "M_INVALID_SIGNATURE", str(e)) from None
        return (me, sig_key_id, me, target_key_id, obj["signatures"][me][sig_key_id])
