"""Compatibility routes, so tools written for other APIs work against ours unchanged:
AUTOMATIC1111's web UI API (``/sdapi/v1/...``) and OpenAI's image generation
(``/v1/images/generations``). They queue jobs on the same queue, under the caller's key and
quotas, and answer when the job has finished, as those APIs do."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from api.accounts import Account
from api.context import ApiContext, ApiError, Caller, with_rate_headers
from api.diffusion import encode_preview_base64, image_urls
from api.schemas import MAX_PROMPT
from core.storage.records import Image, Job, JobStatus
from engine.images import read_png_parameters, sampler_to_scheduler, scheduler_to_sampler
from engine.registry import SCHEDULERS
from engine.types import GenerationRequest, Operation, Progress

WAIT_S = 600.0  # these APIs answer with the images: a job still queued after this is a 504
MAX_COUNT = 4
OPENAI_NAMES = ("dall-e", "gpt-image")  # their clients' default models: ours stands in


# --- AUTOMATIC1111 ----------------------------------------------------------------------------


class A1111Txt2Img(BaseModel):
    """The fields we use; the many others real clients send are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(default="", max_length=MAX_PROMPT)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT)
    seed: int = Field(default=-1, ge=-1, le=2**32 - 1)
    sampler_name: str | None = Field(default=None, max_length=60)
    sampler_index: str | None = Field(default=None, max_length=60)
    scheduler: str | None = Field(default=None, max_length=60)
    batch_size: int = Field(default=1, ge=1, le=MAX_COUNT)
    n_iter: int = Field(default=1, ge=1, le=MAX_COUNT)
    steps: int | None = Field(default=None, ge=1, le=150)
    cfg_scale: float | None = Field(default=None, ge=0, le=30)
    width: int | None = Field(default=None, ge=64, le=4096)
    height: int | None = Field(default=None, ge=64, le=4096)
    override_settings: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True


class A1111Img2Img(A1111Txt2Img):
    init_images: list[str] = Field(min_length=1, max_length=1)
    denoising_strength: float = Field(default=0.75, gt=0, le=1)
    mask: str | None = None


class A1111Response(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


class A1111Progress(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None
    textinfo: str | None = None


class A1111Model(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class A1111Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


# --- OpenAI -----------------------------------------------------------------------------------


class OpenAIGeneration(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT)
    model: str | None = Field(default=None, max_length=100)
    n: int = Field(default=1, ge=1, le=MAX_COUNT)
    size: str | None = Field(default=None, pattern=r"^(auto|\d{2,4}x\d{2,4})$")
    response_format: Literal["url", "b64_json"] = "url"


class OpenAIImage(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class OpenAIImages(BaseModel):
    created: int
    data: list[OpenAIImage]


# --- routes -----------------------------------------------------------------------------------


def compat_routes() -> APIRouter:
    router = APIRouter()

    @router.post("/sdapi/v1/txt2img", response_model=A1111Response, tags=["AUTOMATIC1111"])
    async def txt2img(body: A1111Txt2Img, request: Request, account: Caller) -> Response:
        context: ApiContext = request.app.state.context
        generation = _a1111_request(context, body, Operation.TXT2IMG)
        return await _a1111_answer(context, request, account, body, generation)

    @router.post("/sdapi/v1/img2img", response_model=A1111Response, tags=["AUTOMATIC1111"])
    async def img2img(body: A1111Img2Img, request: Request, account: Caller) -> Response:
        context: ApiContext = request.app.state.context
        operation = Operation.INPAINT if body.mask else Operation.IMG2IMG
        generation = _a1111_request(context, body, operation)
        return await _a1111_answer(context, request, account, body, generation)

    @router.get("/sdapi/v1/progress", response_model=A1111Progress, tags=["AUTOMATIC1111"])
    async def progress(
        request: Request,
        account: Caller,
        skip_current_image: Annotated[bool, Query()] = False,
    ) -> Response:
        """The caller's job that runs now (or next), as the web UI reports its own."""
        context: ApiContext = request.app.state.context
        live = context.live_jobs(account.user_id)
        step = total = 0
        eta = 0.0
        image = None
        for feed in live:
            latest = feed.latest.event if feed.latest is not None else None
            if isinstance(latest, Progress):
                step, total, eta = latest.step, latest.total, latest.eta_s or 0.0
                if latest.preview is not None and not skip_current_image:
                    image, _ = await encode_preview_base64(latest.preview)
                break
        body = A1111Progress(
            progress=round(step / total, 4) if total else 0.0,
            eta_relative=round(eta, 2),
            state={
                "skipped": False,
                "interrupted": False,
                "job": live[0].request.prompt[:60] if live else "",
                "job_count": len(live),
                "job_timestamp": "0",
                "job_no": 0,
                "sampling_step": step,
                "sampling_steps": total,
            },
            current_image=image,
        )
        return with_rate_headers(request, JSONResponse(body.model_dump(mode="json")))

    @router.post("/sdapi/v1/interrupt", tags=["AUTOMATIC1111"])
    async def interrupt(request: Request, account: Caller) -> Response:
        """Stop the caller's running and queued jobs (theirs only: the queue is shared)."""
        context: ApiContext = request.app.state.context
        for feed in context.live_jobs(account.user_id):
            feed.cancel()
        return with_rate_headers(request, JSONResponse({}))

    @router.get("/sdapi/v1/sd-models", response_model=list[A1111Model], tags=["AUTOMATIC1111"])
    async def sd_models(request: Request, account: Caller) -> Response:
        context: ApiContext = request.app.state.context
        listed = [
            A1111Model(title=spec.name, model_name=spec.name, filename=spec.source).model_dump()
            for spec in context.registry.specs()
        ]
        return with_rate_headers(request, JSONResponse(listed))

    @router.get("/sdapi/v1/samplers", response_model=list[A1111Sampler], tags=["AUTOMATIC1111"])
    async def samplers(request: Request, account: Caller) -> Response:
        listed = [
            A1111Sampler(name=scheduler_to_sampler(name), aliases=[name], options={}).model_dump()
            for name in SCHEDULERS
        ]
        return with_rate_headers(request, JSONResponse(listed))

    @router.get("/sdapi/v1/options", tags=["AUTOMATIC1111"])
    async def options(request: Request, account: Caller) -> Response:
        """The one option clients read: which model is selected (the default)."""
        context: ApiContext = request.app.state.context
        return with_rate_headers(
            request, JSONResponse({"sd_model_checkpoint": context.registry.default_name})
        )

    @router.post("/v1/images/generations", response_model=OpenAIImages, tags=["OpenAI"])
    async def openai_generations(
        body: OpenAIGeneration, request: Request, account: Caller
    ) -> Response:
        context: ApiContext = request.app.state.context
        model = body.model
        if model is not None and model.startswith(OPENAI_NAMES):
            model = None  # the client's built-in default: use ours
        width = height = None
        if body.size and body.size != "auto":
            width, height = (int(side) for side in body.size.split("x"))
        generation = GenerationRequest(
            prompt=body.prompt, model=model, count=body.n, width=width, height=height
        )
        job, images = await _run(context, account, generation, set(OpenAIGeneration.model_fields))
        if body.response_format == "b64_json":
            data = [
                OpenAIImage(
                    b64_json=base64.b64encode(await context.service.image_bytes(i)).decode()
                )
                for i in images
            ]
        else:
            data = [OpenAIImage(url=url) for url in image_urls(context, request, job, images)]
        answer = OpenAIImages(created=int(job.created_at.timestamp()), data=data)
        return with_rate_headers(
            request, JSONResponse(answer.model_dump(mode="json", exclude_none=True))
        )

    return router


# --- helpers ----------------------------------------------------------------------------------


def _model_named(context: ApiContext, checkpoint: object) -> str | None:
    """The web UI's ``sd_model_checkpoint`` ("name.safetensors [hash]") as one of ours."""
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        return None
    name = checkpoint.split(" [", 1)[0].strip()
    for suffix in (".safetensors", ".ckpt"):
        name = name.removesuffix(suffix)
    if name not in context.registry.names():
        raise ApiError(
            422,
            "invalid_request",
            f"There is no model {name!r}. GET /sdapi/v1/sd-models lists them.",
            field="override_settings.sd_model_checkpoint",
        )
    return name


def _decode(value: str, field: str) -> bytes:
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_request", "This is not a base64 image.", field=field) from None


def _a1111_request(
    context: ApiContext, body: A1111Txt2Img, operation: Operation
) -> GenerationRequest:
    sampler = body.sampler_name or body.sampler_index
    scheduler = sampler_to_scheduler(sampler, body.scheduler) if sampler else None
    if sampler and scheduler is None:
        raise ApiError(
            422,
            "invalid_request",
            f"There is no sampler {sampler!r} here. GET /sdapi/v1/samplers lists them.",
            field="sampler_name",
        )
    init = mask = None
    strength = None
    if isinstance(body, A1111Img2Img):
        init = _decode(body.init_images[0], "init_images")
        mask = _decode(body.mask, "mask") if body.mask else None
        strength = body.denoising_strength
    return GenerationRequest(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        model=_model_named(context, body.override_settings.get("sd_model_checkpoint")),
        operation=operation,
        count=body.batch_size * body.n_iter,
        steps=body.steps,
        guidance=body.cfg_scale,
        width=body.width,
        height=body.height,
        scheduler=scheduler,
        seed=None if body.seed == -1 else body.seed,
        strength=strength,
        init_image=init,
        mask_image=mask,
    )


async def _a1111_answer(
    context: ApiContext,
    request: Request,
    account: Account,
    body: A1111Txt2Img,
    generation: GenerationRequest,
) -> Response:
    if generation.count > MAX_COUNT:
        raise ApiError(
            422,
            "invalid_request",
            f"batch_size x n_iter is {generation.count}; at most {MAX_COUNT} images a request.",
            field="batch_size",
        )
    fields = set(type(body).model_fields)
    job, images = await _run(context, account, generation, fields)
    data = [await context.service.image_bytes(image) for image in images]
    infotexts, encoded = await asyncio.to_thread(_describe_pngs, data)
    seeds = [image.seed for image in images]
    info = {
        "prompt": generation.prompt,
        "all_prompts": [generation.prompt] * len(images),
        "negative_prompt": generation.negative_prompt,
        "seed": seeds[0] if seeds else -1,
        "all_seeds": seeds,
        "width": images[0].width if images else body.width,
        "height": images[0].height if images else body.height,
        "steps": body.steps,
        "cfg_scale": body.cfg_scale,
        "batch_size": len(images),
        "sd_model_name": json.loads(job.request).get("model"),
        "job_id": job.id,
        "infotexts": infotexts,
    }
    answer = A1111Response(
        images=encoded if body.send_images else [],
        parameters=body.model_dump(exclude={"init_images", "mask"}),
        info=json.dumps(info),
    )
    return with_rate_headers(request, JSONResponse(answer.model_dump(mode="json")))


async def _run(
    context: ApiContext, account: Account, generation: GenerationRequest, fields: set[str]
) -> tuple[Job, list[Image]]:
    """Queue the job and wait for its outcome, as the synchronous APIs do."""
    accepted = await context.accept(account, generation, fields=fields)
    await context.recorded(accepted.job.id, WAIT_S)
    job = await context.service.db.jobs.get(accepted.job.id)
    if job.status is JobStatus.DONE:
        return job, list(await context.service.job_images(job.id))
    if job.status is JobStatus.FAILED:
        raise ApiError(422, "generation_failed", job.error or "The generation failed.")
    if job.status is JobStatus.CANCELLED:
        raise ApiError(409, "canceled", "The job was interrupted before it finished.")
    raise ApiError(504, "timeout", f"The job {job.id} is still {job.status.value}; poll it.")


def _describe_pngs(pngs: list[bytes]) -> tuple[list[str], list[str]]:
    """Each PNG's parameters text and its base64 (off the loop: the PNGs may be large)."""
    return (
        [read_png_parameters(png) or "" for png in pngs],
        [base64.b64encode(png).decode() for png in pngs],
    )
