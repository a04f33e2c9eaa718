"""Account data, push rules, filters and capabilities: parse, authenticate, call the handler."""

from __future__ import annotations

from quart import Blueprint, request

from homeserver.api.common import Requester, authed, hs, json_object, respond
from homeserver.errors import missing_param, unrecognized
from homeserver.events.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS

bp = Blueprint("user_data", __name__)


# --- account data --------------------------------------------------------------------------

@bp.route("/user/<user_id>/account_data/<type_>", methods=["GET"])
@authed
async def get_account_data(requester: Requester, user_id: str, type_: str):
    return respond(await hs().account_data.get(requester.user_id, user_id, None, type_))


@bp.route("/user/<user_id>/account_data/<type_>", methods=["PUT"])
@authed
async def put_account_data(requester: Requester, user_id: str, type_: str):
    content = await json_object()
    await hs().account_data.put(requester.user_id, user_id, None, type_, content)
    return respond({})


@bp.route("/user/<user_id>/rooms/<room_id>/account_data/<type_>", methods=["GET"])
@authed
async def get_room_account_data(requester: Requester, user_id: str, room_id: str, type_: str):
    return respond(await hs().account_data.get(requester.user_id, user_id, room_id, type_))


@bp.route("/user/<user_id>/rooms/<room_id>/account_data/<type_>", methods=["PUT"])
@authed
async def put_room_account_data(requester: Requester, user_id: str, room_id: str, type_: str):
    content = await json_object()
    await hs().account_data.put(requester.user_id, user_id, room_id, type_, content)
    return respond({})


@bp.route("/user/<user_id>/rooms/<room_id>/tags", methods=["GET"])
@authed
async def get_tags(requester: Requester, user_id: str, room_id: str):
    return respond(await hs().account_data.get_tags(requester.user_id, user_id, room_id))


@bp.route("/user/<user_id>/rooms/<room_id>/tags/<tag>", methods=["PUT"])
@authed
async def put_tag(requester: Requester, user_id: str, room_id: str, tag: str):
    body = await json_object()
    await hs().account_data.set_tag(requester.user_id, user_id, room_id, tag, body)
    return respond({})


@bp.route("/user/<user_id>/rooms/<room_id>/tags/<tag>", methods=["DELETE"])
@authed
async def delete_tag(requester: Requester, user_id: str, room_id: str, tag: str):
    await hs().account_data.set_tag(requester.user_id, user_id, room_id, tag, None)
    return respond({})


# --- push rules ----------------------------------------------------------------------------

@bp.route("/pushrules/", methods=["GET"], strict_slashes=False)
@authed
async def get_push_rules(requester: Requester):
    return respond(await hs().push_rules.push_rules_content(requester.user_id))


@bp.route("/pushrules/global/", methods=["GET"], strict_slashes=False)
@authed
async def get_global_push_rules(requester: Requester):
    return respond(await hs().push_rules.ruleset(requester.user_id))


@bp.route("/pushrules/global/<kind>/<rule_id>", methods=["GET"])
@authed
async def get_push_rule(requester: Requester, kind: str, rule_id: str):
    return respond(await hs().push_rules.get_rule(requester.user_id, kind, rule_id))


@bp.route("/pushrules/global/<kind>/<rule_id>", methods=["PUT"])
@authed
async def put_push_rule(requester: Requester, kind: str, rule_id: str):
    data = await json_object()
    await hs().push_rules.set_rule(requester.user_id, kind, rule_id, data,
                                   before=request.args.get("before"),
                                   after=request.args.get("after"))
    return respond({})


@bp.route("/pushrules/global/<kind>/<rule_id>", methods=["DELETE"])
@authed
async def delete_push_rule(requester: Requester, kind: str, rule_id: str):
    await hs().push_rules.delete_rule(requester.user_id, kind, rule_id)
    return respond({})


@bp.route("/pushrules/global/<kind>/<rule_id>/<attr>", methods=["GET"])
@authed
async def get_push_rule_attr(requester: Requester, kind: str, rule_id: str, attr: str):
    if attr not in ("enabled", "actions"):
        raise unrecognized()
    rule = await hs().push_rules.get_rule(requester.user_id, kind, rule_id)
    return respond({attr: rule[attr]})


@bp.route("/pushrules/global/<kind>/<rule_id>/<attr>", methods=["PUT"])
@authed
async def put_push_rule_attr(requester: Requester, kind: str, rule_id: str, attr: str):
    if attr not in ("enabled", "actions"):
        raise unrecognized()
    data = await json_object()
    if attr not in data:
        raise missing_param(f"{attr} is required")
    handler = hs().push_rules
    if attr == "enabled":
        await handler.set_enabled(requester.user_id, kind, rule_id, data["enabled"])
    else:
        await handler.set_actions(requester.user_id, kind, rule_id, data["actions"])
    return respond({})


# --- filters -------------------------------------------------------------------------------

@bp.route("/user/<user_id>/filter", methods=["POST"])
@authed
async def post_filter(requester: Requester, user_id: str):
    data = await json_object()
    filter_id = await hs().filters.create_filter(requester.user_id, user_id, data)
    return respond({"filter_id": filter_id})


@bp.route("/user/<user_id>/filter/<filter_id>", methods=["GET"])
@authed
async def get_filter(requester: Requester, user_id: str, filter_id: str):
    return respond(await hs().filters.get_filter_json(requester.user_id, user_id, filter_id))


# --- capabilities --------------------------------------------------------------------------

@bp.route("/capabilities", methods=["GET"])
@authed
async def get_capabilities(requester: Requester):
    return respond({"capabilities": {
        "m.change_password": {"enabled": True},
        "m.room_versions": {
            "default": DEFAULT_ROOM_VERSION,
            "available": {v: "stable" for v in KNOWN_ROOM_VERSIONS},
        },
        "m.set_displayname": {"enabled": True},
        "m.set_avatar_url": {"enabled": True},
        "m.3pid_changes": {"enabled": False},
    }})
