"""The web chat's page as served: where it sends its API calls, and the headers that keep
it to its own script and its API."""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.login import STATE_COOKIE, login_routes
from api.web import web_routes
from core.config import SettingsError, load_settings

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz012345678"


def page(api_base_url: str | None) -> tuple[str, dict[str, str]]:
    app = FastAPI()
    web_routes(app, api_base_url)
    with TestClient(app) as client:
        answer = client.get("/")
        assert answer.status_code == 200
        assert client.get("/static/chat.js").status_code == 200
        return answer.text, dict(answer.headers)


def test_the_page_calls_its_own_origin_unless_told_otherwise() -> None:
    text, headers = page(None)
    assert '<meta name="api-base" content="">' in text
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    text, headers = page("https://api.example.com")
    assert '<meta name="api-base" content="https://api.example.com">' in text
    assert "connect-src 'self' https://api.example.com;" in headers["content-security-policy"]


def test_the_api_base_setting_is_read_from_either_name() -> None:
    settings = load_settings({"DISCORD_TOKEN": TOKEN, "API_BASE_URL": "https://a.example/"}, None)
    assert settings.web_api_base_url == "https://a.example"
    settings = load_settings(
        {"DISCORD_TOKEN": TOKEN, "NEXT_PUBLIC_API_BASE_URL": "https://b.example"}, None
    )
    assert settings.web_api_base_url == "https://b.example"
    with pytest.raises(SettingsError, match="API_BASE_URL"):
        load_settings({"DISCORD_TOKEN": TOKEN, "API_BASE_URL": "javascript:alert(1)"}, None)


def test_discord_login_refuses_a_callback_without_its_state() -> None:
    settings = load_settings(
        {
            "DISCORD_TOKEN": TOKEN,
            "DISCORD_CLIENT_SECRET": "s3cret",
            "DISCORD_API_BASE_URL": "https://discord.example/api/v10",
        },
        None,
    )
    assert settings.discord_client_id == 123456789012345678  # the token's application
    assert "s3cret" not in repr(settings)
    app = FastAPI()
    app.state.context = SimpleNamespace(settings=settings)
    app.include_router(login_routes())
    with TestClient(app, follow_redirects=False) as client:
        start = client.get("/auth/discord")
        assert start.status_code == 307
        target = start.headers["location"]
        assert target.startswith("https://discord.example/api/v10/oauth2/authorize?")
        state = parse_qs(urlsplit(target).query)["state"][0]
        assert client.cookies.get(STATE_COOKIE) == state
        forged = client.get("/auth/discord/callback", params={"code": "x", "state": "forged"})
        assert forged.status_code == 303 and forged.headers["location"] == "/#login-error=state"
        denied = client.get("/auth/discord/callback", params={"error": "access_denied"})
        assert denied.headers["location"] == "/#login-error=denied"
