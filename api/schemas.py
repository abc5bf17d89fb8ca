"""The API's request and response bodies (their JSON Schema is the OpenAPI document's)."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.types import Operation

MAX_PROMPT = 2000
Aspect = Literal["1:1", "2:3", "3:2", "9:16", "16:9"]
Side = Literal["left", "right", "top", "bottom"]


def _image(value: str | None) -> str | None:
    """Base64 (optionally a ``data:image/...;base64,`` URL); decoded later, checked here."""
    if value is None:
        return None
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 (or a data: URL) of a PNG, JPEG or WebP image") from None
    return payload


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT,
        description="What to draw. AUTOMATIC1111 emphasis works: (word:1.3), ((word)), [word],"
        " BREAK; up to 300 tokens are read.",
    )
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT)
    model: str | None = Field(default=None, max_length=100, description="GET /models names")
    operation: Operation = Operation.TXT2IMG
    count: int = Field(default=1, ge=1, le=4)
    steps: int | None = Field(default=None, ge=1, le=150)
    guidance: float | None = Field(default=None, ge=0, le=30)
    width: int | None = Field(default=None, ge=64, le=4096)
    height: int | None = Field(default=None, ge=64, le=4096)
    aspect: Aspect | None = None
    scheduler: str | None = Field(default=None, max_length=40)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    strength: float | None = Field(default=None, gt=0, le=1)
    variation: Literal["subtle", "strong"] | None = None
    init_image: str | None = Field(default=None, description="base64 or data: URL")
    init_image_url: str | None = Field(
        default=None,
        max_length=2000,
        description="or an https link to the starting image (public addresses only)",
    )
    mask_image: str | None = Field(default=None, description="base64; white = repaint")
    outpaint_sides: list[Side] = Field(default_factory=list, max_length=4)
    outpaint_pixels: int = Field(default=128, ge=8, le=1024)
    style: str | None = Field(
        default=None, max_length=32, description="a built-in style: photo, cinematic, anime..."
    )
    expand: Literal["all", "random"] = Field(
        default="all",
        description="a prompt with {a|b} choices makes one image per combination: every one"
        " (4 at most) or `count` random ones",
    )
    server_id: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,20}$",
        description="a Discord server you are in: its default model, the models it offers, its"
        " quota and its image check apply (a key that acts as a Discord user, bot running)",
    )

    _check_images = field_validator("init_image", "mask_image")(_image)


class RefineBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parent_id: str = Field(min_length=1, max_length=40, description="a job of yours")
    instruction: str = Field(
        min_length=1,
        max_length=500,
        description='what to change, in a few words: "make it night", "add a red hat", "더 밝게"',
    )
    image: int = Field(default=0, ge=0, le=3, description="which of the parent's images (0-3)")


class DetectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(default=None, description="base64 or data: URL of the picture")
    image_url: str | None = Field(
        default=None, max_length=2000, description="or an https link to it"
    )
    threshold: float | None = Field(
        default=None, gt=0, le=1, description="how sure a detection must be (default 0.5)"
    )

    _check_image = field_validator("image")(_image)


class DetectionItem(BaseModel):
    label: str
    score: float = Field(ge=0, le=1)
    box: list[float] = Field(min_length=4, max_length=4, description="x0, y0, x1, y1 in pixels")


class DetectResult(BaseModel):
    detector: str = Field(description='"local" (a model in this process) or "remote" (a service)')
    width: int
    height: int
    detections: list[DetectionItem] = Field(description="most certain first")
    counts: dict[str, int] = Field(description="how many of each label")
    annotated_image: str = Field(description="base64 PNG: the picture with the boxes drawn")


class Metrics(BaseModel):
    queued_s: float | None = None
    load_s: float | None = None
    predict_time: float | None = Field(default=None, description="generation seconds")
    total_s: float | None = None


class JobUrls(BaseModel):
    get: str
    cancel: str
    events: str


class JobResource(BaseModel):
    """A job, shaped like a Replicate prediction."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    position: int | None = Field(default=None, description="1 = next to run")
    eta_s: float | None = None
    input: dict[str, object]
    output: list[str] | None = Field(
        default=None,
        description="image URLs (PNG). With images kept in S3 (S3_BUCKET), links straight to "
        "the bucket that need no key: a shared image's at S3_PUBLIC_BASE_URL when it is set, "
        "any other a presigned link valid S3_PRESIGN_SECONDS; else this API's routes "
        "(image_routes)",
    )
    image_routes: list[str] | None = Field(
        default=None,
        description="each image's route on this API (needs your key; streams the PNG): "
        "`/favorite` and `/thumb.webp` hang off it",
    )
    seeds: list[int] | None = None
    prompts: list[str] | None = Field(
        default=None, description="each image's prompt, when {a|b} choices made them differ"
    )
    notes: list[str] | None = Field(
        default=None, description="what to know about the request (a capped expansion)"
    )
    error: str | None = None
    withheld: list[int] | None = Field(
        default=None,
        description="indices (from 0) of images the image check held back: not in output, "
        "not charged; a moderator can release them",
    )
    parent_id: str | None = Field(
        default=None, description="the job this one changes (an upscale, a refinement...)"
    )
    metrics: Metrics
    created_at: str
    started_at: str | None = None
    completed_at: str | None = None
    urls: JobUrls


class PromptSuggestions(BaseModel):
    mine: list[str] = Field(description="your own recent prompts that match, prefix matches first")
    popular: list[str] = Field(
        description="prompts of shared results that match, most shared first"
    )


class StyleInfo(BaseModel):
    name: str
    template: str = Field(description='the prompt goes where "{prompt}" is')
    negative: str


class FeedbackBody(BaseModel):
    vote: Literal["up", "down"] = Field(description="👍 or 👎; the same vote again takes it back")


class FeedbackState(BaseModel):
    vote: Literal["up", "down"] | None = Field(description="the vote now in force")


class ShareLink(BaseModel):
    url: str = Field(description="the public page: no key needed, with a preview for chats")
    shared: bool = Field(description="false once revoked")


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ModelInfo(BaseModel):
    name: str
    family: str
    description: str
    license: str
    default: bool
    steps: int
    max_steps: int
    guidance: float
    width: int
    height: int
    max_size: int
    scheduler: str


class HistoryPage(BaseModel):
    items: list[JobResource]
    total: int
    page: int
    pages: int
