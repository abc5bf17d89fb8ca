"""The HTTP adapter: FastAPI routes over the core's job service.

Jobs taken here share the one queue, fairness scheduler and quota system with Discord's; an
API key is an account like a Discord user. Routes parse the request, call the core and
render the answer; every error is JSON ``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.accounts import ANONYMOUS_USER_ID, Account, RateLimiter, is_loopback
from api.schemas import (
    ErrorBody,
    GenerateBody,
    HistoryPage,
    JobResource,
    JobUrls,
    Metrics,
    ModelInfo,
)
from core.config import Settings
from core.errors import QuotaRefused, UserError, incident_id
from core.feed import FeedEvent, JobFeed
from core.jobcodec import StoredRequest
from core.recorder import record_outcome
from core.service import JobService, Requester
from core.storage.records import Image, Job, JobStatus
from engine.errors import EngineStopped
from engine.registry import ModelRegistry
from engine.types import (
    Cancelled,
    Done,
    Failed,
    GenerationRequest,
    ModelLoading,
    Progress,
    Queued,
    Started,
)

log = logging.getLogger(__name__)

PREFIX = "/api/cv/diffusion"
MAX_WAIT_S = 60.0
KEEPALIVE_S = 15.0
PAGE_SIZE = 20
STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.DONE: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "canceled",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def not_found(what: str = "job") -> ApiError:
    return ApiError(404, "not_found", f"There is no such {what} (or it is not yours).")


@dataclass
class ApiContext:
    """What the routes use: the core service, the registry, settings, the rate limiter and
    the recorders of the jobs taken here (awaited before a job is reported finished)."""

    service: JobService
    registry: ModelRegistry
    settings: Settings
    limiter: RateLimiter
    recorders: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def follow(self, job: Job, feed: JobFeed) -> None:
        task = asyncio.create_task(record_outcome(self.service, job, feed), name=f"api-{job.id}")
        self.recorders[job.id] = task
        task.add_done_callback(lambda _: self.recorders.pop(job.id, None))

    async def recorded(self, job_id: str, limit_s: float) -> None:
        """Wait (up to ``limit_s``) until the job's outcome is in storage."""
        task = self.recorders.get(job_id)
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), limit_s)

    async def resume(self) -> None:
        """Queue again the API's jobs left unfinished by the last run."""
        outcome = await self.service.db.jobs.resume_unfinished(sources={"api"})
        for job in outcome.resumed:
            try:
                self.follow(job, await self.service.resubmit(job))
            except Exception as error:
                log.warning("job %s could not be resumed: %s", job.id, error)
                await self.service.db.jobs.mark_failed(job.id, "Could not resume after a restart.")
        for job in outcome.undelivered:
            await self.service.db.jobs.mark_delivered(job.id)  # clients read it from storage

    async def close(self) -> None:
        for task in list(self.recorders.values()):
            task.cancel()


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
        responses={
            401: {"model": ErrorBody},
            422: {"model": ErrorBody},
            429: {"model": ErrorBody},
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
    app.include_router(_diffusion_routes(), prefix=PREFIX)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        status = context.service.engine.status()
        body = {"status": "ok" if status.worker_alive else "down", **dataclasses.asdict(status)}
        return JSONResponse(body, status_code=200 if status.worker_alive else 503)

    return app


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
            response = _error_response(
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


def _error_response(error: ApiError) -> JSONResponse:
    body = {"error": {"code": error.code, "message": error.message, "field": error.field}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        if first.get("type") == "json_invalid":
            return _error_response(
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
        return _error_response(
            ApiError(422, "invalid_request", message, field=".".join(where) or None)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error_response(
            ApiError(error.status_code, codes.get(error.status_code, "http_error"), error.detail)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        ref = incident_id()
        log.error("unexpected API error (ref %s)", ref, exc_info=error)
        return _error_response(
            ApiError(
                500,
                "internal",
                f"Something went wrong on our side. If it keeps happening, quote {ref}.",
            )
        )


# --- who is calling -------------------------------------------------------------------------


async def caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Account:
    context: ApiContext = request.app.state.context
    if authorization:
        scheme, _, secret = authorization.partition(" ")
        key = None
        if scheme.lower() == "bearer" and secret.strip():
            key = await context.service.db.api_keys.authenticate(secret.strip())
        if key is None:
            raise ApiError(
                401,
                "invalid_key",
                "This API key is not valid (unknown or revoked).",
                headers={"WWW-Authenticate": "Bearer"},
            )
        account = Account(key.user_id, key.id)
    elif context.settings.api_allow_anonymous and is_loopback(
        request.client.host if request.client else None
    ):
        account = Account(ANONYMOUS_USER_ID, None)
    else:
        raise ApiError(
            401,
            "missing_key",
            "Send an API key as `Authorization: Bearer <key>` (make one with "
            "`diffusion-chat apikey create NAME`).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    allowance = context.limiter.take(account.user_id)
    headers = {
        "RateLimit-Limit": str(allowance.limit),
        "RateLimit-Remaining": str(allowance.remaining),
        "RateLimit-Reset": str(allowance.reset_s),
        "X-RateLimit-Limit": str(allowance.limit),
        "X-RateLimit-Remaining": str(allowance.remaining),
        "X-RateLimit-Reset": str(allowance.reset_s),
    }
    if not allowance.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"Too many requests: {allowance.limit} a minute. Try again in "
            f"{allowance.retry_after_s} s.",
            headers={**headers, "Retry-After": str(allowance.retry_after_s)},
        )
    request.state.rate_headers = headers
    return account


Caller = Annotated[Account, Depends(caller)]


def _limited(request: Request, response: Response) -> Response:
    response.headers.update(getattr(request.state, "rate_headers", {}))
    return response


# --- routes ---------------------------------------------------------------------------------


def _diffusion_routes() -> APIRouter:
    router = APIRouter()

    @router.post(
        "/generate",
        status_code=202,
        response_model=JobResource,
        responses={200: {"model": JobResource, "description": "finished within Prefer: wait"}},
    )
    async def generate(
        body: GenerateBody,
        request: Request,
        account: Caller,
        prefer: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Queue a job. `Prefer: wait=N` holds the answer up to N s (60 at most) and returns
        the finished job (200) if it finishes by then."""
        context: ApiContext = request.app.state.context
        generation = _generation_request(body)
        try:
            accepted = await context.service.accept(
                Requester(user_id=account.user_id, guild_id=None, channel_id=None, source="api"),
                generation,
                private=True,
            )
        except QuotaRefused as error:
            wait = math.ceil(error.retry_after_s) if error.retry_after_s else 30
            raise ApiError(
                429, "quota_exceeded", str(error), headers={"Retry-After": str(wait)}
            ) from None
        except UserError as error:
            raise ApiError(
                422, "invalid_request", str(error), field=_field_named(str(error), body)
            ) from None
        context.follow(accepted.job, accepted.feed)
        wait_s = _prefer_wait(prefer)
        if wait_s:
            await context.recorded(accepted.job.id, wait_s)
        job = await context.service.db.jobs.get(accepted.job.id)
        resource = await _resource(context, request, job)
        status = 200 if job.finished else 202
        response = JSONResponse(
            resource.model_dump(mode="json"),
            status_code=status,
            headers={"Location": resource.urls.get},
        )
        return _limited(request, response)

    @router.get("/jobs/{job_id}", response_model=JobResource)
    async def get_job(job_id: str, request: Request, account: Caller) -> Response:
        context: ApiContext = request.app.state.context
        job = await _own_job(context, job_id, account)
        resource = await _resource(context, request, job)
        return _limited(request, JSONResponse(resource.model_dump(mode="json")))

    @router.post("/jobs/{job_id}/cancel", response_model=JobResource)
    async def cancel_job(job_id: str, request: Request, account: Caller) -> Response:
        """Cancel a queued or running job; a finished one is returned as it is."""
        context: ApiContext = request.app.state.context
        job = await _own_job(context, job_id, account)
        feed = context.service.feed(job.id)
        if feed is not None:
            feed.cancel()
            await context.recorded(job.id, 10)
        elif not job.finished:
            with contextlib.suppress(Exception):
                await context.service.db.jobs.mark_cancelled(job.id, "cancelled by its owner")
        job = await context.service.db.jobs.get(job.id)
        resource = await _resource(context, request, job)
        return _limited(request, JSONResponse(resource.model_dump(mode="json")))

    @router.get(
        "/jobs/{job_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_events(
        job_id: str,
        request: Request,
        account: Caller,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Server-sent events: `queued`, `loading`, `started`, `progress`, then one of
        `succeeded`, `failed`, `canceled` (with the job). Reconnect with `Last-Event-ID`."""
        context: ApiContext = request.app.state.context
        job = await _own_job(context, job_id, account)
        stream = _event_stream(context, request, job, last_event_id)
        response = StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        return _limited(request, response)

    @router.get(
        "/images/{image_id}.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def image_png(image_id: int, request: Request, account: Caller) -> Response:
        """The full PNG, with its generation parameters in the `parameters` text chunk."""
        context: ApiContext = request.app.state.context
        image = await _own_image(context, image_id, account)
        data = await context.service.image_bytes(image)
        return _limited(request, Response(data, media_type="image/png", headers=_private()))

    @router.get(
        "/images/{image_id}/thumb.webp",
        response_class=Response,
        responses={200: {"content": {"image/webp": {}}}},
    )
    async def image_thumbnail(image_id: int, request: Request, account: Caller) -> Response:
        context: ApiContext = request.app.state.context
        image = await _own_image(context, image_id, account)
        if image.thumbnail_key is None:
            raise not_found("thumbnail")
        data = await context.service.images.get(image.thumbnail_key)
        return _limited(request, Response(data, media_type="image/webp", headers=_private()))

    @router.get("/models", response_model=list[ModelInfo])
    async def models(request: Request, account: Caller) -> Response:
        context: ApiContext = request.app.state.context
        listed = [
            ModelInfo(
                name=spec.name,
                family=spec.family.value,
                description=spec.description,
                license=spec.license,
                default=spec.name == context.registry.default_name,
                steps=spec.presets.steps,
                max_steps=spec.presets.max_steps,
                guidance=spec.presets.guidance,
                width=spec.presets.width,
                height=spec.presets.height,
                max_size=spec.presets.max_size,
                scheduler=spec.presets.scheduler,
            ).model_dump(mode="json")
            for spec in context.registry.specs()
        ]
        return _limited(request, JSONResponse(listed))

    @router.get("/history", response_model=HistoryPage)
    async def history(
        request: Request,
        account: Caller,
        page: Annotated[int, Query(ge=0, le=100_000)] = 0,
        q: Annotated[str | None, Query(max_length=200, description="text in the prompt")] = None,
        model: Annotated[str | None, Query(max_length=100)] = None,
    ) -> Response:
        """The caller's jobs, newest first, 20 a page; `q` searches the prompts."""
        context: ApiContext = request.app.state.context
        found = await context.service.db.jobs.history(
            account.user_id,
            offset=page * PAGE_SIZE,
            limit=PAGE_SIZE,
            text=q or None,
            model=model or None,
        )
        items = [
            await _resource(context, request, entry.job, list(entry.images))
            for entry in found.items
        ]
        body = HistoryPage(
            items=items,
            total=found.total,
            page=page,
            pages=max(1, math.ceil(found.total / PAGE_SIZE)),
        )
        return _limited(request, JSONResponse(body.model_dump(mode="json")))

    return router


# --- helpers --------------------------------------------------------------------------------


def _generation_request(body: GenerateBody) -> GenerationRequest:
    return GenerationRequest(
        prompt=body.prompt,
        model=body.model,
        operation=body.operation,
        negative_prompt=body.negative_prompt,
        count=body.count,
        steps=body.steps,
        guidance=body.guidance,
        width=body.width,
        height=body.height,
        aspect=body.aspect,
        scheduler=body.scheduler,
        seed=body.seed,
        strength=body.strength,
        variation=body.variation,
        init_image=base64.b64decode(body.init_image) if body.init_image else None,
        mask_image=base64.b64decode(body.mask_image) if body.mask_image else None,
        outpaint_sides=tuple(body.outpaint_sides),
        outpaint_pixels=body.outpaint_pixels,
    )


def _field_named(message: str, body: GenerateBody) -> str | None:
    """The request field an engine refusal is about, when its first word names one ("Width
    must be between 32 and 256 ...")."""
    first = message.split(" ", 1)[0].strip(".,:").lower().replace("-", "_")
    aliases = {"size": "width", "image": "init_image", "mask": "mask_image"}
    name = aliases.get(first, first)
    return name if name in type(body).model_fields else None


def _prefer_wait(prefer: str | None) -> float:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), capped; 0 when absent."""
    for part in (prefer or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return max(0.0, min(MAX_WAIT_S, float(value.strip())))
            except ValueError:
                return 0.0
    return 0.0


async def _own_job(context: ApiContext, job_id: str, account: Account) -> Job:
    if len(job_id) > 40:
        raise not_found()
    job = await context.service.db.jobs.find(job_id)
    if job is None or job.user_id != account.user_id or job.source != "api":
        raise not_found()
    return job


async def _own_image(context: ApiContext, image_id: int, account: Account) -> Image:
    image = await context.service.db.images.find(image_id)
    if image is None:
        raise not_found("image")
    await _own_job(context, image.job_id, account)  # 404 for someone else's, too
    return image


def _private() -> dict[str, str]:
    return {"Cache-Control": "private, max-age=31536000, immutable"}


def _when(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


async def _resource(
    context: ApiContext, request: Request, job: Job, images: list[Image] | None = None
) -> JobResource:
    base = str(request.base_url).rstrip("/") + PREFIX
    if images is None:
        images = list(await context.service.job_images(job.id)) if job.finished else []
    stored = StoredRequest.loads(job.request).request
    status = STATUS[job.status]
    position = eta = None
    feed = context.service.feed(job.id)
    latest = feed.latest.event if feed is not None and feed.latest is not None else None
    if isinstance(latest, Queued):
        position, eta = latest.position, latest.eta_s
    elif isinstance(latest, (Started, ModelLoading, Progress)) and status == "queued":
        status = "running"  # its record follows a moment later
    if isinstance(latest, Progress):
        eta = latest.eta_s
    timings = job.timings or {}
    return JobResource(
        id=job.id,
        status=status,  # type: ignore[arg-type]
        position=position,
        eta_s=eta,
        input={
            "prompt": stored.prompt,
            "negative_prompt": stored.negative_prompt,
            "model": stored.model,
            "operation": stored.operation.value,
            "count": stored.count,
            "steps": stored.steps,
            "guidance": stored.guidance,
            "width": stored.width,
            "height": stored.height,
            "scheduler": stored.scheduler,
            "seed": stored.seed,
        },
        output=[f"{base}/images/{image.id}.png" for image in images] if images else None,
        seeds=[image.seed for image in images] if images else None,
        error=job.error if job.status in (JobStatus.FAILED, JobStatus.CANCELLED) else None,
        metrics=Metrics(
            queued_s=timings.get("queued_s"),
            load_s=timings.get("load_s"),
            predict_time=job.generation_seconds,
            total_s=timings.get("total_s"),
        ),
        created_at=job.created_at.isoformat(),
        started_at=_when(job.started_at),
        completed_at=_when(job.finished_at),
        urls=JobUrls(
            get=f"{base}/jobs/{job.id}",
            cancel=f"{base}/jobs/{job.id}/cancel",
            events=f"{base}/jobs/{job.id}/events",
        ),
    )


def _sse(name: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    lines = [f"id: {event_id}"] if event_id else []
    lines += [f"event: {name}", f"data: {json.dumps(data, separators=(',', ':'))}", "", ""]
    return "\n".join(lines).encode()


def _resume_point(feed: JobFeed, last_event_id: str | None) -> int:
    """The sequence number to continue after: the client's, if it came from this feed."""
    epoch, _, seq = (last_event_id or "").partition("-")
    return int(seq) if epoch == feed.epoch and seq.isdigit() else 0


async def _event_stream(
    context: ApiContext, request: Request, job: Job, last_event_id: str | None
) -> AsyncIterator[bytes]:
    feed = context.service.feed(job.id)
    if feed is None:
        # Not running here: finished (its outcome is in storage), or waiting for a resume.
        yield await _final(context, request, job.id)
        return
    updates: asyncio.Queue[FeedEvent | BaseException | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in feed.follow(_resume_point(feed, last_event_id)):
                await updates.put(item)
        except EngineStopped as stopped:
            await updates.put(stopped)
        await updates.put(None)

    reader = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(updates.get(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                yield _sse(
                    "interrupted",
                    {"message": "The server is restarting; the job resumes after it."},
                )
                return
            event_id = f"{feed.epoch}-{item.seq}"
            if isinstance(item.event, Done | Failed | Cancelled):
                await context.recorded(job.id, 30)
                yield await _final(context, request, job.id, event_id)
                return
            yield await _progress_event(item, event_id)
    finally:
        reader.cancel()


async def _progress_event(item: FeedEvent, event_id: str) -> bytes:
    event = item.event
    if isinstance(event, Queued):
        return _sse("queued", {"position": event.position, "eta_s": event.eta_s}, event_id)
    if isinstance(event, ModelLoading):
        data = {"model": event.model, "detail": event.detail, "stage": "loading model"}
        return _sse("loading", data, event_id)
    if isinstance(event, Started):
        return _sse("started", {"stage": "starting"}, event_id)
    assert isinstance(event, Progress)
    progress: dict[str, Any] = {
        "step": event.step,
        "total": event.total,
        "percent": round(100 * event.step / max(1, event.total), 1),
        "eta_s": event.eta_s,
        "stage": "decoding" if event.step >= event.total else "denoising",
    }
    if event.preview is not None:
        progress["preview"] = await asyncio.to_thread(_data_url, event.preview)
    return _sse("progress", progress, event_id)


def _data_url(preview: Any) -> str:
    buffer = io.BytesIO()
    preview.convert("RGB").save(buffer, format="WEBP", quality=60)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode()


async def _final(
    context: ApiContext, request: Request, job_id: str, event_id: str | None = None
) -> bytes:
    job = await context.service.db.jobs.get(job_id)
    resource = await _resource(context, request, job)
    name = resource.status if job.finished else "pending"
    return _sse(name, resource.model_dump(mode="json"), event_id or f"end-{job.id}")


Spawn = Callable[[Coroutine[Any, Any, None]], None]
