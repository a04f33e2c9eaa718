"""GET /_matrix/federation/v1/timestamp_to_event: another server in the room gets the event
closest to a time, asked with a real signed request; a server with no member is refused."""

from __future__ import annotations

import pytest

from homeserver.handlers.federation.transport import FederationError, quote_path
from tests.client import Api


async def test_servers_in_the_room_may_ask_others_may_not(servers):
    s1, s2 = await servers(2)
    async with Api(s1) as a1, Api(s2) as a2:
        alice, bob = await a1.register(), await a2.register()
        shared = await alice.create_room(preset="public_chat")
        r = await bob.post(f"/join/{shared}", params={"server_name": s1.server_name})
        assert r.status == 200, r
        message = await alice.send_text(shared, "noon")
        ts = (await alice.get(f"/rooms/{shared}/event/{message}")).json["origin_server_ts"]
        private = await alice.create_room()

        async def ask(room_id: str, **query):
            return await s2.hs.federation_client.request(
                s1.server_name, "GET",
                quote_path("/_matrix/federation/v1/timestamp_to_event/{}", room_id),
                query=query)

        # The room's newest event is the message: the closest before a minute later.
        assert await ask(shared, ts=ts + 60_000, dir="b") == {"event_id": message,
                                                               "origin_server_ts": ts}
        first = await ask(shared, ts=0, dir="f")
        create = (await alice.get(f"/rooms/{shared}/state/m.room.create", params={
            "format": "event"})).json
        assert first["event_id"] == create["event_id"]
        with pytest.raises(FederationError) as e:
            await ask(private, ts=0, dir="f")
        assert (e.value.status, e.value.errcode) == (403, "M_FORBIDDEN")
        with pytest.raises(FederationError) as e:
            await ask(shared, ts=0, dir="sideways")
        assert (e.value.status, e.value.errcode) == (400, "M_INVALID_PARAM")
