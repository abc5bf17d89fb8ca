"""Plain data that crosses the engine's boundary: requests, results, events.

Nothing here imports torch or diffusers, so callers (the bot, the scheduler, tests of pure
logic) can use these types without loading the machine-learning stack.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from PIL import Image


class Operation(enum.StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    VARIATION = "variation"
    UPSCALE = "upscale"
    INPAINT = "inpaint"
    OUTPAINT = "outpaint"


class Family(enum.StrEnum):
    SD15 = "sd15"
    SDXL = "sdxl"


# Images per pipeline call unless configured: what fits a 24 GB GPU at the default size.
DEFAULT_BATCH_IMAGES = {Family.SD15: 8, Family.SDXL: 4}


VariationStrength = Literal["subtle", "strong"]
OutpaintSide = Literal["left", "right", "top", "bottom"]

MAX_IMAGES_PER_REQUEST = 4
MAX_SEED = 2**32 - 1


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a caller asks for. Unset fields take the model's presets.

    Input images travel as encoded bytes (PNG, JPEG, WebP) so a request stays hashable,
    serialisable and cheap to store; the engine decodes and checks them.
    """

    prompt: str
    model: str | None = None  # None: the registry's default model
    operation: Operation = Operation.TXT2IMG
    negative_prompt: str = ""
    count: int = 1
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    aspect: str | None = None  # "1:1", "2:3", "3:2", "9:16", "16:9"; ignored if width/height set
    scheduler: str | None = None
    seed: int | None = None  # None: drawn at random when the request is resolved
    strength: float | None = None  # img2img / upscale / inpaint denoising strength
    variation: VariationStrength | None = None
    init_image: bytes | None = None
    mask_image: bytes | None = None  # white = repaint, black = keep
    outpaint_sides: tuple[OutpaintSide, ...] = ()  # empty: all around
    outpaint_pixels: int = 128
    # 0: no previews; N: a cheap preview every N steps, and at least one before the last
    # step of a call of two or more steps (preview_due)
    preview_every: int = 0
    # One prompt per image, when they differ (a prompt's {a|b} choices, expanded): ``count``
    # of them. ``prompt`` stays the prompt as written.
    prompts: tuple[str, ...] = ()
    # LoRAs by registry name, with their weights (None: the registry's); ``<lora:name:w>``
    # tags in the prompt add to these.
    loras: tuple[tuple[str, float | None], ...] = ()

    def prompt_of(self, index: int) -> str:
        """The prompt image ``index`` was drawn from."""
        return self.prompts[index] if 0 <= index < len(self.prompts) else self.prompt


@dataclass(frozen=True, slots=True)
class ResolvedRequest:
    """A validated request with every default filled in and the seed fixed.

    Two requests that share a ``batch_key`` can run in one pipeline call.
    """

    model: str
    family: Family
    operation: Operation
    prompt: str
    negative_prompt: str  # includes the model's negative-prompt prefix
    count: int
    steps: int
    guidance: float
    width: int
    height: int
    scheduler: str
    seed: int
    seed_was_explicit: bool
    strength: float | None
    # The input image and mask as the pipeline takes them (PNG, already at the operation's
    # input size), not the upload: the upload is decoded once, when the request is resolved.
    init_image: bytes | None
    mask_image: bytes | None
    preview_every: int
    prompt_truncated: bool = False  # the prompt was longer than the text encoder takes
    outpaint_sides: tuple[OutpaintSide, ...] = ()
    outpaint_pixels: int = 0
    # Text-encoder chunks the longer of prompt and negative takes (75 tokens each); 1 for
    # most prompts. Cross-attention over more chunks changes an image, so only prompts of
    # the same length share a call.
    prompt_chunks: int = 1
    prompts: tuple[str, ...] = ()  # per image, cleaned and fitted; empty: ``prompt`` for all
    loras: tuple[tuple[str, float], ...] = ()  # (registry name, weight), sorted by name

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple((self.seed + i) % (MAX_SEED + 1) for i in range(self.count))

    @property
    def batch_key(self) -> tuple[object, ...]:
        return (
            self.model,
            self.operation,
            self.width,
            self.height,
            self.steps,
            self.guidance,
            self.scheduler,
            self.strength,
            # Outpainting pads every image of a call the same way.
            self.outpaint_sides,
            self.outpaint_pixels,
            self.prompt_chunks,
            self.loras,  # adapters are set for a whole pipeline call
        )

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def slots(self, job_id: str) -> list[ImageSlot]:
        """This job's images as slots of a pipeline call: image i gets seed + i."""
        return [
            ImageSlot(
                job_id=job_id,
                index=index,
                prompt=self.prompts[index] if self.prompts else self.prompt,
                negative_prompt=self.negative_prompt,
                seed=seed,
                init_image=self.init_image,
                mask_image=self.mask_image,
                preview_every=self.preview_every,
            )
            for index, seed in enumerate(self.seeds)
        ]


@dataclass(frozen=True, slots=True)
class ImageSlot:
    """One image of one job inside a pipeline call."""

    job_id: str
    index: int  # image index inside its job; its seed is the job's seed + index
    prompt: str
    negative_prompt: str
    seed: int
    init_image: bytes | None = None
    mask_image: bytes | None = None
    preview_every: int = 0  # this job's preview cadence; only its index-0 slot gets previews


def preview_due(step: int, total: int, every: int) -> bool:
    """Whether step ``step`` (1-based) of ``total`` draws a preview for a job that asked for
    one every ``every`` steps (0: never).

    The cadence is capped at ``total - 1``, so a call of two or more steps always previews
    at least one step before the last: a distilled model's 2 steps with a preview every 5
    steps previews steps 1 and 2, not none.
    """
    if every <= 0:
        return False
    cadence = min(every, total - 1) if total > 1 else every
    return step % cadence == 0


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    image: Image.Image
    seed: int
    parameters: str  # AUTOMATIC1111-style "parameters" text, also embedded in png_bytes()
    nsfw_score: float | None = None  # the image check's score, 0..1; None: not checked

    def png_bytes(self, compress_level: int = 1) -> bytes:
        from engine.images import encode_png

        return encode_png(self.image, self.parameters, compress_level=compress_level)


@dataclass(frozen=True, slots=True)
class Timings:
    queued_s: float = 0.0
    load_s: float = 0.0
    generate_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True, slots=True)
class JobResult:
    job_id: str
    request: ResolvedRequest
    images: tuple[GeneratedImage, ...]
    timings: Timings
    from_cache: bool = False

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(img.seed for img in self.images)


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Queued:
    position: int  # 1 = next to run
    eta_s: float | None


@dataclass(frozen=True, slots=True)
class Started:
    pass


@dataclass(frozen=True, slots=True)
class ModelLoading:
    model: str
    detail: str = ""  # e.g. download progress


@dataclass(frozen=True, slots=True)
class Progress:
    step: int
    total: int
    eta_s: float | None = None
    preview: Image.Image | None = None


@dataclass(frozen=True, slots=True)
class Done:
    result: JobResult


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str  # safe to show to a user


@dataclass(frozen=True, slots=True)
class Cancelled:
    pass


Event = Queued | Started | ModelLoading | Progress | Done | Failed | Cancelled
TERMINAL_EVENTS = (Done, Failed, Cancelled)


# --- the seam between the worker and the machine-learning code ---------------------------


@dataclass(slots=True)
class StepInfo:
    step: int  # 1-based, after this many denoising steps
    total: int
    previews: dict[str, Image.Image] = field(default_factory=dict)  # job id -> preview


# Called from the worker thread after each denoising step. It returns the ids of the jobs
# that were cancelled meanwhile; the backend drops their slots (or aborts the call when no
# slot is left) and does not decode them.
StepCallback = Callable[[StepInfo], frozenset[str]]
LoadCallback = Callable[[str], None]  # loading-progress text, from the loading thread


class Backend(Protocol):
    """Runs pipeline calls. Every method blocks; the worker calls them off the event loop."""

    def resolve(self, request: GenerationRequest) -> ResolvedRequest:
        """Validate and fill defaults; raises engine.errors.EngineError subclasses."""
        ...

    def is_loaded(self, model: str) -> bool: ...

    def load(self, model: str, on_progress: LoadCallback | None = None) -> None: ...

    def run(
        self, request: ResolvedRequest, slots: list[ImageSlot], on_step: StepCallback
    ) -> list[GeneratedImage | None]:
        """Run one pipeline call for ``slots`` (all sharing ``request.batch_key``).

        ``request`` supplies the shared parameters. Returns one entry per slot, in order;
        None for a slot whose job was cancelled. Raises engine.errors.OutOfMemory on
        device out-of-memory and engine.errors.Interrupted when every slot was cancelled.
        """
        ...
