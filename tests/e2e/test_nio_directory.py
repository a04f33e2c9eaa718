"""Scenario 8 with matrix-nio accounts: user directory search ranking and the im.nexa.privacy
"searchable" switch. nio has no method for /user_directory/search or for account data, so those
two requests go over plain HTTP with the nio client's access token."""

from __future__ import annotations

import secrets

import nio

from tests.e2e.nio_helpers import ok, raw, shared_room


async def search(client: nio.AsyncClient, term: str, limit: int = 20) -> dict:
    status, body = await raw(client, "POST", "/user_directory/search",
                             {"search_term": term, "limit": limit})
    assert status == 200, body
    assert isinstance(body.get("results"), list) and isinstance(body.get("limited"), bool), body
    return body


async def set_searchable(client: nio.AsyncClient, searchable: bool) -> None:
    status, body = await raw(client, "PUT",
                             f"/user/{client.user_id}/account_data/im.nexa.privacy",
                             {"searchable": searchable})
    assert status == 200, body


async def test_search_ranks_shared_then_exact_prefix_substring(nio_user):
    term = f"ali{secrets.token_hex(3)}"  # unique to this test: nothing else on the server matches
    searcher = await nio_user("searcher")
    friend = await nio_user(username=f"zz{term}friend")       # substring, but shares a room
    exact = await nio_user(username=term)                     # exact localpart
    prefix = await nio_user(username=f"{term}2")              # prefix of localpart
    by_name = await nio_user("named")                         # prefix of display name
    ok(await by_name.set_displayname(f"{term.upper()} Display"), nio.ProfileSetDisplayNameResponse)
    sub = await nio_user(username=f"m{term}")                 # substring of localpart
    await nio_user("unrelated")
    await shared_room(searcher, friend)

    body = await search(searcher, term)
    got = [r["user_id"] for r in body["results"]]
    assert got[0] == friend.user_id, got
    assert got[1] == exact.user_id, got
    assert set(got[2:4]) == {prefix.user_id, by_name.user_id}, got
    assert got[4:] == [sub.user_id], got
    assert body["limited"] is False
    named = next(r for r in body["results"] if r["user_id"] == by_name.user_id)
    assert named["display_name"] == f"{term.upper()} Display"
    assert searcher.user_id not in got  # never yourself

    # Case and a leading '@' do not matter; the limit cuts the tail and says so.
    body = await search(searcher, "@" + term.upper(), limit=2)
    assert [r["user_id"] for r in body["results"]] == [friend.user_id, exact.user_id]
    assert body["limited"] is True

    # A full user ID finds exactly that user.
    body = await search(searcher, exact.user_id)
    assert [r["user_id"] for r in body["results"]][:1] == [exact.user_id]


async def test_unsearchable_user_visible_only_to_room_mates(nio_user):
    term = f"hid{secrets.token_hex(3)}"
    hidden = await nio_user(username=f"{term}den")
    stranger = await nio_user("stranger")
    mate = await nio_user("mate")

    assert hidden.user_id in [r["user_id"] for r in (await search(stranger, term))["results"]]

    await set_searchable(hidden, False)
    status, body = await raw(hidden, "GET", f"/user/{hidden.user_id}/account_data/im.nexa.privacy")
    assert status == 200 and body.get("searchable") is False, body

    await shared_room(mate, hidden)
    assert (await search(stranger, term))["results"] == []
    assert [r["user_id"] for r in (await search(mate, term))["results"]] == [hidden.user_id]

    # Leaving the shared room hides the user from the former room mate too.
    rooms = ok(await hidden.joined_rooms(), nio.JoinedRoomsResponse).rooms
    for room_id in rooms:
        ok(await hidden.room_leave(room_id), nio.RoomLeaveResponse)
    assert (await search(mate, term))["results"] == []

    # Switching back on makes the user findable by anyone again.
    await set_searchable(hidden, True)
    assert [r["user_id"] for r in (await search(stranger, term))["results"]] == [hidden.user_id]


async def test_privacy_content_is_validated(nio_user):
    user = await nio_user("privacy")
    status, body = await raw(user, "PUT", f"/user/{user.user_id}/account_data/im.nexa.privacy",
                             {"searchable": "no"})
    assert (status, body.get("errcode")) == (400, "M_BAD_JSON"), body
