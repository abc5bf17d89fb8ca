"""The diffusers implementation of the engine's ``Backend`` seam.

``resolve`` validates a request and fills every default without touching model weights;
``run`` performs one pipeline call for a batch of image slots. Every error a user can cause
comes out as an ``engine.errors`` exception whose text can be shown to that user.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import re
import secrets
import threading
import unicodedata
from dataclasses import dataclass

import torch
from PIL import Image

from engine import cuda_graphs
from engine.errors import N_, EngineError, OutOfMemory, ValidationError
from engine.images import format_parameters, open_user_image, open_user_mask
from engine.loader import LoadedModel, ModelManager, load_lora
from engine.ops import OPERATIONS, OpContext
from engine.ops.common import fit_exactly
from engine.ops.img2img import DEFAULT_IMG2IMG_STRENGTH
from engine.ops.inpaint import DEFAULT_INPAINT_STRENGTH
from engine.ops.outpaint import DEFAULT_OUTPAINT_STRENGTH, outpaint_geometry, outpaint_padding
from engine.ops.prompt_embeds import forget_embeddings
from engine.ops.upscale import DEFAULT_UPSCALE_STRENGTH, UPSCALE_FACTOR
from engine.ops.variation import DEFAULT_VARIATION, VARIATION_STRENGTHS
from engine.prompt_syntax import MAX_CHUNKS, chunk_count, extract_loras
from engine.registry import (
    ASPECT_RATIOS,
    MAX_LORA_WEIGHT,
    SCHEDULERS,
    ModelRegistry,
    ModelSpec,
    Presets,
    upscale_limit,
)
from engine.types import (
    MAX_IMAGES_PER_REQUEST,
    MAX_SEED,
    Family,
    GeneratedImage,
    GenerationRequest,
    ImageSlot,
    LoadCallback,
    Operation,
    ResolvedRequest,
    StepCallback,
)

log = logging.getLogger(__name__)

GUIDANCE_RANGE = (0.0, 30.0)
# Decoded input images above this are refused before decoding (decompression bombs).
DEFAULT_MAX_INPUT_PIXELS = 4096 * 4096
# CLIP's window is 77 tokens, two of which are the start and end markers.
DEFAULT_TOKEN_LIMIT = 75
MAX_LORAS = 4
FAMILY_NAMES = {Family.SD15: "SD 1.5", Family.SDXL: "SDXL"}
MAX_PREVIEW_EVERY = 1000
MAX_OUTPAINT_PIXELS = 512

IMAGE_OPERATIONS = frozenset(set(Operation) - {Operation.TXT2IMG})
DEFAULT_STRENGTHS: dict[Operation, float] = {
    Operation.IMG2IMG: DEFAULT_IMG2IMG_STRENGTH,
    Operation.VARIATION: VARIATION_STRENGTHS[DEFAULT_VARIATION],
    Operation.UPSCALE: DEFAULT_UPSCALE_STRENGTH,
    Operation.INPAINT: DEFAULT_INPAINT_STRENGTH,
    Operation.OUTPAINT: DEFAULT_OUTPAINT_STRENGTH,
}
_OOM_MARKERS = ("out of memory", "cuda error: out of memory", "mps backend out of memory")
# What a CLIP tokenizer splits words on, for estimating length when no tokenizer is at hand.
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.UNICODE)


# A 4096×4096 upload takes about 200 MB while it is decoded; this many decode at once.
DEFAULT_MAX_CONCURRENT_DECODES = 2


@dataclass(frozen=True, slots=True)
class BackendLimits:
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    max_concurrent_decodes: int = DEFAULT_MAX_CONCURRENT_DECODES


class DiffusersBackend:
    """Implements ``engine.types.Backend`` with diffusers pipelines."""

    def __init__(
        self,
        registry: ModelRegistry,
        manager: ModelManager,
        limits: BackendLimits | None = None,
    ) -> None:
        self.registry = registry
        self.manager = manager
        self.limits = limits or BackendLimits()
        # resolve runs on several threads at once; a fast tokenizer must not.
        self._tokenizer_lock = threading.Lock()
        # Decoding uploads is where a burst of requests costs memory: bound it.
        self._decode_slots = threading.BoundedSemaphore(max(1, self.limits.max_concurrent_decodes))

    # --- the Backend protocol -------------------------------------------------------------

    def resolve(self, request: GenerationRequest) -> ResolvedRequest:
        spec = self.registry.get(request.model)
        presets = spec.presets
        try:
            operation = Operation(request.operation)
        except ValueError:
            raise ValidationError(
                N_("Unknown operation {operation}."), operation=repr(request.operation)
            ) from None
        if not 1 <= request.count <= MAX_IMAGES_PER_REQUEST:
            raise ValidationError(N_("Ask for 1 to {most} images."), most=MAX_IMAGES_PER_REQUEST)

        loras, prompt, per_image = self._loras(spec, request)
        prompt = clean_prompt(prompt)
        if not prompt and operation is Operation.TXT2IMG:
            raise ValidationError(N_("The prompt is empty. Describe the image you want."))
        negative = clean_prompt(request.negative_prompt)
        prefix = clean_prompt(presets.negative_prefix)
        negative = ", ".join(part for part in (prefix, negative) if part)
        prompt, truncated = self._fit_prompt(spec, prompt)
        negative, _ = self._fit_prompt(spec, negative)
        prompts = self._per_image_prompts(spec, dataclasses.replace(request, prompts=per_image))
        truncated = truncated or any(cut for _, cut in prompts)
        per_image_prompts = tuple(text for text, _ in prompts)
        prompt_chunks = max(
            self._chunks(spec, text) for text in (prompt, negative, *per_image_prompts)
        )

        steps = presets.steps if request.steps is None else request.steps
        if not 1 <= steps <= presets.max_steps:
            raise ValidationError(
                N_("Steps must be between 1 and {most} for {model}."),
                most=presets.max_steps,
                model=spec.name,
            )
        guidance = presets.guidance if request.guidance is None else float(request.guidance)
        if not (GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1]) or math.isnan(guidance):
            raise ValidationError(
                N_("Guidance must be between {least} and {most}."),
                least=f"{GUIDANCE_RANGE[0]:g}",
                most=f"{GUIDANCE_RANGE[1]:g}",
            )
        scheduler = request.scheduler or presets.scheduler
        if scheduler not in SCHEDULERS:
            raise ValidationError(
                N_("Unknown scheduler {scheduler}. Choose one of: {choices}."),
                scheduler=repr(scheduler),
                choices=", ".join(SCHEDULERS),
            )
        if request.seed is None:
            seed, seed_was_explicit = secrets.randbelow(MAX_SEED + 1), False
        elif 0 <= request.seed <= MAX_SEED:
            seed, seed_was_explicit = int(request.seed), True
        else:
            raise ValidationError(N_("The seed must be between 0 and {most}."), most=MAX_SEED)
        if not 0 <= request.preview_every <= MAX_PREVIEW_EVERY:
            raise ValidationError(
                N_("preview_every must be 0 (off) or a positive number of steps.")
            )

        strength = self._strength(operation, request)
        init_image = mask_image = None
        if operation is Operation.TXT2IMG:
            width, height = self._txt2img_size(spec, request)
            outpaint_pixels = 0
        else:
            width, height, outpaint_pixels, init_image, mask_image = self._image_inputs(
                spec, operation, request
            )
        if strength is not None:
            steps = steps_for_strength(steps, strength, presets.max_steps, spec.name)
        return ResolvedRequest(
            model=spec.name,
            family=spec.family,
            operation=operation,
            prompt=prompt,
            negative_prompt=negative,
            count=request.count,
            steps=steps,
            guidance=guidance,
            width=width,
            height=height,
            scheduler=scheduler,
            seed=seed,
            seed_was_explicit=seed_was_explicit,
            strength=strength,
            init_image=init_image,
            mask_image=mask_image,
            preview_every=request.preview_every,
            prompt_truncated=truncated,
            outpaint_sides=tuple(request.outpaint_sides) if operation is Operation.OUTPAINT else (),
            outpaint_pixels=outpaint_pixels,
            prompt_chunks=prompt_chunks,
            prompts=per_image_prompts,
            loras=loras,
        )

    def is_loaded(self, model: str) -> bool:
        return self.manager.is_loaded(model)

    def load(self, model: str, on_progress: LoadCallback | None = None) -> None:
        self.manager.get(self.registry.get(model), on_progress)

    def run(
        self, request: ResolvedRequest, slots: list[ImageSlot], on_step: StepCallback
    ) -> list[GeneratedImage | None]:
        if not slots:
            return []
        model = self.manager.get(self.registry.get(request.model))
        self._use_loras(model, request.loras)
        context = OpContext(
            manager=self.manager,
            model=model,
            request=request,
            slots=slots,
            on_step=on_step,
            max_input_pixels=self.limits.max_input_pixels,
        )
        operation = OPERATIONS[request.operation]
        try:
            images = operation(context)
        except EngineError:
            raise
        except torch.OutOfMemoryError:
            self._after_oom()
            raise OutOfMemory() from None
        except RuntimeError as error:
            if any(marker in str(error).lower() for marker in _OOM_MARKERS):
                self._after_oom()
                raise OutOfMemory() from None
            raise
        return [
            None
            if image is None
            else GeneratedImage(
                image=image,
                seed=slot.seed,
                parameters=parameters_text(request, slot, image.width, image.height),
            )
            for slot, image in zip(slots, images, strict=True)
        ]

    # --- helpers --------------------------------------------------------------------------

    def _use_loras(self, model: LoadedModel, loras: tuple[tuple[str, float], ...]) -> None:
        """Set the adapters of this call: loaded once per model and kept, switched on with
        their weights, or all switched off for a call without any."""
        if loras == model.active_loras:
            return
        pipe = model.pipe
        for name, _ in loras:
            if name not in model.loras:
                lora = self.registry.lora(name)
                assert lora is not None, "resolve checked the name"
                load_lora(pipe, lora, local_files_only=self.manager.options.local_files_only)
                model.loras.add(name)
        if loras:
            pipe.enable_lora()
            pipe.set_adapters([n for n, _ in loras], adapter_weights=[w for _, w in loras])
        elif model.loras:
            pipe.disable_lora()
        model.active_loras = loras
        # A LoRA may change the text encoders: embeddings made before do not hold.
        forget_embeddings(pipe)
        graphs = cuda_graphs.graphs_of(pipe.unet)
        if graphs is not None:
            # PEFT reads its scales in Python at each call, which a graph would freeze, and
            # loading an adapter rewraps layers: recapture once no LoRA is on.
            graphs.reset()
            graphs.paused = bool(loras)

    def _after_oom(self) -> None:
        if self.manager.device.type == "cuda":
            torch.cuda.empty_cache()

    def _strength(self, operation: Operation, request: GenerationRequest) -> float | None:
        if operation not in IMAGE_OPERATIONS:
            return None
        if request.strength is not None:
            strength = float(request.strength)
            if not 0.0 < strength <= 1.0 or math.isnan(strength):
                raise ValidationError(N_("Strength must be greater than 0 and at most 1."))
            return strength
        if operation is Operation.VARIATION and request.variation is not None:
            if request.variation not in VARIATION_STRENGTHS:
                raise ValidationError(N_("A variation is either 'subtle' or 'strong'."))
            return VARIATION_STRENGTHS[request.variation]
        return DEFAULT_STRENGTHS[operation]

    def _txt2img_size(self, spec: ModelSpec, request: GenerationRequest) -> tuple[int, int]:
        presets = spec.presets
        if request.width is None and request.height is None and request.aspect:
            if request.aspect not in ASPECT_RATIOS:
                raise ValidationError(
                    N_("Unknown aspect ratio {aspect}. Choose one of: {choices}."),
                    aspect=repr(request.aspect),
                    choices=", ".join(ASPECT_RATIOS),
                )
            width, height = spec.size_for_aspect(request.aspect)
        else:
            width = presets.width if request.width is None else request.width
            height = presets.height if request.height is None else request.height
        check_size(width, height, presets)
        return width, height

    def _image_inputs(
        self, spec: ModelSpec, operation: Operation, request: GenerationRequest
    ) -> tuple[int, int, int, bytes, bytes | None]:
        """(width, height, outpaint pixels, input image, mask) of an image operation.

        The upload is decoded here, once, while at most ``max_concurrent_decodes`` others
        are: a small PNG can decode to hundreds of megabytes. What the request carries on
        is the image (and mask) already brought to the size the pipeline takes, as a PNG,
        so the worker decodes a small image instead of the upload again, and a queued job
        holds at most one output-sized image however large the upload was.
        """
        if request.init_image is None:
            raise ValidationError(
                N_("{operation} needs an input image."), operation=operation.value
            )
        if operation is Operation.INPAINT and request.mask_image is None:
            raise ValidationError(N_("Inpainting needs a mask (white where to repaint)."))
        max_pixels = self.limits.max_input_pixels
        with self._decode_slots:
            image = open_user_image(request.init_image, max_pixels=max_pixels)
            mask = None
            if operation is Operation.INPAINT:
                assert request.mask_image is not None
                mask = open_user_mask(request.mask_image, size=image.size, max_pixels=max_pixels)
            width, height, pixels = self._image_size(spec, operation, request, image.size)
            target = pipeline_input_size(spec, operation, (width, height), request, pixels)
            init_image = encode_input(image, target)
            del image
            mask_image = None if mask is None else encode_input(mask, (width, height))
        return width, height, pixels, init_image, mask_image

    def _image_size(
        self,
        spec: ModelSpec,
        operation: Operation,
        request: GenerationRequest,
        input_size: tuple[int, int],
    ) -> tuple[int, int, int]:
        """(width, height, outpaint pixels) of an image operation's output, validated."""
        presets = spec.presets
        if operation is Operation.UPSCALE:
            limit = upscale_limit(presets)
            # The source as it is (down to the limit's half), not shrunk to what the model
            # draws at once: beyond that the upscale is drawn in tiles.
            fit = min(1.0, limit / UPSCALE_FACTOR / max(input_size))
            # A source too small for the model's smallest drawing is enlarged to it first.
            fit = max(fit, presets.min_size / UPSCALE_FACTOR / min(input_size))
            width = max(8, int(input_size[0] * fit) // 8 * 8) * UPSCALE_FACTOR
            height = max(8, int(input_size[1] * fit) // 8 * 8) * UPSCALE_FACTOR
            if max(width, height) <= max(input_size):
                raise ValidationError(
                    N_(
                        "This image is already as large as {model} can upscale: "
                        "{limit} px on its longer side at most."
                    ),
                    model=spec.name,
                    limit=limit,
                )
            if max(width, height) > limit:
                raise ValidationError(
                    N_(
                        "This image's shape is too long and thin to upscale with {model}: "
                        "it would be {width}×{height}, over its {limit} px limit."
                    ),
                    model=spec.name,
                    width=width,
                    height=height,
                    limit=limit,
                )
            return width, height, 0
        if operation is Operation.OUTPAINT:
            pixels = request.outpaint_pixels
            if not 8 <= pixels <= MAX_OUTPAINT_PIXELS:
                raise ValidationError(N_("Extend by 8 to {most} pixels."), most=MAX_OUTPAINT_PIXELS)
            # "Zoom out" means the same to every model; a fixed pixel count does not, so
            # it is capped where the canvas would leave the image too little room.
            pixels = min(round(pixels / 8) * 8, max(8, presets.max_size // 32 * 8))
            for side in request.outpaint_sides:
                if side not in ("left", "right", "top", "bottom"):
                    raise ValidationError(
                        N_("Unknown side {side}: use left, right, top, bottom."), side=repr(side)
                    )
            _, canvas = outpaint_geometry(
                input_size,
                request.outpaint_sides,
                pixels,
                min_size=presets.min_size,
                max_size=presets.max_size,
            )
            return canvas[0], canvas[1], pixels
        if request.width is not None or request.height is not None:
            width = request.width if request.width is not None else presets.width
            height = request.height if request.height is not None else presets.height
            check_size(width, height, presets)
            return width, height, 0
        width, height = fit_size(input_size, presets)
        return width, height, 0

    def _loras(
        self, spec: ModelSpec, request: GenerationRequest
    ) -> tuple[tuple[tuple[str, float], ...], str, tuple[str, ...]]:
        """The request's LoRAs, checked against the registry and the model, and its prompts
        without their ``<lora:…>`` tags, with the LoRAs' trigger words added."""
        prompt, tagged = extract_loras(request.prompt)
        per_image = []
        for text in request.prompts:
            stripped, tags = extract_loras(text)
            if {name for name, _ in tags} - {name for name, _ in tagged}:
                raise ValidationError(
                    N_("All images of a job use the same LoRAs: put <lora:…> outside the {…|…}.")
                )
            per_image.append(stripped)
        wanted: dict[str, float | None] = {}
        for name, weight in (*request.loras, *tagged):
            wanted[name] = weight  # a later mention of the same LoRA wins
        if len(wanted) > MAX_LORAS:
            raise ValidationError(N_("Use at most {most} LoRAs at once."), most=MAX_LORAS)
        chosen = []
        for name, weight in sorted(wanted.items()):
            lora = self.registry.lora(name)
            if lora is None:
                offered = ", ".join(lo.name for lo in self.registry.loras(spec.family))
                if not offered:
                    raise ValidationError(
                        N_("There is no LoRA called {name}. LoRAs for {model}: none."),
                        name=repr(name[:40]),
                        model=spec.name,
                    )
                raise ValidationError(
                    N_("There is no LoRA called {name}. LoRAs for {model}: {offered}."),
                    name=repr(name[:40]),
                    model=spec.name,
                    offered=offered,
                )
            if lora.family is not spec.family:
                raise ValidationError(
                    N_(
                        "The LoRA {lora} is made for {family} models; "
                        "{model} is {model_family}. Pick another model or LoRA."
                    ),
                    lora=lora.name,
                    family=FAMILY_NAMES[lora.family],
                    model=spec.name,
                    model_family=FAMILY_NAMES[spec.family],
                )
            value = lora.weight if weight is None else weight
            if not -MAX_LORA_WEIGHT <= value <= MAX_LORA_WEIGHT:
                raise ValidationError(
                    N_("A LoRA's weight is between -{most} and {most} (got {value} for {lora})."),
                    most=f"{MAX_LORA_WEIGHT:g}",
                    value=f"{value:g}",
                    lora=lora.name,
                )
            missing = [t for t in lora.triggers if t.lower() not in prompt.lower()]
            if missing:
                prompt = ", ".join([prompt, *missing]) if prompt.strip() else ", ".join(missing)
                per_image = [", ".join([text, *missing]) for text in per_image]
            chosen.append((lora.name, value))
        return tuple(chosen), prompt, tuple(per_image)

    def _per_image_prompts(
        self, spec: ModelSpec, request: GenerationRequest
    ) -> list[tuple[str, bool]]:
        if not request.prompts:
            return []
        if len(request.prompts) != request.count:
            raise ValidationError(
                N_("Give one prompt per image: {images} images, {prompts} prompts."),
                images=request.count,
                prompts=len(request.prompts),
            )
        fitted = [self._fit_prompt(spec, clean_prompt(text)) for text in request.prompts]
        if any(not text for text, _ in fitted):
            raise ValidationError(N_("One of the prompts is empty. Describe every image."))
        return fitted

    def _chunks(self, spec: ModelSpec, text: str) -> int:
        tokenizer = self.manager.tokenizer_for(spec)
        if tokenizer is None:
            return chunk_count(
                text, lambda piece: len(_CLIP_PIECES.findall(piece)), DEFAULT_TOKEN_LIMIT
            )

        def count(piece: str) -> int:
            with self._tokenizer_lock:
                return len(
                    tokenizer(piece, add_special_tokens=False, truncation=False)["input_ids"]
                )

        window = tokenizer.model_max_length - 2
        return chunk_count(text, count, window if 0 < window < 10_000 else DEFAULT_TOKEN_LIMIT)

    def _fit_prompt(self, spec: ModelSpec, text: str) -> tuple[str, bool]:
        """The prompt cut to what the text encoder reads, and whether it was cut.

        Diffusers would silently drop the excess; cutting here means the image's metadata
        states the prompt that was really used, and the caller can tell the user.
        """
        if not text:
            return text, False
        tokenizer = self.manager.tokenizer_for(spec)
        if tokenizer is None:
            return truncate_by_estimate(text, DEFAULT_TOKEN_LIMIT * MAX_CHUNKS)
        window = tokenizer.model_max_length - 2
        # Encoded in chunks of the window (engine.ops.prompt_embeds). The count includes
        # the emphasis syntax, so a weighted prompt is cut a little early, never late.
        limit = (window if 0 < window < 10_000 else DEFAULT_TOKEN_LIMIT) * MAX_CHUNKS
        with self._tokenizer_lock:
            encoding = tokenizer(
                text, add_special_tokens=False, truncation=False, return_offsets_mapping=True
            )
        if len(encoding["input_ids"]) <= limit:
            return text, False
        end = encoding["offset_mapping"][limit - 1][1]
        return text[:end].rstrip(), True


# --- pure helpers, shared with the CLI and tests ------------------------------------------


def clean_prompt(text: str) -> str:
    """Prompt text safe for every consumer: control characters (NUL included) become spaces,
    unpaired surrogates are dropped, runs of spaces collapse, ends are trimmed."""
    cleaned = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cs":
            continue
        cleaned.append(" " if category == "Cc" and char != "\n" else char)
    lines = (" ".join(line.split()) for line in "".join(cleaned).split("\n"))
    return "\n".join(line for line in lines if line).strip()


def truncate_by_estimate(text: str, limit: int) -> tuple[str, bool]:
    """Cut ``text`` after ``limit`` CLIP word pieces (a lower bound on its token count)."""
    pieces = list(_CLIP_PIECES.finditer(text))
    if len(pieces) <= limit:
        return text, False
    return text[: pieces[limit - 1].end()].rstrip(), True


# Whole sentences per side, so that each translates as a sentence: (not a multiple of 8,
# out of the model's range).
_SIZE_MESSAGES = {
    "width": (
        N_("Width must be a multiple of 8 (got {value})."),
        N_("Width must be between {least} and {most} for this model (got {value})."),
    ),
    "height": (
        N_("Height must be a multiple of 8 (got {value})."),
        N_("Height must be between {least} and {most} for this model (got {value})."),
    ),
}


def check_size(width: int, height: int, presets: Presets) -> None:
    for name, value in (("width", width), ("height", height)):
        not_multiple, out_of_range = _SIZE_MESSAGES[name]
        if value % 8:
            raise ValidationError(not_multiple, value=value)
        if not presets.min_size <= value <= presets.max_size:
            raise ValidationError(
                out_of_range, least=presets.min_size, most=presets.max_size, value=value
            )


def fit_size(size: tuple[int, int], presets: Presets) -> tuple[int, int]:
    """An input image's size brought into the model's range, as multiples of 8, keeping
    the aspect ratio as well as the range allows."""
    width, height = size
    scale = min(1.0, presets.max_size / max(width, height))
    if min(width, height) * scale < presets.min_size:
        scale = presets.min_size / min(width, height)

    def snap(value: float) -> int:
        rounded = max(8, math.floor(value / 8 + 0.5) * 8)
        return min(max(rounded, presets.min_size), presets.max_size)

    return snap(width * scale), snap(height * scale)


def pipeline_input_size(
    spec: ModelSpec,
    operation: Operation,
    output: tuple[int, int],
    request: GenerationRequest,
    outpaint_pixels: int,
) -> tuple[int, int]:
    """The size at which an operation hands its input image to the pipeline (see
    ``engine.ops``): the output size, the image inside an outpainting's padding, or half the
    output for a dedicated 2x upscaler."""
    width, height = output
    if operation is Operation.OUTPAINT:
        left, top, right, bottom = outpaint_padding(request.outpaint_sides, outpaint_pixels)
        return width - left - right, height - top - bottom
    if operation is Operation.UPSCALE and spec.upscaler and max(output) <= spec.presets.max_size:
        return width // UPSCALE_FACTOR, height // UPSCALE_FACTOR
    return width, height


def encode_input(image: Image.Image, size: tuple[int, int]) -> bytes:
    """A decoded input resized to ``size`` exactly as the operations would, as a PNG that
    decodes to the same pixels."""
    buffer = io.BytesIO()
    fit_exactly(image, size).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def denoising_steps(steps: int, strength: float) -> int:
    """How many denoising steps an image operation really runs: diffusers re-noises the
    input to ``strength`` and runs only the last ``int(steps × strength)`` steps of a
    ``steps``-step schedule."""
    return min(int(steps * strength), steps)


def steps_for_strength(steps: int, strength: float, max_steps: int, model: str) -> int:
    """The steps an image operation (img2img, variation, upscale, inpaint, outpaint) runs at
    ``strength``.

    The rule: ``steps`` counts the steps of the full schedule, and the operation runs
    ``int(steps × strength)`` of them. When that would be zero (a distilled model's 2 steps at
    an upscale's strength 0.3), ``steps`` is raised to the fewest that give one denoising step
    (about ``ceil(1 / strength)``: 4 at strength 0.3, 3 at 0.35), whether the steps came from
    the model's presets, from the user or from the job an image was derived from. Only when
    that is over the model's ``max_steps`` is the request refused.
    """
    if denoising_steps(steps, strength) >= 1:
        return steps
    needed = max(1, math.ceil(1 / strength))
    while denoising_steps(needed, strength) < 1:  # float rounding: 3 × 0.3333 = 0.9999
        needed += 1
    if needed > max_steps:
        lowest = math.ceil(1000 / max_steps) / 1000
        raise ValidationError(
            N_(
                "Strength {strength} is too low for {model}: at its {most} steps at most, "
                "no denoising step would run. Use a strength of at least {least}."
            ),
            strength=f"{strength:g}",
            model=model,
            most=max_steps,
            least=f"{lowest:g}",
        )
    return needed


def parameters_text(request: ResolvedRequest, slot: ImageSlot, width: int, height: int) -> str:
    """AUTOMATIC1111 "parameters" text for one generated image."""
    sampler = request.scheduler
    extra: dict[str, str] = {}
    if sampler.endswith("_karras"):
        # Since web UI 1.9 the noise schedule is its own field.
        sampler = sampler.removesuffix("_karras")
        extra["Schedule type"] = "Karras"
    if request.strength is not None:
        extra["Denoising strength"] = f"{request.strength:g}"
    if request.operation is not Operation.TXT2IMG:
        extra["Operation"] = request.operation.value
    # The web UI writes a prompt's LoRAs as tags in it: so the image reads back the same.
    tags = "".join(f" <lora:{name}:{weight:g}>" for name, weight in request.loras)
    return format_parameters(
        prompt=slot.prompt + tags,
        negative_prompt=slot.negative_prompt,
        steps=request.steps,
        sampler=sampler,
        cfg_scale=request.guidance,
        seed=slot.seed,
        width=width,
        height=height,
        model=request.model,
        extra=extra,
    )


__all__ = [
    "BackendLimits",
    "DiffusersBackend",
    "clean_prompt",
    "denoising_steps",
    "fit_size",
    "parameters_text",
    "steps_for_strength",
]
