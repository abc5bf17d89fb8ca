"""The job service every front door calls: accepting jobs (prompt rules, quotas, durable
record, engine) and storing their results. It knows user ids (Discord's, or an API account's
below zero), not Discord or HTTP objects."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from core import textguard
from core import wildcards as prompt_choices
from core.analysis import Analyzer
from core.config import DEFAULT_NSFW_THRESHOLD
from core.custom_models import CustomModels
from core.errors import N_, InvalidField, Note, QuotaRefused, UserError, note
from core.feed import JobFeed
from core.jobcodec import StoredRequest
from core.refine import Refiner
from core.shared_results import SharedResults
from core.storage import DRIVER_ERRORS
from core.storage.database import Database
from core.storage.errors import DatabaseBusy, InvalidTransition, QuotaExceeded
from core.storage.files import ImageStore, sniff_extension
from core.storage.records import (
    CompletedJob,
    Flag,
    FlagAction,
    GeneratedImage,
    Image,
    Job,
    NewJob,
    SafetyAction,
)
from core.styles import BUILTIN, Style, normalise_name
from core.wildcards import ExpandMode
from engine.engine import Engine, JobHandle
from engine.errors import EngineError
from engine.registry import ModelRegistry
from engine.types import (
    MAX_IMAGES_PER_REQUEST,
    GenerationRequest,
    JobResult,
    Operation,
    ResolvedRequest,
)

log = logging.getLogger(__name__)

INTERACTION_TOKEN_LIFETIME = dt.timedelta(minutes=15)
# What storage raises when it cannot take a write now (a full disk, a locked database): worth
# retrying once it is back, unlike a bug.
STORAGE_ERRORS: tuple[type[Exception], ...] = (OSError, *DRIVER_ERRORS, DatabaseBusy)
STORAGE_RETRY_MAX_S = 60.0


async def store_when_possible(write: Callable[[], Awaitable[object]], job_id: str) -> None:
    """Run ``write`` until storage takes it: retried with backoff while storage refuses it
    (a full disk, a locked database), so an outcome is recorded once storage is back. A job
    that ended another way meanwhile (``InvalidTransition``) keeps that ending."""
    delay = 0.5
    refused = False
    while True:
        try:
            await write()
        except InvalidTransition:
            return
        except STORAGE_ERRORS as error:
            log.warning("job %s: storage refuses the record (%s); retrying", job_id, error)
            refused = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORAGE_RETRY_MAX_S)
            continue
        if refused:
            log.info("job %s: recorded after storage came back", job_id)
        return


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asks, and where: everything the service needs from an interaction."""

    user_id: int
    guild_id: int | None
    channel_id: int | None
    role_ids: tuple[int, ...] = ()
    interaction_token: str | None = None
    token_expires_at: dt.datetime | None = None
    source: str = "discord"  # the front door: "discord" or "api"
    locale: str | None = None  # the language to answer in (a Discord locale), None: English
    # Where Discord marks the channel age-restricted, the image check lets images through.
    age_restricted: bool = False


EDIT_KIND = "edit"  # a job made by a plain edit: no model ran
REFINE_STRENGTH = 0.6  # a refinement keeps the picture's layout and changes what was asked


@dataclass(frozen=True)
class Refinement:
    """A job that changes an earlier result: accept ``request`` with ``parent`` and
    ``init_image_key``. ``by``: how the prompt was refined ("rule" or "llm")."""

    request: GenerationRequest
    parent: tuple[str, int]
    init_image_key: str
    by: str


def explicit_settings(request: GenerationRequest) -> tuple[str, ...]:
    """The settings of ``request`` its user chose rather than left to the model."""
    chosen = [
        name
        for name in ("model", "steps", "guidance", "scheduler", "seed", "width", "height")
        if getattr(request, name) is not None
    ]
    return tuple(chosen)


@dataclass(frozen=True, slots=True)
class Accepted:
    job: Job
    feed: JobFeed
    request: ResolvedRequest
    notes: tuple[Note, ...] = ()  # what the requester should know (a capped expansion)


class JobService:
    def __init__(
        self,
        db: Database,
        images: ImageStore,
        engine: Engine,
        registry: ModelRegistry,
        *,
        preview_every: int = 5,
        refiner: Refiner | None = None,
        analyzer: Analyzer | None = None,
        nsfw_threshold: float = DEFAULT_NSFW_THRESHOLD,
        custom_models: CustomModels | None = None,
    ) -> None:
        self.db = db
        self.images = images
        self.engine = engine
        self.registry = registry
        self.preview_every = preview_every
        self.refiner = refiner if refiner is not None else Refiner()
        self.analyzer = analyzer if analyzer is not None else Analyzer(None, images, max_pixels=0)
        self.nsfw_threshold = nsfw_threshold
        # Models added at run time (/model add); None where the front door offers no adding.
        self.custom_models = custom_models
        # Results other front processes on this database already generated.
        self.shared_results = SharedResults(db, images, registry)
        self._feeds: dict[str, JobFeed] = {}

    # --- accepting -----------------------------------------------------------------------

    async def check_banned_words(self, guild_id: int | None, *texts: str | None) -> None:
        banned = await self.db.guilds.banned_words(guild_id)
        if not banned:
            return
        # Every reading of each text: invisible characters gone, look-alikes folded to Latin.
        folded = [variant for t in texts if t for variant in textguard.fold_variants(t)]
        for word in banned:
            needle = _fold(word)
            if not needle:  # a "word" of only invisible characters would match everything
                continue
            pattern = re.compile(rf"(?<!\w){re.escape(needle)}(?!\w)")
            if any(pattern.search(text) for text in folded):
                raise UserError(
                    N_(
                        "Your prompt contains `{word}`, which this server does not allow. "
                        "Please rephrase it."
                    ),
                    word=word,
                )

    async def accept(
        self,
        requester: Requester,
        request: GenerationRequest,
        *,
        private: bool = False,
        parent: tuple[str, int] | None = None,
        init_image_key: str | None = None,
        style: str | None = None,
        expand: ExpandMode | None = None,
    ) -> Accepted:
        """Validate, spend quota and record the job, then queue it. Raises UserError.
        ``style``: a built-in or the server's style, applied to the prompt (the job keeps
        the user's own words as its prompt, for history and search). A prompt with {a|b}
        choices or __wildcards__ draws one image per combination: every one (``expand``
        "all", the default; as many as fit in a job and the quota) or ``request.count``
        random ones ("random")."""
        typed_prompt = request.prompt
        request = await self.with_server_model(requester.guild_id, request)
        chosen = None
        if style:
            chosen = await self.style(requester.guild_id, style)
            prompt, negative = chosen.apply(request.prompt, request.negative_prompt)
            request = dataclasses.replace(request, prompt=prompt, negative_prompt=negative)
        notes: tuple[Note, ...] = ()
        if not request.prompts and prompt_choices.has_choices(request.prompt):
            request, notes = await self._expanded(requester, request, expand or "all")
        await self.check_banned_words(
            requester.guild_id,
            "\n".join((request.prompt, *request.prompts)),
            request.negative_prompt,
        )
        if request.preview_every == 0 and self.preview_every:
            request = dataclasses.replace(request, preview_every=self.preview_every)
        try:
            resolved = await self.engine.resolve(request)
        except EngineError as error:
            raise UserError(error.template, **error.values) from None
        if request.init_image is not None and init_image_key is None:
            # A user's upload: kept (once validated) so a resumed job can start from it again.
            init_image_key = await self.images.put(
                request.init_image, ext=sniff_extension(request.init_image)
            )
        mask_image_key = None
        if request.mask_image is not None:
            mask_image_key = await self.images.put(
                request.mask_image, ext=sniff_extension(request.mask_image)
            )
        policy = await self.db.quotas.effective_policy(
            requester.guild_id, requester.user_id, requester.role_ids
        )
        # Store the drawn seed and the model and settings it resolved to, so a resumed job
        # makes the very same images, and rerolls and upscales keep to the same model even
        # after the server's default changes.
        stored = StoredRequest(
            dataclasses.replace(
                request,
                seed=resolved.seed,
                model=resolved.model,
                steps=resolved.steps,
                guidance=resolved.guidance,
                scheduler=resolved.scheduler,
                init_image=None,
                mask_image=None,
            ),
            init_image_key=init_image_key,
            mask_image_key=mask_image_key,
            priority=policy.priority,
            role_ids=requester.role_ids,
            explicit=explicit_settings(request),
            style=None if chosen is None else chosen.name,
            locale=requester.locale,
            age_restricted=requester.age_restricted,
        )
        try:
            job = await self.db.jobs.create(
                NewJob(
                    user_id=requester.user_id,
                    kind=resolved.operation.value,
                    request=stored.dumps(),
                    prompt=typed_prompt,
                    image_count=resolved.count,
                    guild_id=requester.guild_id,
                    channel_id=requester.channel_id,
                    private=private,
                    parent_job_id=parent[0] if parent else None,
                    parent_image_index=parent[1] if parent else None,
                    interaction_token=requester.interaction_token,
                    token_expires_at=requester.token_expires_at,
                    source=requester.source,
                ),
                policy=policy,
                remember_prompt=request.operation is Operation.TXT2IMG,
            )
        except QuotaExceeded as error:
            wait = (error.resets_at - self.db.now()).total_seconds() if error.resets_at else None
            raise QuotaRefused(error.template, wait, **error.values) from None
        if (answer := await self.shared_results.find(resolved)) is not None:
            self.engine.remember(answer)
        try:
            handle = await self.engine.submit(
                resolved, user_id=str(requester.user_id), job_id=job.id, tier=policy.priority
            )
        except EngineError as error:
            await self.db.jobs.mark_failed(job.id, str(error))
            raise UserError(error.template, **error.values) from None
        return Accepted(job, self._feed(handle), resolved, notes)

    async def record_edit(
        self,
        requester: Requester,
        request: GenerationRequest,
        png: bytes,
        seed: int,
        *,
        private: bool = False,
        parent: tuple[str, int] | None = None,
    ) -> CompletedJob:
        """A plain edit (crop, rotate, filters: no model runs), recorded as a finished job of
        its own, with ``parent`` the image it was made from; it spends one image of quota
        like any result. ``request`` describes the picture (its prompt and settings);
        ``png`` carries its parameters."""
        policy = await self.db.quotas.effective_policy(
            requester.guild_id, requester.user_id, requester.role_ids
        )
        stored = StoredRequest(
            dataclasses.replace(request, count=1, init_image=None, mask_image=None),
            priority=policy.priority,
            role_ids=requester.role_ids,
        )
        try:
            job = await self.db.jobs.create(
                NewJob(
                    user_id=requester.user_id,
                    kind=EDIT_KIND,
                    request=stored.dumps(),
                    prompt=request.prompt,
                    image_count=1,
                    guild_id=requester.guild_id,
                    channel_id=requester.channel_id,
                    private=private,
                    parent_job_id=parent[0] if parent else None,
                    parent_image_index=parent[1] if parent else None,
                    source=requester.source,
                ),
                policy=policy,
            )
        except QuotaExceeded as error:
            wait = (error.resets_at - self.db.now()).total_seconds() if error.resets_at else None
            raise QuotaRefused(error.template, wait, **error.values) from None
        return await self.db.complete_job(job.id, [GeneratedImage(0, seed, png)])

    async def _expanded(
        self, requester: Requester, request: GenerationRequest, mode: ExpandMode
    ) -> tuple[GenerationRequest, tuple[Note, ...]]:
        """``request`` with one prompt per image from its choices, and why it draws fewer
        than the prompt makes, if it does."""
        images, reason = (
            (
                MAX_IMAGES_PER_REQUEST,
                note(N_("{most} images per job at most"), most=MAX_IMAGES_PER_REQUEST),
            )
            if mode == "all"
            else (request.count, note(N_("you asked for {count}"), count=request.count))
        )
        usage = await self.db.quotas.usage(
            requester.guild_id, requester.user_id, role_ids=requester.role_ids
        )
        if usage.remaining is not None and 0 < usage.remaining < images:
            images, reason = (
                usage.remaining,
                note(N_("you have {count} images left today"), count=usage.remaining),
            )
        expansion = prompt_choices.expand(
            request.prompt,
            await self.db.guilds.wildcards(requester.guild_id),
            mode=mode,
            images=images,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**32),
        )
        if len(expansion.prompts) == 1 and expansion.prompts[0] == request.prompt.strip():
            return request, ()  # braces or underscores that were not choices
        cap = prompt_choices.describe_cap(expansion, reason)
        expanded = dataclasses.replace(
            request, prompts=expansion.prompts, count=len(expansion.prompts)
        )
        return expanded, () if cap is None else (cap,)

    async def with_server_model(
        self, guild_id: int | None, request: GenerationRequest
    ) -> GenerationRequest:
        """``request`` with the server's default model when it names none; refused when the
        model it would use is one the server turned off."""
        settings = await self.db.guilds.settings(guild_id)
        if request.model is None and settings.default_model in self.registry.names():
            request = dataclasses.replace(request, model=settings.default_model)
        model = request.model or self.registry.default_name
        if model in settings.disabled_models:
            raise InvalidField(
                "model",
                N_("The model `{name}` is turned off in this server. Pick another one."),
                name=model,
            )
        return request

    async def server_models(self, guild_id: int | None) -> tuple[str, list[str]]:
        """The default model here and the registry's models offered here, in registry order."""
        settings = await self.db.guilds.settings(guild_id)
        names = self.registry.names()
        offered = [name for name in names if name not in settings.disabled_models]
        default = settings.default_model if settings.default_model in offered else None
        return default or self.registry.default_name, offered

    async def wildcards(self, guild_id: int | None) -> dict[str, tuple[str, ...]]:
        return await self.db.guilds.wildcards(guild_id)

    async def styles(self, guild_id: int | None) -> list[Style]:
        """The styles offered here: the built-in ones, then the server's own."""
        own = await self.db.guilds.styles(guild_id)
        return [*BUILTIN.values(), *(Style(n, t, neg, builtin=False) for n, t, neg in own)]

    async def style(self, guild_id: int | None, name: str) -> Style:
        wanted = normalise_name(name)
        for style in await self.styles(guild_id):
            if style.name == wanted:
                return style
        raise InvalidField(
            "style",
            N_("There is no style `{name}` here: pick one from the list."),
            name=wanted[:40],
        )

    def feed(self, job_id: str) -> JobFeed | None:
        """The live events of a job this process runs; None once it has ended (its outcome is
        then in storage) or when it is not queued here."""
        return self._feeds.get(job_id)

    def _feed(self, handle: JobHandle) -> JobFeed:
        feed = JobFeed.start(handle, on_end=lambda: self._feeds.pop(handle.job_id, None))
        self._feeds[handle.job_id] = feed
        return feed

    async def resubmit(self, job: Job) -> JobFeed:
        """Queue an unfinished job again after a restart, with its stored seed."""
        stored = StoredRequest.loads(job.request)
        request = stored.request
        if stored.init_image_key:
            request = dataclasses.replace(
                request, init_image=await self.images.get(stored.init_image_key)
            )
        if stored.mask_image_key:
            request = dataclasses.replace(
                request, mask_image=await self.images.get(stored.mask_image_key)
            )
        handle = await self.engine.submit(
            request,
            user_id=str(job.user_id),
            job_id=job.id,
            tier=stored.priority,
            resumed=True,
        )
        return self._feed(handle)

    # --- results -------------------------------------------------------------------------

    async def encode_result(self, result: JobResult) -> list[GeneratedImage]:
        """The result's PNGs, encoded once (off the loop, on every core: PNG encoding costs
        tens of ms per megapixel) and kept for as many attempts to store them as it takes."""
        pngs = await asyncio.gather(
            *(asyncio.to_thread(generated.png_bytes) for generated in result.images)
        )
        return [
            GeneratedImage(index=index, seed=generated.seed, data=png)
            for index, (generated, png) in enumerate(zip(result.images, pngs, strict=True))
        ]

    async def complete(
        self,
        job: Job,
        outputs: Sequence[GeneratedImage],
        result: JobResult,
        flags: Sequence[Flag] | None = None,
    ) -> CompletedJob:
        """Store the images and mark the job done, in one transaction: once anyone is told
        the result exists, a restart finds it stored and shows it without generating again.
        Raises ``InvalidTransition`` if the job ended another way meanwhile, and storage
        errors (``STORAGE_ERRORS``) when the disk or the database cannot take it now.

        Images the image check flagged are blurred or held back as the server's policy says
        (``CompletedJob.flags``, or ``flags`` when the caller has them from
        ``safety_flags``); a held-back one is not charged."""
        timings = result.timings
        if flags is None:
            flags = await self.safety_flags(job, result)
        completed = await self.db.complete_job(
            job.id,
            outputs,
            timings={
                "queued_s": round(timings.queued_s, 3),
                "load_s": round(timings.load_s, 3),
                "generate_s": round(timings.generate_s, 3),
                "total_s": round(timings.total_s, 3),
            },
            generation_seconds=timings.generate_s,
            flags=flags,
        )
        await self.shared_results.remember(job.id, result, completed.images)
        return completed

    async def safety_flags(self, job: Job, result: JobResult) -> list[Flag]:
        """The result's images the image check flagged, with what this channel does with
        them; none in a channel Discord marks age-restricted."""
        flagged = [
            (index, image.nsfw_score)
            for index, image in enumerate(result.images)
            if image.nsfw_score is not None and image.nsfw_score >= self.nsfw_threshold
        ]
        if not flagged or StoredRequest.loads(job.request).age_restricted:
            return []
        policy = await self.db.safety.policy(job.guild_id)
        action = (
            FlagAction.BLURRED
            if policy.action_in(job.channel_id) is SafetyAction.BLUR
            else FlagAction.BLOCKED
        )
        return [Flag(index, score, action) for index, score in flagged]

    async def refinement(self, parent: Job, index: int, instruction: str) -> Refinement:
        """The job that changes image ``index`` of ``parent`` as ``instruction`` says ("make
        it night"): an img2img of that image, its prompt refined (by rule, or by the LLM
        endpoint when one is set). Accept it with ``parent`` and ``init_image_key``."""
        image = next((i for i in await self.job_images(parent.id) if i.index == index), None)
        if image is None:
            raise InvalidField("image", N_("That image no longer exists."))
        before = StoredRequest.loads(parent.request).request
        refined = await self.refiner.refine(
            before.prompt_of(index), before.negative_prompt, instruction
        )
        request = GenerationRequest(
            prompt=refined.prompt,
            negative_prompt=refined.negative_prompt,
            model=before.model,
            operation=Operation.IMG2IMG,
            count=1,
            steps=before.steps,
            guidance=before.guidance,
            scheduler=before.scheduler,
            width=image.width,
            height=image.height,
            strength=REFINE_STRENGTH,
            init_image=await self.image_bytes(image),
        )
        return Refinement(request, (parent.id, image.index), image.file_key, refined.by)

    async def image_bytes(self, image: Image) -> bytes:
        return await self.images.get(image.file_key)

    async def job_images(self, job_id: str) -> Sequence[Image]:
        return await self.db.images.for_job(job_id)


def _fold(text: str) -> str:
    # Invisible characters, look-alikes, accents, width and case do not slip past the list.
    return textguard.fold(text)
