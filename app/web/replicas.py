"""Read-your-writes at the door: the ASGI middleware that gives each request the position its
client's token names, and hands back a new token when the request wrote.

The positions, their tokens and the replicas that honour them are app/adapters/replicas.py.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.adapters.replicas import COOKIE, HEADER, PositionTokens, client_position


class ReadYourWrites:
    """ASGI middleware: the request's position from its token; a new token when it wrote.

    `tokens` returns None when there are no replicas: then every read is on the primary, no
    token is needed and the middleware only passes requests through.
    """

    def __init__(self, app: ASGIApp, tokens: Callable[[], PositionTokens | None]) -> None:
        self.app = app
        self._tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tokens = self._tokens() if scope["type"] == "http" else None
        if tokens is None:
            await self.app(scope, receive, send)
            return
        with client_position(tokens.from_headers(scope["headers"])) as position:

            async def send_position(message: Message) -> None:
                if message["type"] == "http.response.start" and position.wrote:
                    token = tokens.sign(position.vector())
                    headers = MutableHeaders(scope=message)
                    headers.append(HEADER, token)
                    headers.append(
                        "Set-Cookie",
                        f"{COOKIE}={token}; Max-Age={tokens.max_age_s}; Path=/; HttpOnly; "
                        "SameSite=Lax",
                    )
                await send(message)

            await self.app(scope, receive, send_position)
