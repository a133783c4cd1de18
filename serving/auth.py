"""Who is calling: an API key's user id, or (anonymous mode only) a server-signed per-browser identity.

Clients send ``Authorization: Bearer <key>`` (what OpenAI's clients send). A request that carries a key
is judged by that key alone, in anonymous mode too. Without a key, anonymous mode reads the identity cookie
(``rlhf_identity``, value ``anon-<random>.<HMAC>``) or, when there is none, issues a new identity; one
client IP gets at most ``anonymous_per_minute`` new ones. A cookie this server did not sign is refused
and cleared, so the next request starts a new identity.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from proto.api_keys import KeyFile
from proto.http import APIError
from serving.limits import RateLimiter, retry_after
from serving.settings import Settings
from serving.signing import Signer

COOKIE = "rlhf_identity"
COOKIE_MAX_AGE_S = 365 * 24 * 3600
_HOW = ("Send your API key in the Authorization header as 'Authorization: Bearer <key>' (an operator makes "
        "one with `python -m serving.keys add <user-id>`).")


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. ``user_id`` goes into the events and decides ownership and limits."""

    user_id: str
    anonymous: bool = False


class Authenticator:
    """Resolves a request's :class:`Identity`.

    Args:
        settings: ``api_keys_file``, ``anonymous`` and ``anonymous_per_minute``.
        signer: signs and checks anonymous identities.
    """

    def __init__(self, settings: Settings, signer: Signer):
        self.keys = KeyFile(settings.api_keys_file)
        self.anonymous = settings.anonymous
        self.signer = signer
        self.new_identities = RateLimiter(settings.anonymous_per_minute)

    def identify(self, request: Request) -> Identity:
        """The caller of ``request``. Raises :class:`APIError` 401 without a valid key (or, in anonymous mode,
        with a cookie this server did not sign), 429 when the client IP asks for new identities too fast.

        A newly issued or a refused cookie is left in ``request.state.identity_cookie`` (value, or "" to
        clear) for :class:`IdentityCookieMiddleware` to set on the response.
        """
        authorization = request.headers.get("authorization")
        if authorization is not None:
            scheme, _, key = authorization.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise APIError(401, f"Malformed Authorization header. {_HOW}", "invalid_request_error",
                               code="invalid_api_key")
            user_id = self.keys.user_of(key.strip())
            if user_id is None:
                raise APIError(401, f"Incorrect API key provided. {_HOW}", "invalid_request_error",
                               code="invalid_api_key")
            return Identity(user_id)
        if not self.anonymous:
            raise APIError(401, f"You didn't provide an API key. {_HOW}", "invalid_request_error",
                           code="invalid_api_key")
        cookie = request.cookies.get(COOKIE)
        if cookie is not None:
            user_id = self.signer.anonymous_identity(cookie)
            if user_id is None:
                request.state.identity_cookie = ""
                raise APIError(401, f"The identity cookie '{COOKIE}' was not issued by this server; it has been "
                                    "cleared: retry to get a new anonymous identity, or send an API key. " + _HOW,
                               "invalid_request_error", code="invalid_api_key")
            return Identity(user_id, anonymous=True)
        client = request.client.host if request.client else "unknown"
        wait = self.new_identities.take(client)
        if wait:
            raise APIError(429, f"Too many new anonymous identities from {client} (at most "
                                f"{self.new_identities.per_minute:g} per minute): keep the '{COOKIE}' cookie "
                                "between requests, or send an API key.",
                           "requests", code="rate_limit_exceeded", headers={"retry-after": retry_after(wait)})
        user_id, request.state.identity_cookie = self.signer.new_anonymous_identity()
        return Identity(user_id, anonymous=True)


def _identify(request: Request) -> Identity:
    return request.app.state.auth.identify(request)


Identified = Annotated[Identity, Depends(_identify)]  # a route parameter: the authenticated caller


class IdentityCookieMiddleware:
    """Sets (or clears) the anonymous identity cookie that :meth:`Authenticator.identify` decided on, on any
    response, errors included (so a refused request does not mint another identity next time)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_cookie(message):
            value = scope.get("state", {}).get("identity_cookie")
            if message["type"] == "http.response.start" and value is not None:
                secure = "; Secure" if scope.get("scheme") == "https" else ""
                max_age = COOKIE_MAX_AGE_S if value else 0
                cookie = f"{COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{secure}"
                message = {**message, "headers": [*message["headers"], (b"set-cookie", cookie.encode())]}
            await send(message)

        await self.app(scope, receive, with_cookie)
