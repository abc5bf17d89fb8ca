"""The web chat: one page, served by the API's own process at ``/``, that talks to the same
HTTP API any program uses (keys, jobs, server-sent events). Static files only: no build
step, no framework; ``api/static`` holds the page, its script and its styles."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from engine.registry import SCHEDULERS

STATIC = Path(__file__).resolve().parent / "static"


@cache
def _page_template() -> str:
    schedulers = "".join(
        f'<option value="{html.escape(name)}">{html.escape(label)}</option>'
        for name, label in SCHEDULERS.items()
    )
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    return page.replace("{{SCHEDULERS}}", schedulers)


def web_routes(app: FastAPI, api_base_url: str | None, discord_login: bool = False) -> None:
    """Serve the page at ``/`` and its files under ``/static``. ``api_base_url``: where the
    page sends its API calls when it is not served by the API itself (None: its origin);
    ``discord_login``: whether it offers "Log in with Discord"."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        base = html.escape(api_base_url or "", quote=True)
        return HTMLResponse(
            _page_template()
            .replace("{{API_BASE}}", base)
            .replace("{{DISCORD_LOGIN}}", "on" if discord_login else "off"),
            headers={
                "Cache-Control": "no-cache",
                # The page runs its own script only, and talks to its API and nothing else.
                "Content-Security-Policy": (
                    "default-src 'self'; img-src 'self' data: blob:; "
                    f"connect-src 'self' {base}; script-src 'self'; style-src 'self'; "
                    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
                ),
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
