"""Registration, login, logout, whoami, password, deactivation and devices."""

from __future__ import annotations

from pydantic import Field
from quart import Blueprint

from homeserver.api.common import Body, authed, body, client_ip, hs, json_object, respond, validate
from homeserver.errors import MatrixError, forbidden
from homeserver.handlers.password_policy import policy_json

bp = Blueprint("account", __name__)


class RegisterBody(Body):
    username: str | None = Field(None, max_length=4096)
    password: str | None = Field(None, max_length=512)
    device_id: str | None = Field(None, min_length=1, max_length=255)
    initial_device_display_name: str | None = Field(None, max_length=512)
    inhibit_login: bool = False
    auth: dict | None = None
    type: str | None = None


class LoginBody(Body):
    type: str
    identifier: dict | None = None
    user: str | None = Field(None, max_length=255)
    password: str | None = Field(None, max_length=512)
    device_id: str | None = Field(None, min_length=1, max_length=255)
    initial_device_display_name: str | None = Field(None, max_length=512)


def _login_response(res) -> dict:
    return {"user_id": res.user_id, "access_token": res.access_token, "device_id": res.device_id,
            "home_server": hs().server_name,
            "well_known": {"m.homeserver": {"base_url": hs().config.base_url}}}


@bp.route("/register", methods=["POST"])
async def register():
    from quart import request

    server = hs()
    if request.args.get("kind", "user") != "user":
        raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled")
    req = await body(RegisterBody)
    if req.type == "m.login.application_service" or (
            req.auth is not None and req.auth.get("type") == "m.login.application_service"):
        from homeserver.api.appservice import request_appservice

        res = await server.appservices.register(
            request_appservice(), req.username, device_id=req.device_id,
            device_name=req.initial_device_display_name, inhibit_login=req.inhibit_login)
        if isinstance(res, str):
            return respond({"user_id": res, "home_server": server.server_name})
        return respond(_login_response(res))
    if server.config.registration.mode == "closed":
        raise forbidden("Registration is disabled on this server")
    server.register_limiter.check(client_ip() or "?")
    if req.username is not None:
        # Names in an application service's exclusive namespace are reserved (M_EXCLUSIVE).
        server.appservices.check_user_not_exclusive(
            await server.accounts.check_username(req.username))
    if req.password:
        # Before user-interactive auth: a client learns at its first request, and nothing is
        # created with a weak password.
        server.accounts.check_new_password(req.password)
    server.accounts.check_registration_auth(req.auth)
    if not req.password:
        raise MatrixError(400, "M_MISSING_PARAM", "A password is required")
    res = await server.accounts.register(
        req.username, req.password, device_id=req.device_id,
        device_name=req.initial_device_display_name, inhibit_login=req.inhibit_login,
    )
    if isinstance(res, str):
        return respond({"user_id": res, "home_server": server.server_name})
    return respond(_login_response(res))


@bp.route("/password_policy", methods=["GET"])
async def password_policy():
    """MSC2000's policy endpoint (no authentication), read by the web UI's strength meter."""
    return respond(policy_json(hs().config.password_policy))


@bp.route("/register/available", methods=["GET"])
async def register_available():
    from quart import request

    server = hs()
    username = request.args.get("username")
    if not username:
        raise MatrixError(400, "M_MISSING_PARAM", "username is required")
    server.register_limiter.check(f"available:{client_ip()}", cost=0.1)
    server.appservices.check_user_not_exclusive(await server.accounts.check_username(username))
    return respond({"available": True})


@bp.route("/login", methods=["GET"])
async def login_flows():
    return respond({"flows": [{"type": "m.login.password"},
                              {"type": "m.login.application_service"}]})


@bp.route("/login", methods=["POST"])
async def login():
    server = hs()
    req = await body(LoginBody)
    if req.type not in ("m.login.password", "m.login.application_service"):
        raise MatrixError(400, "M_UNKNOWN", f"Unknown login type {req.type!r}")
    name = req.user
    if req.identifier is not None:
        if req.identifier.get("type") != "m.id.user" or not isinstance(
                req.identifier.get("user"), str):
            raise MatrixError(400, "M_UNKNOWN", "Only m.id.user identifiers are supported")
        name = req.identifier["user"]
    if req.type == "m.login.application_service":
        from homeserver.api.appservice import request_appservice

        service = request_appservice()
        if not name:
            raise MatrixError(400, "M_MISSING_PARAM", "identifier is required")
        return respond(_login_response(await server.appservices.login(
            service, name, req.device_id, req.initial_device_display_name)))
    if not name or req.password is None:
        raise MatrixError(400, "M_MISSING_PARAM", "user and password are required")
    server.login_limiter.check(client_ip() or "?")
    res = await server.accounts.login_password(name, req.password, req.device_id,
                                               req.initial_device_display_name)
    return respond(_login_response(res))


@bp.route("/logout", methods=["POST"])
@authed
async def logout(requester):
    await hs().accounts.logout(requester)
    return respond({})


@bp.route("/logout/all", methods=["POST"])
@authed
async def logout_all(requester):
    await hs().accounts.logout_all(requester)
    return respond({})


@bp.route("/account/whoami", methods=["GET"])
@authed
async def whoami(requester):
    out = {"user_id": requester.user_id, "is_guest": False}
    if requester.device_id:
        out["device_id"] = requester.device_id
    return respond(out)


class PasswordBody(Body):
    new_password: str = Field(min_length=1, max_length=512)
    logout_devices: bool = True
    auth: dict | None = None


@bp.route("/account/password", methods=["POST"])
@authed
async def change_password(requester):
    data = await json_object()
    new_password = data.get("new_password")
    if isinstance(new_password, str) and 0 < len(new_password) <= 512:
        hs().accounts.check_new_password(new_password)  # before UIA: no password asked in vain
    await hs().accounts.check_password_auth(requester, data.get("auth"))
    req = validate(PasswordBody, data)
    await hs().accounts.change_password(requester, req.new_password, req.logout_devices)
    return respond({})


@bp.route("/account/deactivate", methods=["POST"])
@authed
async def deactivate(requester):
    data = await json_object(optional=True)
    await hs().accounts.check_password_auth(requester, data.get("auth"))
    await hs().accounts.deactivate(requester)
    return respond({"id_server_unbind_result": "no-support"})


@bp.route("/account/3pid", methods=["GET"])
@authed
async def threepids(requester):
    return respond({"threepids": []})


# --- devices ---------------------------------------------------------------------------------

def _device_json(d) -> dict:
    return {"device_id": d.device_id, "display_name": d.display_name,
            "last_seen_ip": d.last_seen_ip, "last_seen_ts": d.last_seen_ts}


@bp.route("/devices", methods=["GET"])
@authed
async def list_devices(requester):
    devices = await hs().accounts.list_devices(requester.user_id)
    return respond({"devices": [_device_json(d) for d in devices]})


@bp.route("/devices/<device_id>", methods=["GET"])
@authed
async def get_device(requester, device_id):
    return respond(_device_json(await hs().accounts.get_device(requester.user_id, device_id)))


class DeviceUpdate(Body):
    display_name: str | None = Field(None, max_length=512)


@bp.route("/devices/<device_id>", methods=["PUT"])
@authed
async def update_device(requester, device_id):
    req = await body(DeviceUpdate, optional=True)
    # An application service creates devices for its users this way (spec 1.17): 201.
    if await hs().appservices.create_device(requester, device_id, req.display_name):
        return respond({}, 201)
    await hs().accounts.rename_device(requester.user_id, device_id, req.display_name)
    return respond({})


@bp.route("/devices/<device_id>", methods=["DELETE"])
@authed
async def delete_device(requester, device_id):
    data = await json_object(optional=True)
    await hs().accounts.get_device(requester.user_id, device_id)
    if requester.appservice_id is None:  # no UIA for application services (spec 1.17)
        await hs().accounts.check_password_auth(requester, data.get("auth"))
    await hs().accounts.delete_devices(requester, [device_id])
    return respond({})


class DeleteDevices(Body):
    devices: list[str] = Field(max_length=1000)
    auth: dict | None = None


@bp.route("/delete_devices", methods=["POST"])
@authed
async def delete_devices(requester):
    data = await json_object()
    req = validate(DeleteDevices, data)
    if requester.appservice_id is None:  # no UIA for application services (spec 1.17)
        await hs().accounts.check_password_auth(requester, data.get("auth"))
    await hs().accounts.delete_devices(requester, req.devices)
    return respond({})
