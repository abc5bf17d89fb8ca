"""The job routes: generate, get, cancel, events, images, models."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image as PILImage
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from api.accounts import Account
from api.context import ApiContext, ApiError, Caller, not_found, with_rate_headers
from api.schemas import (
    GenerateBody,
    JobResource,
    JobUrls,
    Metrics,
    ModelInfo,
    RefineBody,
)
from core import downloads
from core.errors import InvalidField, UserError
from core.feed import FeedEvent, JobFeed
from core.jobcodec import StoredRequest
from core.storage.errors import InvalidTransition
from core.storage.files import LinkedImageStore
from core.storage.records import Image, Job, JobStatus
from engine.errors import EngineStopped
from engine.images import encode_preview
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

PREFIX = "/api/cv/diffusion"
MAX_WAIT_S = 60.0
KEEPALIVE_S = 15.0
IDEMPOTENCY_POLLS = 50  # x 0.1 s: how long a retry waits for its first request's job
LINK_TIMEOUT_S = 15.0  # an init_image_url download, before the job is accepted
ImageId = Annotated[int, Path(ge=1, le=2**62)]  # SQLite integers end at 2**63
JobId = Annotated[str, Path(min_length=1, max_length=40)]
STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.DONE: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "canceled",
}


# --- routes ---------------------------------------------------------------------------------


def diffusion_routes() -> APIRouter:
    router = APIRouter()

    @router.post(
        "/generate",
        status_code=202,
        response_model=JobResource,
        responses={200: {"model": JobResource, "description": "finished within Prefer: wait"}},
        openapi_extra={"requestBody": GENERATE_BODY_DOC},
    )
    async def generate(
        body: Annotated[GenerateBody, Depends(generate_body)],
        request: Request,
        account: Caller,
        prefer: Annotated[str | None, Header()] = None,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
    ) -> Response:
        """Queue a job. `Prefer: wait=N` holds the answer up to N s (60 at most) and returns
        the finished job (200) if it finishes by then. A retry with the same
        `Idempotency-Key` and body gets the same job (for 24 hours), not a second one."""
        context: ApiContext = request.app.state.context
        headers: dict[str, str] = {}
        job_id = None
        notes: list[str] = []
        if idempotency_key is not None:
            job_id = await _replayed_job(context, account, idempotency_key, body)
            headers["Idempotent-Replayed"] = "true" if job_id else "false"
        if job_id is None:
            guild_id = await context.server_for(account, body.server_id)
            try:
                accepted = await context.accept(
                    account,
                    await _generation_request(context, body),
                    fields=set(GenerateBody.model_fields),
                    style=body.style,
                    expand=body.expand,
                    guild_id=guild_id,
                )
            except BaseException:
                if idempotency_key is not None:
                    await context.service.db.idempotency.release(account.user_id, idempotency_key)
                raise
            job_id = accepted.job.id
            notes = [str(told) for told in accepted.notes]
            if idempotency_key is not None:
                await context.service.db.idempotency.bind(account.user_id, idempotency_key, job_id)
        wait_s = _prefer_wait(prefer)
        if wait_s:
            await context.recorded(job_id, wait_s)
        job = await context.service.db.jobs.get(job_id)
        resource = await _resource(context, request, job)
        resource.notes = notes or None
        response = JSONResponse(
            resource.model_dump(mode="json"),
            status_code=200 if job.finished else 202,
            headers={"Location": resource.urls.get, **headers},
        )
        return with_rate_headers(request, response)

    @router.post("/refine", status_code=202, response_model=JobResource)
    async def refine(body: RefineBody, request: Request, account: Caller) -> Response:
        """Change one of your results as `instruction` says ("make it night"): a new job,
        an img2img of that image with the prompt refined, chained to it (`parent_id`).
        Refine the new job next to keep the conversation going."""
        context: ApiContext = request.app.state.context
        parent = await _own_job(context, body.parent_id, account)
        try:
            refinement = await context.service.refinement(parent, body.image, body.instruction)
        except InvalidField as error:
            raise ApiError(422, "invalid_request", str(error), field=error.field) from None
        accepted = await context.accept(
            account,
            refinement.request,
            fields=set(RefineBody.model_fields),
            parent=refinement.parent,
            init_image_key=refinement.init_image_key,
        )
        resource = await _resource(context, request, accepted.job)
        resource.notes = [f"The prompt was refined by {refinement.by}: {refinement.request.prompt}"]
        response = JSONResponse(
            resource.model_dump(mode="json"),
            status_code=202,
            headers={"Location": resource.urls.get},
        )
        return with_rate_headers(request, response)

    @router.get("/jobs/{job_id}", response_model=JobResource)
    async def get_job(job_id: JobId, request: Request, account: Caller) -> Response:
        context: ApiContext = request.app.state.context
        job = await _own_job(context, job_id, account)
        resource = await _resource(context, request, job)
        return with_rate_headers(request, JSONResponse(resource.model_dump(mode="json")))

    @router.post("/jobs/{job_id}/cancel", response_model=JobResource)
    async def cancel_job(job_id: JobId, request: Request, account: Caller) -> Response:
        """Cancel a queued or running job; a finished one is returned as it is."""
        context: ApiContext = request.app.state.context
        job = await _own_job(context, job_id, account)
        feed = context.service.feed(job.id)
        if feed is not None:
            feed.cancel()
            await context.recorded(job.id, 10)
        elif not job.finished:
            # Queued in storage but not running here (waiting for its front door's resume).
            with contextlib.suppress(InvalidTransition):
                await context.service.db.jobs.mark_cancelled(job.id, "cancelled by its owner")
        job = await context.service.db.jobs.get(job.id)
        resource = await _resource(context, request, job)
        return with_rate_headers(request, JSONResponse(resource.model_dump(mode="json")))

    @router.get(
        "/jobs/{job_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_events(
        job_id: JobId,
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
        return with_rate_headers(request, response)

    @router.get(
        "/images/{image_id}.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def image_png(image_id: ImageId, request: Request, account: Caller) -> Response:
        """The full PNG, with its generation parameters in the `parameters` text chunk."""
        context: ApiContext = request.app.state.context
        image = await _own_image(context, image_id, account)
        data = await context.service.image_bytes(image)
        return with_rate_headers(
            request, Response(data, media_type="image/png", headers=_private())
        )

    @router.get(
        "/images/{image_id}/thumb.webp",
        response_class=Response,
        responses={200: {"content": {"image/webp": {}}}},
    )
    async def image_thumbnail(image_id: ImageId, request: Request, account: Caller) -> Response:
        context: ApiContext = request.app.state.context
        image = await _own_image(context, image_id, account)
        if image.thumbnail_key is None:
            raise not_found("thumbnail")
        data = await context.service.images.get(image.thumbnail_key)
        return with_rate_headers(
            request, Response(data, media_type="image/webp", headers=_private())
        )

    @router.get("/models", response_model=list[ModelInfo])
    async def models(
        request: Request,
        account: Caller,
        server_id: Annotated[
            str | None,
            Query(pattern=r"^[0-9]{1,20}$", description="the models that server offers"),
        ] = None,
    ) -> Response:
        context: ApiContext = request.app.state.context
        guild_id = await context.server_for(account, server_id)
        default, offered = await context.service.server_models(guild_id)
        listed = [
            ModelInfo(
                name=spec.name,
                family=spec.family.value,
                description=spec.description,
                license=spec.license,
                default=spec.name == default,
                steps=spec.presets.steps,
                max_steps=spec.presets.max_steps,
                guidance=spec.presets.guidance,
                width=spec.presets.width,
                height=spec.presets.height,
                max_size=spec.presets.max_size,
                scheduler=spec.presets.scheduler,
            ).model_dump(mode="json")
            for spec in context.registry.specs()
            if spec.name in offered
        ]
        return with_rate_headers(request, JSONResponse(listed))

    return router


# --- helpers --------------------------------------------------------------------------------


IMAGE_FIELDS = ("init_image", "mask_image")
GENERATE_BODY_DOC: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/GenerateBody"}},
        "multipart/form-data": {
            "schema": {
                "$ref": "#/components/schemas/GenerateBody",
                "description": "the same fields as form fields; init_image and mask_image "
                "may be files",
            },
            "encoding": {name: {"contentType": "image/*"} for name in IMAGE_FIELDS},
        },
    },
}


async def generate_body(request: Request) -> GenerateBody:
    """The generate body, as JSON or as a multipart form whose images may be uploaded files."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    data: Any
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=len(IMAGE_FIELDS), max_fields=40)
        except Exception as error:  # a malformed or over-large form: the client's doing
            raise ApiError(422, "invalid_form", f"The form could not be read ({error}).") from None
        data = {}
        for name in set(form.keys()):
            values = form.getlist(name)
            if name == "outpaint_sides":
                data[name] = [str(value) for value in values]
                continue
            value = values[-1]
            if isinstance(value, UploadFile):
                if name not in IMAGE_FIELDS:
                    raise ApiError(422, "invalid_request", "Only images may be files.", field=name)
                value = base64.b64encode(await value.read()).decode()
            data[name] = value
    else:
        try:
            data = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(
                422, "invalid_json", "The body is not valid JSON.", field="body"
            ) from None
    try:
        return GenerateBody.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


async def _generation_request(context: ApiContext, body: GenerateBody) -> GenerationRequest:
    init_image = base64.b64decode(body.init_image) if body.init_image else None
    if body.init_image_url is not None:
        if init_image is not None:
            raise ApiError(
                422,
                "invalid_request",
                "Give init_image or init_image_url, not both.",
                field="init_image_url",
            )
        init_image = await linked_image(context, body.init_image_url, "init_image_url")
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
        init_image=init_image,
        mask_image=base64.b64decode(body.mask_image) if body.mask_image else None,
        outpaint_sides=tuple(body.outpaint_sides),
        outpaint_pixels=body.outpaint_pixels,
    )


async def linked_image(context: ApiContext, url: str, field: str) -> bytes:
    """The picture at ``url``, through the address checks; a refusal names ``field``."""
    try:
        return await downloads.image_from_link(
            url,
            max_bytes=context.settings.api_max_body_mb * 2**20,
            timeout_s=LINK_TIMEOUT_S,
            allowed=downloads.allowed_hosts(context.settings.link_test_hosts),
        )
    except UserError as error:
        raise ApiError(422, "invalid_request", str(error), field=field) from None


async def _replayed_job(
    context: ApiContext, account: Account, key: str, body: GenerateBody
) -> str | None:
    """The job this key already made with this body, or None once the key is claimed for a
    new one. The same key with another body is refused."""
    digest = hashlib.sha256(
        json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()
    for _ in range(IDEMPOTENCY_POLLS):
        claim = await context.service.db.idempotency.claim(account.user_id, key, digest)
        if claim is None:
            return None
        if not claim.same_body:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request body.",
                field="Idempotency-Key",
            )
        if claim.job_id is not None:
            return claim.job_id
        await asyncio.sleep(0.1)  # its first request is being accepted right now
    raise ApiError(
        409,
        "idempotency_key_in_use",
        "A request with this Idempotency-Key is still being accepted; retry in a moment.",
    )


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
    if job is None or job.user_id != account.user_id:
        raise not_found()
    return job


async def _own_image(context: ApiContext, image_id: int, account: Account) -> Image:
    """An image the caller may see: theirs, one they starred (they saw it where it was
    public), or a shared one. Anything else is a 404, as if it did not exist."""
    db = context.service.db
    image = await db.images.find(image_id)
    if image is None:
        raise not_found("image")
    job = await db.jobs.find(image.job_id)
    if job is None:
        raise not_found("image")
    if (
        job.user_id != account.user_id
        and not is_shared(job)
        and not await db.favourites.is_favourite(account.user_id, image.id)
    ):
        raise not_found("image")
    return image


def is_shared(job: Job) -> bool:
    """Shared by its owner, and neither deleted by them since nor taken down by a
    moderator: public to anyone."""
    return (
        job.shared_at is not None
        and not job.private
        and job.gallery_removed_at is None
        and job.hidden_at is None
    )


def _private() -> dict[str, str]:
    return {"Cache-Control": "private, max-age=31536000, immutable"}


def _when(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


async def _resource(
    context: ApiContext, request: Request, job: Job, images: list[Image] | None = None
) -> JobResource:
    base = _routes_url(request)
    if images is None:
        images = list(await context.service.job_images(job.id)) if job.finished else []
    withheld = (
        [entry.index for entry in await context.service.db.safety.for_job(job.id) if entry.held]
        if job.status is JobStatus.DONE
        else []
    )
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
        output=image_urls(context, request, job, images) or None,
        image_routes=image_routes(request, images) or None,
        seeds=[image.seed for image in images] if images else None,
        prompts=list(stored.prompts) or None,
        error=job.error if job.status in (JobStatus.FAILED, JobStatus.CANCELLED) else None,
        withheld=withheld or None,
        parent_id=job.parent_job_id,
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


def image_urls(context: ApiContext, request: Request, job: Job, images: list[Image]) -> list[str]:
    """Where each of ``job``'s images can be fetched. From a bucket, straight from it, so
    the bytes skip this process: a shared job's through the public (CDN) address when there
    is one, any other by a presigned link that expires (a private image's link must not
    outlive S3_PRESIGN_SECONDS). From local files, our own route."""
    store = context.service.images
    if isinstance(store, LinkedImageStore):
        public = is_shared(job)
        return [store.url_for(image.file_key, public=public) for image in images]
    return image_routes(request, images)


def image_routes(request: Request, images: list[Image]) -> list[str]:
    """Each image's route here (key needed), as the caller reached us."""
    return [f"{_routes_url(request)}/images/{image.id}.png" for image in images]


def _routes_url(request: Request) -> str:
    """Where these routes are, as the caller reached us."""
    return str(request.base_url).rstrip("/") + PREFIX


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
        encoded, media_type = await encode_preview_base64(event.preview)
        progress["preview"] = f"data:{media_type};base64,{encoded}"
    return _sse("progress", progress, event_id)


async def encode_preview_base64(preview: PILImage.Image) -> tuple[str, str]:
    """A live preview as base64 and its media type (WebP or JPEG), encoded off the loop."""
    data, extension = await asyncio.to_thread(encode_preview, preview)
    return base64.b64encode(data).decode(), "image/jpeg" if extension == "jpg" else "image/webp"


async def _final(
    context: ApiContext, request: Request, job_id: str, event_id: str | None = None
) -> bytes:
    job = await context.service.db.jobs.get(job_id)
    resource = await _resource(context, request, job)
    name = resource.status if job.finished else "pending"
    return _sse(name, resource.model_dump(mode="json"), event_id or f"end-{job.id}")
