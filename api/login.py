""" "Log in with Discord" for the web chat: OAuth2's authorization-code grant against the
configured Discord API (so the fake Discord of the tests serves it too). The person comes
back with a personal API key that acts as their Discord account, as ``/apikey create`` in
Discord gives: the same history, favourites and quota as in the bot.

The key reaches the page in the URL's fragment (``/#key=...``), which browsers never send
to a server; the page stores it and removes it from the address bar at once."""

from __future__ import annotations

import logging
import secrets
from typing import Annotated
from urllib.parse import urlencode

import aiohttp
from fastapi import APIRouter, Cookie, Query, Request
from fastapi.responses import RedirectResponse

from api.context import ApiContext, ApiError
from core.config import Settings

log = logging.getLogger(__name__)

STATE_COOKIE = "dc_oauth_state"
STATE_LIFETIME_S = 600
DISCORD_TIMEOUT_S = 10.0


def login_enabled(settings: Settings) -> bool:
    return settings.discord_client_id is not None and bool(settings.discord_client_secret)


def login_routes() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/auth/discord")
    async def start(request: Request) -> RedirectResponse:
        settings = _settings(request)
        state = secrets.token_urlsafe(24)
        query = urlencode(
            {
                "client_id": str(settings.discord_client_id),
                "redirect_uri": _callback_url(request),
                "response_type": "code",
                "scope": "identify",
                "state": state,
            }
        )
        response = RedirectResponse(f"{settings.discord_api_base_url}/oauth2/authorize?{query}")
        response.set_cookie(
            STATE_COOKIE,
            state,
            max_age=STATE_LIFETIME_S,
            path="/auth/discord",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    @router.get("/auth/discord/callback")
    async def callback(
        request: Request,
        code: Annotated[str | None, Query(max_length=200)] = None,
        state: Annotated[str | None, Query(max_length=200)] = None,
        error: Annotated[str | None, Query(max_length=200)] = None,
        expected: Annotated[str | None, Cookie(alias=STATE_COOKIE)] = None,
    ) -> RedirectResponse:
        settings = _settings(request)
        if error is not None:
            return _back("denied")
        if not code or not state or not expected or not secrets.compare_digest(state, expected):
            return _back("state")
        try:
            user_id = await _discord_user(settings, code, _callback_url(request))
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as failure:
            log.warning("Discord login failed: %s", type(failure).__name__)
            return _back("discord")
        context: ApiContext = request.app.state.context
        _, key = await context.service.db.api_keys.create("web chat login", user_id=user_id)
        response = _back(key=key)
        response.delete_cookie(STATE_COOKIE, path="/auth/discord")
        return response

    return router


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.context.settings
    if not login_enabled(settings):
        raise ApiError(
            404,
            "not_configured",
            "Log in with Discord is not set up here (DISCORD_CLIENT_SECRET).",
        )
    return settings


def _callback_url(request: Request) -> str:
    settings: Settings = request.app.state.context.settings
    base = settings.api_public_url or str(request.base_url).rstrip("/")
    return f"{base}/auth/discord/callback"


def _back(error: str | None = None, *, key: str | None = None) -> RedirectResponse:
    fragment = urlencode({"key": key} if key else {"login-error": error or "discord"})
    response = RedirectResponse(f"/#{fragment}", status_code=303)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def _discord_user(settings: Settings, code: str, redirect_uri: str) -> int:
    """Trade the code for a token, and the token for the Discord user's id."""
    base = settings.discord_api_base_url
    timeout = aiohttp.ClientTimeout(total=DISCORD_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        form = {
            "client_id": str(settings.discord_client_id),
            "client_secret": settings.discord_client_secret,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
        }
        async with http.post(f"{base}/oauth2/token", data=form) as answer:
            if answer.status != 200:
                raise ValueError(f"token exchange answered {answer.status}")
            token = (await answer.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{base}/users/@me", headers=headers) as answer:
            if answer.status != 200:
                raise ValueError(f"users/@me answered {answer.status}")
            return int((await answer.json())["id"])
