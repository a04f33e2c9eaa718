"""How one HTTP request runs when its client goes away.

Quart cancels a request's handler as soon as the client disconnects. For a read that is right:
a /sync long-poll whose client left should stop waiting. For a write it is not: a cancellation
can land between a database commit and the in-memory caches that follow it (current room
state, stream positions, wake-ups of the federation and application-service senders), or
leave a half-done sequence of steps (createRoom's events). So, like Synapse, a write whose body
has fully arrived runs to its end even when nobody waits for the answer; only reads, and
writes still receiving their body (an abandoned upload), are cancelled.
"""

from __future__ import annotations

import asyncio

from quart.asgi import ASGIHTTPConnection, _handle_exception
from quart.wrappers import Response
from quart.utils import cancel_tasks, raise_task_exceptions

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class WritesOutliveClientConnection(ASGIHTTPConnection):
    async def __call__(self, receive, send) -> None:
        body_complete = False

        async def watched_receive():
            nonlocal body_complete
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_complete = True
            return message

        request = self._create_request_from_scope(send)
        receiver = asyncio.ensure_future(self.handle_messages(request, watched_receive))
        handler = asyncio.ensure_future(self.handle_request(request, send))
        tasks = {receiver, handler}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if (not handler.done() and body_complete
                    and self.scope["method"] not in READ_METHODS):
                # The client left; the write finishes (hypercorn drops the late response).
                await asyncio.wait({handler})
        finally:
            # Also on our own cancellation (server shutdown): nothing is left running.
            await cancel_tasks({t for t in tasks if not t.done()})
        raise_task_exceptions({t for t in tasks if not t.cancelled()})

    async def handle_request(self, request, send) -> None:
        # As Quart's, but the response timeout is asyncio.timeout instead of wait_for, which
        # wraps every response's sending in a task of its own.
        try:
            response = await self.app.handle_request(request)
        except Exception as error:
            response = await _handle_exception(self.app, error)
        if isinstance(response, Response) and response.timeout != Ellipsis:
            timeout = response.timeout
        else:
            timeout = self.app.config["RESPONSE_TIMEOUT"]
        try:
            async with asyncio.timeout(timeout):
                await self._send_response(send, response)
        except TimeoutError:
            pass
