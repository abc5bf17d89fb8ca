"""The HTTP adapter: FastAPI routes over the core's job service.

Jobs taken here share the one queue, fairness scheduler and quota system with Discord's; an
API key is an account like a Discord user. Routes parse the request, call the core and
render the answer; every error is JSON ``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.accounts import is_loopback
from api.compat import compat_routes
from api.context import ApiContext, ApiError, error_response
from api.dashboard import dashboard_routes
from api.diffusion import PREFIX, diffusion_routes
from api.library import library_routes, share_routes
from api.login import login_enabled, login_routes
from api.schemas import ErrorBody, GenerateBody
from api.vision import PREFIX as VISION_PREFIX
from api.vision import vision_routes
from api.web import web_routes
from core.errors import incident_id

log = logging.getLogger(__name__)


# --- the app --------------------------------------------------------------------------------


def create_app(context: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Diffusion Chat API",
        version="1",
        description=(
            "Stable Diffusion jobs on the same queue, quotas and models as the Discord bot. "
            "Authenticate with `Authorization: Bearer <key>` (`diffusion-chat apikey create`)."
        ),
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        # Every operation may answer with these; each body is an ErrorBody.
        responses={
            status: {"model": ErrorBody, "description": meaning}
            for status, meaning in (
                (400, "the body could not be read (not UTF-8, or cut short)"),
                (401, "no key, or a key that is unknown or revoked"),
                (
                    403,
                    "not allowed for this key (server_id: not a Discord user's, or not a member)",
                ),
                (404, "no such job or image, or not the caller's"),
                (409, "the job was cancelled before it finished (synchronous routes)"),
                (413, "the body is over API_MAX_BODY_MB"),
                (422, "invalid request: the error names the field"),
                (429, "rate limit or quota: see Retry-After"),
                (503, "a service this needs is unavailable now: see Retry-After"),
                (504, "still running after the synchronous routes' wait: poll the job"),
            )
        },
    )
    app.state.context = context
    if context.settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(context.settings.api_cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Prefer", "Last-Event-ID"],
            expose_headers=["Retry-After", "RateLimit-Limit", "RateLimit-Remaining"],
        )
    app.add_middleware(BodyLimit, max_bytes=context.settings.api_max_body_mb * 2**20)
    _add_error_handlers(app)
    app.include_router(diffusion_routes(), prefix=PREFIX)
    app.include_router(library_routes(), prefix=PREFIX)
    app.include_router(dashboard_routes(), prefix=PREFIX)
    app.include_router(vision_routes(), prefix=VISION_PREFIX)
    app.include_router(share_routes())
    app.include_router(compat_routes())
    app.include_router(login_routes())
    web_routes(app, context.settings.web_api_base_url, login_enabled(context.settings))
    _document_generate_body(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        status = context.service.engine.status()
        body = {"status": "ok" if status.worker_alive else "down", **dataclasses.asdict(status)}
        return JSONResponse(body, status_code=200 if status.worker_alive else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics, to scrapers on this machine (elsewhere: METRICS_PORT)."""
        collected = context.events.metrics
        if collected is None or not is_loopback(request.client.host if request.client else None):
            raise ApiError(404, "not_found", "Not here: scrape METRICS_PORT instead.")
        body, content_type = collected.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return app


def _document_generate_body(app: FastAPI) -> None:
    """Put ``GenerateBody`` in the document's components: its route reads the body itself
    (JSON or a multipart form), so FastAPI does not list the model on its own."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        body = GenerateBody.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(body.pop("$defs", {}))
        schemas["GenerateBody"] = body
        return document

    app.openapi = openapi  # type: ignore[method-assign]


class BodyLimit:
    """Refuse a request whose declared body is larger than ``max_bytes`` (413), before any
    of it is read, and stop reading an undeclared (chunked) one at the limit."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = error_response(
                ApiError(
                    413,
                    "body_too_large",
                    f"The request body is over {self.max_bytes // 2**20} MiB.",
                )
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, limited, send)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        if first.get("type") == "json_invalid":
            return error_response(
                ApiError(422, "invalid_json", "The body is not valid JSON.", field="body")
            )
        where = [
            str(part)
            for part in first.get("loc", ())
            if part not in ("body", "query", "header") and not isinstance(part, int)
        ]
        message = str(first.get("msg", "Invalid request."))
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more problem(s))"
        return error_response(
            ApiError(422, "invalid_request", message, field=".".join(where) or None)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        code = codes.get(error.status_code, "http_error")
        return error_response(
            ApiError(error.status_code, code, error.detail, headers=dict(error.headers or {}))
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        ref = incident_id()
        log.error("unexpected API error (ref %s)", ref, exc_info=error, extra={"incident": ref})
        return error_response(
            ApiError(
                500,
                "internal",
                f"Something went wrong on our side. If it keeps happening, quote {ref}.",
            )
        )
