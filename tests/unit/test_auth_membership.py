"""Authorisation rules for m.room.member: join, invite, leave, ban, knock."""

import pytest

from homeserver.events.signing import SigningKey, sign_json

from .event_builders import ALICE, BOB, CAROL, DAVE, Room, public_room, rejected

MEMBER = "m.room.member"
VERSIONS = ["6", "7", "8", "9", "10", "11"]


def join(room, user, **extra):
    return room.check(MEMBER, user, {"membership": "join", **extra}, user)


@pytest.fixture(params=VERSIONS)
def version(request):
    return request.param


# --- joins ----------------------------------------------------------------------

def test_join_public_room_accepted(version):
    join(public_room(version), BOB)


def test_join_invite_only_room_rejected_unless_invited(version):
    room = Room(version)
    room.join_rules(ALICE, "invite")
    assert "not invited" in rejected(join, room, BOB)
    room.member(BOB, "invite", sender=ALICE)
    join(room, BOB)


def test_join_without_join_rules_event_behaves_as_invite(version):
    room = Room(version)
    rejected(join, room, BOB)
    room.member(BOB, "invite", sender=ALICE)
    join(room, BOB)


def test_join_after_ban_rejected_even_in_public_room(version):
    room = public_room(version)
    room.member(BOB, "join")
    room.member(BOB, "ban", sender=ALICE)
    assert "banned" in rejected(join, room, BOB)


def test_join_on_behalf_of_someone_else_rejected(version):
    room = public_room(version)
    reason = rejected(room.check, MEMBER, ALICE, {"membership": "join"}, BOB)
    assert "on behalf" in reason


def test_unknown_join_rule_and_missing_membership_rejected(version):
    room = Room(version)
    room.join_rules(ALICE, "private")
    rejected(join, room, BOB)
    assert "membership" in rejected(room.check, MEMBER, BOB, {}, BOB)
    assert "membership" in rejected(room.check, MEMBER, BOB, {"membership": "dance"}, BOB)


@pytest.mark.parametrize("rule", ["restricted", "knock_restricted"])
def test_restricted_join_needs_a_joined_authoriser_with_invite_power(version, rule):
    room = Room(version)
    room.power_levels(ALICE, {"users": {ALICE: 100}, "invite": 50})
    room.join_rules(ALICE, rule, allow=[{"type": "m.room_membership", "room_id": "!s:a.test"}])
    if not _knows_rule(room, rule):  # an unknown join rule lets nobody in uninvited
        rejected(join, room, BOB, join_authorised_via_users_server=ALICE)
        return
    room.member(CAROL, "invite", sender=ALICE)
    room.member(CAROL, "join")  # Carol: joined, power 0 < invite 50

    assert "join_authorised_via" in rejected(join, room, BOB)
    assert "may not invite" in rejected(join, room, BOB, join_authorised_via_users_server=CAROL)
    assert "not joined" in rejected(join, room, BOB, join_authorised_via_users_server=DAVE)
    join(room, BOB, join_authorised_via_users_server=ALICE)
    # An invited user needs no authoriser.
    room.member(DAVE, "invite", sender=ALICE)
    join(room, DAVE)


def _knows_rule(room, rule: str) -> bool:
    return {"restricted": room.rv.restricted_join_rule, "knock": room.rv.knock_join_rule,
            "knock_restricted": room.rv.knock_restricted_join_rule}.get(rule, True)


# --- invites ---------------------------------------------------------------------

def test_invite_requires_invite_level(version):
    room = public_room(version, users={BOB: 5})
    room.member(BOB, "join")
    room.power_levels(ALICE, {"users": {ALICE: 100, BOB: 5}, "invite": 10})
    reason = rejected(room.check, MEMBER, BOB, {"membership": "invite"}, CAROL)
    assert "invite level 10" in reason
    room.power_levels(ALICE, {"users": {ALICE: 100, BOB: 10}, "invite": 10})
    room.check(MEMBER, BOB, {"membership": "invite"}, CAROL)


def test_invite_by_non_member_or_of_joined_or_banned_user_rejected(version):
    room = public_room(version)
    assert "not joined" in rejected(room.check, MEMBER, BOB, {"membership": "invite"}, CAROL)
    room.member(BOB, "join")
    assert "is joined" in rejected(room.check, MEMBER, ALICE, {"membership": "invite"}, BOB)
    room.member(BOB, "ban", sender=ALICE)
    assert "is banned" in rejected(room.check, MEMBER, ALICE, {"membership": "invite"}, BOB)


class TestThirdPartyInvite:
    key = SigningKey.generate("tpi")

    def setup_room(self, version, public_key=None):
        room = public_room(version)
        room.send("m.room.third_party_invite", ALICE,
                  {"display_name": "c***", "key_validity_url": "https://id/validity",
                   "public_key": public_key or self.key.verify_key_b64,
                   "public_keys": []}, "tok")
        return room

    def signed(self, mxid=CAROL, token="tok", key=None):
        return sign_json({"mxid": mxid, "token": token, "sender": ALICE},
                         "id.test", key or self.key)

    def invite(self, room, sender=ALICE, target=CAROL, **signed_kwargs):
        content = {"membership": "invite",
                   "third_party_invite": {"display_name": "c***",
                                          "signed": self.signed(**signed_kwargs)}}
        return room.check(MEMBER, sender, content, target)

    def test_valid_third_party_invite_allowed(self, version):
        self.invite(self.setup_room(version))

    def test_key_listed_in_public_keys_also_accepted(self, version):
        room = public_room(version)
        room.send("m.room.third_party_invite", ALICE,
                  {"public_key": SigningKey.generate().verify_key_b64,
                   "public_keys": [{"public_key": self.key.verify_key_b64}]}, "tok")
        self.invite(room)

    def test_signature_by_unknown_key_rejected(self, version):
        reason = rejected(self.invite, self.setup_room(version), key=SigningKey.generate())
        assert "signature" in reason

    def test_mxid_mismatch_and_unknown_token_rejected(self, version):
        room = self.setup_room(version)
        assert "mxid" in rejected(self.invite, room, mxid=DAVE)
        assert "no m.room.third_party_invite" in rejected(self.invite, room, token="other")

    def test_sender_must_match_third_party_invite_sender(self, version):
        room = self.setup_room(version)
        room.member(BOB, "join")
        assert "did not send" in rejected(self.invite, room, sender=BOB)

    def test_banned_target_rejected(self, version):
        room = self.setup_room(version)
        room.member(CAROL, "join")
        room.member(CAROL, "ban", sender=ALICE)
        assert "banned" in rejected(self.invite, room)


# --- leave / kick / ban ----------------------------------------------------------

def test_self_leave_allowed_only_from_invite_join_or_knock(version):
    room = public_room(version)
    assert "cannot leave" in rejected(room.check, MEMBER, BOB, {"membership": "leave"}, BOB)
    room.member(BOB, "invite", sender=ALICE)
    room.check(MEMBER, BOB, {"membership": "leave"}, BOB)  # reject the invite
    room.member(BOB, "join")
    room.check(MEMBER, BOB, {"membership": "leave"}, BOB)


def test_kick_requires_kick_level_and_higher_power(version):
    room = public_room(version, users={BOB: 50, CAROL: 50})
    for user in (BOB, CAROL, DAVE):
        room.member(user, "join")
    room.check(MEMBER, BOB, {"membership": "leave"}, DAVE)  # 50 >= kick 50, DAVE 0
    assert "may not kick" in rejected(room.check, MEMBER, BOB, {"membership": "leave"}, CAROL)
    assert "may not kick" in rejected(room.check, MEMBER, DAVE, {"membership": "leave"}, BOB)
    room.check(MEMBER, ALICE, {"membership": "leave"}, BOB)


def test_ban_by_lower_or_equal_power_rejected(version):
    room = public_room(version, users={BOB: 50, CAROL: 50})
    for user in (BOB, CAROL, DAVE):
        room.member(user, "join")
    assert "may not ban" in rejected(room.check, MEMBER, DAVE, {"membership": "ban"}, BOB)
    assert "may not ban" in rejected(room.check, MEMBER, BOB, {"membership": "ban"}, CAROL)
    assert "may not ban" in rejected(room.check, MEMBER, BOB, {"membership": "ban"}, ALICE)
    room.check(MEMBER, BOB, {"membership": "ban"}, DAVE)
    room.check(MEMBER, ALICE, {"membership": "ban"}, "@never-joined:x.test")


def test_ban_by_non_member_rejected(version):
    room = public_room(version)
    room.member(BOB, "join")
    room.member(ALICE, "leave")
    assert "not joined" in rejected(room.check, MEMBER, ALICE, {"membership": "ban"}, BOB)


def test_unban_needs_ban_level_as_well_as_kick_level(version):
    room = public_room(version, users={BOB: 50})
    room.member(BOB, "join")
    room.member(DAVE, "join")
    room.member(DAVE, "ban", sender=ALICE)
    room.power_levels(ALICE, {"users": {ALICE: 100, BOB: 50}, "ban": 60, "kick": 50})
    assert "unban" in rejected(room.check, MEMBER, BOB, {"membership": "leave"}, DAVE)
    room.check(MEMBER, ALICE, {"membership": "leave"}, DAVE)


# --- knock ------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["knock", "knock_restricted"])
def test_knock_allowed_only_for_knock_rules(version, rule):
    room = Room(version)
    room.join_rules(ALICE, rule)
    if not _knows_rule(room, rule):
        assert "knock" in rejected(room.check, MEMBER, BOB, {"membership": "knock"}, BOB)
        return
    room.check(MEMBER, BOB, {"membership": "knock"}, BOB)
    assert "on behalf" in rejected(room.check, MEMBER, ALICE, {"membership": "knock"}, BOB)


@pytest.mark.parametrize("rule", ["public", "invite", "restricted"])
def test_knock_rejected_for_other_join_rules(version, rule):
    room = Room(version)
    room.join_rules(ALICE, rule)
    assert "knock" in rejected(room.check, MEMBER, BOB, {"membership": "knock"}, BOB)


def test_knock_rejected_when_banned_invited_or_joined(version):
    room = Room(version)
    if not room.rv.knock_join_rule:
        pytest.skip("knocking came with room version 7 (refused before: see above)")
    room.join_rules(ALICE, "knock")
    room.member(BOB, "invite", sender=ALICE)
    rejected(room.check, MEMBER, BOB, {"membership": "knock"}, BOB)
    room.member(CAROL, "knock")
    room.member(CAROL, "ban", sender=ALICE)
    rejected(room.check, MEMBER, CAROL, {"membership": "knock"}, CAROL)
    # A knocking user may retract the knock by leaving.
    room.member(DAVE, "knock")
    room.check(MEMBER, DAVE, {"membership": "leave"}, DAVE)


def test_invite_after_knock_then_join(version):
    room = Room(version)
    if not room.rv.knock_join_rule:
        pytest.skip("knocking came with room version 7 (refused before: see above)")
    room.join_rules(ALICE, "knock")
    room.member(BOB, "knock")
    rejected(join, room, BOB)
    room.member(BOB, "invite", sender=ALICE)
    join(room, BOB)
