"""Following a job to its end: progress edits, then the result, on a message that may outlive
its interaction token, be deleted, or sit behind a rate limit."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import discord

from bot import render
from bot.host import BotHost
from bot.i18n import locale_named, translate, translate_marked
from bot.throttle import ThrottledEditor
from bot.views import grid_view, progress_view, single_view
from core.errors import N_, incident_id
from core.jobcodec import StoredRequest
from core.service import STORAGE_ERRORS
from core.storage.errors import InvalidTransition
from core.storage.records import (
    Flag,
    FlagAction,
    GeneratedImage,
    Image,
    Job,
    JobStatus,
    SafetyEntry,
)
from engine.errors import EngineStopped
from engine.images import encode_preview, make_grid, obscured, withheld_tile
from engine.types import (
    Cancelled,
    Done,
    Failed,
    JobResult,
    ModelLoading,
    Operation,
    Progress,
    Queued,
    Started,
)

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from core.feed import JobFeed

log = logging.getLogger(__name__)

UPLOAD_LIMIT = 10 * 2**20 - 64 * 1024  # Discord's default upload limit, less form overhead
FINAL_EDIT_ATTEMPTS = 4
# An edit Discord never answers would otherwise hold the message for aiohttp's five-minute
# default: a progress edit is dropped sooner (the next one follows), a final one retried.
PROGRESS_EDIT_TIMEOUT_S = 20.0
FINAL_EDIT_TIMEOUT_S = 90.0
READY_TIMEOUT_S = 10.0
# Discord's name for an interaction's first answer in webhook message routes.
ORIGINAL = cast(int, "@original")
SAVE_RETRY_FIRST_S = 0.5
SAVE_RETRY_MAX_S = 30.0
COLOUR_WORKING = discord.Colour.blurple()
COLOUR_DONE = discord.Colour.green()
COLOUR_FAILED = discord.Colour.red()


@dataclass(frozen=True, slots=True)
class Censored:
    """A result's images the image check flagged: shown blurred as a spoiler, or held back."""

    blurred: frozenset[int] = frozenset()
    blocked: frozenset[int] = frozenset()

    @classmethod
    def of(cls, flags: Sequence[Flag | SafetyEntry]) -> Censored:
        live = [f for f in flags if not (isinstance(f, SafetyEntry) and f.released_at)]
        return cls(
            frozenset(f.index for f in live if f.action is FlagAction.BLURRED),
            frozenset(f.index for f in live if f.action is FlagAction.BLOCKED),
        )

    def pictures(self, pictures: list[PILImage.Image]) -> list[PILImage.Image]:
        """What to show of each picture: as it is, obscured, or a withheld tile. Blocks."""
        return [
            withheld_tile(picture.width, picture.height)
            if index in self.blocked
            else obscured(picture)
            if index in self.blurred
            else picture
            for index, picture in enumerate(pictures)
        ]

    def lines(self, count: int, locale: discord.Locale | None) -> list[str]:
        lines = []
        if self.blurred:
            lines.append(
                translate(
                    "🔞 The image check flagged {images}: shown blurred, as a spoiler.",
                    locale,
                    images=self._numbers(self.blurred, count, locale),
                )
            )
        if self.blocked:
            lines.append(
                translate(
                    "🚫 This server's image check held back {images}. Held-back images are not "
                    "counted against your quota; a moderator can release them.",
                    locale,
                    images=self._numbers(self.blocked, count, locale),
                )
            )
        return lines

    @staticmethod
    def _numbers(indices: frozenset[int], count: int, locale: discord.Locale | None) -> str:
        if count == 1:
            return translate("the image", locale)
        numbers = ", ".join(f"#{i + 1}" for i in sorted(indices))
        return translate("image {numbers}", locale, numbers=numbers)


@dataclass(frozen=True, slots=True)
class ProgressState:
    text: str
    preview: bytes | None = None
    cancellable: bool = True  # False once the images exist and only saving them remains


class MessageTarget:
    """A job's message: edited through the interaction token while it is valid, then through
    the channel; a new message (or a DM for private results) when the old one is gone."""

    def __init__(self, bot: BotHost, job: Job) -> None:
        self._bot = bot
        self.job = job
        self.message_id = job.message_id
        self.channel_id = job.channel_id
        self._token_dead = False
        # A message the bot sent itself, not the interaction's. Posting one drops the job's
        # interaction token, so after a restart a job without a token but with a message
        # is one of those.
        self._posted_by_us = job.message_id is not None and job.interaction_token is None
        # Kept on a message the bot posted in the channel, so progress edits do not drop it.
        self._mention = f"<@{job.user_id}>" if self._posted_by_us and not job.private else None
        # Set once the interaction has been answered (or could not be): edits wait for it,
        # so an early progress edit never posts a second message.
        self.ready = asyncio.Event()
        if job.message_id is not None:
            self.ready.set()

    def answered(self, message_id: int | None) -> None:
        self.message_id = message_id
        self.ready.set()

    def _token_usable(self) -> bool:
        return not self._token_dead and self.job.token_usable(discord.utils.utcnow())

    async def edit(self, **payload: Any) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), READY_TIMEOUT_S)
        if self._mention is not None and "content" in payload and not payload["content"]:
            # Progress edits clear the content; the mention that pinged the owner stays.
            payload["content"] = self._mention
        if self._token_usable():
            assert self.job.interaction_token is not None
            webhook = discord.Webhook.partial(
                self._bot.application_id or 0, self.job.interaction_token, client=self._bot
            )
            try:
                if self.message_id is not None:
                    await webhook.edit_message(self.message_id, **payload)
                else:
                    # The answer was sent but its id never recorded (a restart in between):
                    # the token still reaches it, and now its id is kept.
                    message = await webhook.edit_message(ORIGINAL, **payload)
                    await self._remember(message.channel.id, message.id, own=False)
                return
            except discord.NotFound:
                log.info("job %s: message deleted; sending a new one", self.job.id)
                await self._send_new(payload)
                return
            except discord.HTTPException as error:
                if error.status != 401:
                    raise
                # The token expired early (or was revoked): carry on through the channel.
                self._token_dead = True
        await self._edit_without_token(payload)

    async def _edit_without_token(self, payload: dict[str, Any]) -> None:
        # An ephemeral interaction message cannot be edited without its token; any message
        # the bot posted itself (in the channel or a DM) can.
        editable = not self.job.private or self._posted_by_us
        if editable and self.channel_id and self.message_id:
            channel = self._bot.get_partial_messageable(self.channel_id)
            try:
                await channel.get_partial_message(self.message_id).edit(**payload)
                return
            except (discord.NotFound, discord.Forbidden):
                log.info("job %s: message gone; sending a new one", self.job.id)
        await self._send_new(payload)

    async def _send_new(self, payload: dict[str, Any]) -> None:
        payload = dict(payload)
        files = payload.pop("attachments", [])
        if not self.job.private and self.job.channel_id:
            channel = self._bot.get_partial_messageable(self.job.channel_id)
            mention = f"<@{self.job.user_id}>"
            payload["content"] = f"{mention} {payload.get('content') or ''}".strip()
            reference = await self._parent_reference()
            try:
                message = await channel.send(files=files, reference=reference, **payload)  # type: ignore[arg-type]
                self._mention = mention
            except (discord.Forbidden, discord.NotFound):
                # No right to post there (slash commands work without it), or the channel is
                # gone: tell them privately.
                log.info("job %s: cannot post in the channel; sending a DM", self.job.id)
                message = await self._send_dm(
                    _fresh({"attachments": files})["attachments"], payload
                )
        else:
            message = await self._send_dm(files, payload)
        self._token_dead = True  # the new message is not the interaction's
        self._posted_by_us = True
        await self._remember(message.channel.id, message.id, own=True)

    async def _remember(self, channel_id: int, message_id: int, *, own: bool) -> None:
        self.message_id = message_id
        self.channel_id = channel_id
        jobs = self._bot.service.db.jobs
        if own:
            await jobs.set_own_message(self.job.id, channel_id=channel_id, message_id=message_id)
        else:
            await jobs.set_message(self.job.id, channel_id=channel_id, message_id=message_id)

    async def _parent_reference(self) -> discord.MessageReference | None:
        """An upscale or variation replies to the message it came from, as its interaction
        answer would; posted by the bot itself, it has to say so."""
        if self.job.parent_job_id is None:
            return None
        parent = await self._bot.service.db.jobs.find(self.job.parent_job_id)
        if (
            parent is None
            or parent.private
            or parent.message_id is None
            or parent.channel_id is None
            or parent.channel_id != self.job.channel_id
        ):
            return None
        return discord.MessageReference(
            message_id=parent.message_id,
            channel_id=parent.channel_id,
            guild_id=parent.guild_id,
            fail_if_not_exists=False,
        )

    async def _send_dm(self, files: list[discord.File], payload: dict[str, Any]) -> discord.Message:
        user = await self._bot.fetch_user(self.job.user_id)
        return await user.send(files=files, **payload)


class JobReporter:
    """Consumes a job's events and keeps its message up to date."""

    def __init__(
        self,
        bot: BotHost,
        job: Job,
        feed: JobFeed,
        target: MessageTarget,
        *,
        edit_interval: float,
        role_ids: tuple[int, ...] = (),
    ) -> None:
        self._bot = bot
        self._db = bot.service.db
        self.job = job
        self.feed = feed
        self.target = target
        self._role_ids = role_ids
        self._editor: ThrottledEditor[ProgressState] = ThrottledEditor(
            self._send_progress, edit_interval
        )
        self._model = feed.request.model
        self._locale = locale_named(StoredRequest.loads(job.request).locale)

    async def run(self) -> None:
        try:
            async for item in self.feed.follow():
                await self._on_event(item.event)
        except EngineStopped:
            # Shutting down: the job stays queued in the database and resumes on next start.
            await self._editor.close()
        except Exception:
            log.exception("job %s: delivery failed", self.job.id)
            await self._editor.close()
            await self._settle("failed", N_("Something went wrong while posting the result."))
            # Never leave the message saying "Queued": show whatever storage now says.
            self._bot.keep_trying(self._show_outcome_after_failure, self.job.id)

    async def _show_outcome_after_failure(self) -> None:
        job = await self._db.jobs.find(self.job.id)
        if job is None or job.delivered_at is not None:
            return
        try:
            await show_stored_outcome(self._bot, job)
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError):
            log.warning("job %s: could not show its outcome either", self.job.id, exc_info=True)

    async def _settle(self, status: str, reason: str | None = None) -> None:
        """Record how the job ended; a job ended another way already stays as it is."""
        jobs = self._db.jobs
        try:
            if status == "running":
                await jobs.mark_running(self.job.id)
            elif status == "failed":
                await jobs.mark_failed(self.job.id, reason or "failed")
            elif status == "cancelled":
                await jobs.mark_cancelled(self.job.id, reason)
        except InvalidTransition:
            log.info("job %s: already %s; not marking it %s", self.job.id, "finished", status)

    async def _on_event(self, event: object) -> None:
        match event:
            case Queued(position=position, eta_s=eta):
                line = render.queued_line(position, eta, self._locale)
                self._editor.update(ProgressState(line))
            case ModelLoading(model=model, detail=detail):
                line = render.loading_line(model, detail, self._locale)
                self._editor.update(ProgressState(line))
            case Started():
                await self._settle("running")
                self._bot.events("started", self.job, self._model)
                line = render.progress_line(0, 1, None, self._locale)
                self._editor.update(ProgressState(line))
            case Progress(step=step, total=total, eta_s=eta, preview=preview):
                data = self._editor_pending_preview()
                if preview is not None:
                    data = await asyncio.to_thread(_encode_small, preview)
                line = render.progress_line(step, total, eta, self._locale)
                self._editor.update(ProgressState(line, data))
            case Done(result=result):
                await self._deliver(result)
            case Failed(reason=reason):
                await self._settle("failed", reason)
                # The engine's reasons are English texts marked N_ there (out of memory...).
                shown = translate_marked(reason, self._locale)
                await self._final(
                    self._status_embed(f"❌ {shown}", COLOUR_FAILED), view=None, attachments=[]
                )
                await mark_delivered(self._bot, self.job)
                self._bot.events("failed", self.job, self._model, reason=reason)
            case Cancelled():
                await self._settle("cancelled", "cancelled by a user")
                await self._final(
                    self._status_embed(translate("✖ Cancelled.", self._locale), COLOUR_FAILED),
                    view=None,
                    attachments=[],
                )
                await mark_delivered(self._bot, self.job)
                self._bot.events("cancelled", self.job, self._model)

    def _editor_pending_preview(self) -> bytes | None:
        pending = self._editor.pending
        return pending.preview if pending is not None else None

    # --- rendering -----------------------------------------------------------------------

    def _status_embed(self, line: str, colour: discord.Colour) -> discord.Embed:
        return status_embed(self.job.prompt, self._model, line, colour)

    async def _send_progress(self, state: ProgressState) -> None:
        embed = self._status_embed(state.text, COLOUR_WORKING)
        attachments = []
        if state.preview is not None:
            attachments.append(discord.File(io.BytesIO(state.preview), "preview.jpg"))
            embed.set_image(url="attachment://preview.jpg")
        view = progress_view(self.job.id, self._locale) if state.cancellable else None
        await asyncio.wait_for(
            self.target.edit(content=None, embed=embed, attachments=attachments, view=view),
            PROGRESS_EDIT_TIMEOUT_S,
        )

    async def _final(
        self, embed: discord.Embed, view: discord.ui.View | None, **extra: Any
    ) -> None:
        await self._editor.finish_with(lambda: edit_with_retries(self.target, embed, view, extra))

    async def _deliver(self, result: JobResult) -> None:
        """Store first, then show: the job is recorded done with its images before anyone
        sees them, so a restart after this point shows them again without the GPU."""
        outputs = await self._bot.service.encode_result(result)
        flags = await self._bot.service.safety_flags(self.job, result)
        censored = Censored.of(flags)
        facts = ResultFacts.of(result)
        # The grid is made while the images are stored.
        grid = asyncio.ensure_future(
            render_result(self.job, [g.image for g in result.images], censored)
        )
        try:
            saved = await self._save(outputs, result, flags)
        except InvalidTransition:
            # Cancelled (or ended another way) just before it finished: that outcome stands.
            grid.cancel()
            log.info("job %s: ended another way before its result was stored", self.job.id)
            return
        grid_file = await grid
        if not saved:
            await self._give_up(grid_file)
            return
        embed, view = await result_embed_and_view(
            self._bot, self.job, facts, self._role_ids, censored
        )
        attachments = [] if grid_file is None else [grid_file]
        if grid_file is not None:
            embed.set_image(url=f"attachment://{grid_file.filename}")
        try:
            await self._final(embed, view, attachments=attachments)
        finally:
            self._bot.events("done", self.job, self._model, result=result)
        await mark_delivered(self._bot, self.job)

    async def _save(
        self, outputs: list[GeneratedImage], result: JobResult, flags: list[Flag]
    ) -> bool:
        """Store the images and mark the job done, retrying with backoff while the disk or
        the database cannot take them; False once ``RESULT_SAVE_GIVE_UP_S`` has passed."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._bot.settings.result_save_give_up_s
        delay = SAVE_RETRY_FIRST_S
        while True:
            try:
                await self._bot.service.complete(self.job, outputs, result, flags)
                return True
            except STORAGE_ERRORS as error:
                left = give_up_at - loop.time()
                log.warning(
                    "job %s: could not store its images (%s); %s",
                    self.job.id,
                    type(error).__name__,
                    f"retrying in {min(delay, left):.1f} s" if left > 0 else "giving up",
                )
                if left <= 0:
                    return False
                self._editor.update(
                    ProgressState(
                        translate(
                            "💾 Saving your images… storage is busy, retrying.", self._locale
                        ),
                        cancellable=False,
                    )
                )
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, SAVE_RETRY_MAX_S)

    async def _give_up(self, grid_file: discord.File | None) -> None:
        """Show what was made, say it could not be kept, and record the failure (which
        gives the images back to the quota) as soon as storage takes it."""
        ref = incident_id()
        log.error("job %s: gave up storing its images (ref %s)", self.job.id, ref)
        reason = f"Your images could not be saved (storage error, ref {ref})."
        embed = self._status_embed(
            translate(
                "❌ Your images could not be saved (storage error, ref {ref}). They are shown "
                "here but cannot be upscaled, varied or found in /history; they were not "
                "counted against your quota. Quote `{ref}` if it keeps happening.",
                self._locale,
                ref=ref,
            ),
            COLOUR_FAILED,
        )
        if grid_file is not None:
            embed.set_image(url=f"attachment://{grid_file.filename}")
        try:
            await self._final(embed, None, attachments=[] if grid_file is None else [grid_file])
        finally:
            self._bot.events("failed", self.job, self._model, reason="storage")
            self._bot.keep_trying(lambda: record_failure(self._bot, self.job, reason), self.job.id)


async def edit_with_retries(
    target: MessageTarget, embed: discord.Embed, view: discord.ui.View | None, extra: dict[str, Any]
) -> None:
    """A final edit: retried on Discord's 5xx, a dropped connection or no answer at all,
    since a lost one strands the message."""
    for attempt in range(FINAL_EDIT_ATTEMPTS):
        try:
            await asyncio.wait_for(
                target.edit(embed=embed, view=view, **_fresh(extra)), FINAL_EDIT_TIMEOUT_S
            )
            return
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as error:
            client_error = isinstance(error, discord.HTTPException) and error.status < 500
            if attempt + 1 == FINAL_EDIT_ATTEMPTS or client_error:
                raise
            log.warning("final edit failed (%s); retrying", type(error).__name__)
            await asyncio.sleep(1.0 * 2**attempt)


async def mark_delivered(bot: BotHost, job: Job) -> None:
    """Record that the outcome was shown; should storage refuse now, keep trying (a restart
    before then shows it once more, which is harmless)."""

    async def attempt() -> None:
        await bot.service.db.jobs.mark_delivered(job.id)

    try:
        await attempt()
    except STORAGE_ERRORS:
        bot.keep_trying(attempt, job.id)


async def record_failure(bot: BotHost, job: Job, reason: str) -> None:
    jobs = bot.service.db.jobs
    with contextlib.suppress(InvalidTransition):  # ended another way: that stands
        await jobs.mark_failed(job.id, reason)
    await jobs.mark_delivered(job.id)


def status_embed(
    prompt: str, model: str, line: str, colour: discord.Colour = COLOUR_WORKING
) -> discord.Embed:
    embed = discord.Embed(
        title=render.embed_title(prompt),
        description=line,
        colour=colour,
    )
    embed.set_footer(text=model)
    return embed


def _fresh(extra: dict[str, Any]) -> dict[str, Any]:
    """discord.File objects are consumed by an upload; a retry needs new ones."""
    fresh = dict(extra)
    if "attachments" in fresh:
        fresh["attachments"] = [
            discord.File(io.BytesIO(f.fp.getvalue()), f.filename) for f in fresh["attachments"]
        ]
    return fresh


def _encode_small(preview: PILImage.Image) -> bytes:
    small = preview.convert("RGB")
    small.thumbnail((256, 256))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class ResultFacts:
    """What a result message says, from a fresh result or from storage after a restart."""

    operation: Operation
    model: str
    seeds: tuple[int, ...]
    steps: int | None
    guidance: float | None
    width: int
    height: int
    total_s: float | None
    prompt_truncated: bool = False
    from_cache: bool = False

    @classmethod
    def of(cls, result: JobResult) -> ResultFacts:
        request = result.request
        return cls(
            operation=request.operation,
            model=request.model,
            seeds=tuple(result.seeds),
            steps=request.steps,
            guidance=request.guidance,
            width=request.width,
            height=request.height,
            total_s=result.timings.total_s,
            prompt_truncated=request.prompt_truncated,
            from_cache=result.from_cache,
        )

    @classmethod
    def stored(
        cls, job: Job, images: list[Image], default_model: str, held: Sequence[SafetyEntry] = ()
    ) -> ResultFacts:
        """Facts of a stored result; ``held``: its images still held back by the image check."""
        request = StoredRequest.loads(job.request).request
        first = images[0] if images else None
        seeds = sorted([(i.index, i.seed) for i in images] + [(e.index, e.seed) for e in held])
        return cls(
            operation=request.operation,
            model=request.model or default_model,
            seeds=tuple(seed for _, seed in seeds),
            steps=request.steps,
            guidance=request.guidance,
            width=request.width or (first.width if first else 0),
            height=request.height or (first.height if first else 0),
            total_s=(job.timings or {}).get("total_s"),
        )


async def render_grid(
    job: Job, pictures: list[PILImage.Image], *, spoiler: bool = False
) -> discord.File:
    """The images as one attachment (a grid for several), within Discord's upload limit."""
    grid = pictures[0] if len(pictures) == 1 else await asyncio.to_thread(make_grid, pictures)
    data, ext = await asyncio.to_thread(encode_preview, grid, max_bytes=UPLOAD_LIMIT, prefer="jpeg")
    return discord.File(io.BytesIO(data), f"{job.id}.{ext}", spoiler=spoiler)


async def render_result(
    job: Job, pictures: list[PILImage.Image], censored: Censored
) -> discord.File | None:
    """A result's grid as the image check allows: flagged images obscured (the file then a
    spoiler) or replaced by a withheld tile; None when every image is held back."""
    if len(censored.blocked) >= len(pictures):
        return None
    if censored.blurred or censored.blocked:
        pictures = await asyncio.to_thread(censored.pictures, pictures)
    return await render_grid(job, pictures, spoiler=bool(censored.blurred))


async def result_embed_and_view(
    bot: BotHost,
    job: Job,
    facts: ResultFacts,
    role_ids: tuple[int, ...] = (),
    censored: Censored = Censored(),
) -> tuple[discord.Embed, discord.ui.View | None]:
    stored = StoredRequest.loads(job.request)
    locale = locale_named(stored.locale)
    took = "" if facts.total_s is None else f" · {render.duration(facts.total_s, locale)}"
    lines = [
        translate(
            "{mention} · {seeds} · {steps} steps · guidance {guidance} · {size}{took}",
            locale,
            mention=f"<@{job.user_id}>",
            seeds=render.seeds_text(facts.seeds, locale),
            steps=facts.steps,
            guidance=f"{facts.guidance or 0:g}",
            size=f"{facts.width}×{facts.height}",
            took=took,
        )
    ]
    if stored.style:
        lines.append(translate("🎨 Style: {style}", locale, style=stored.style))
    # The grid's images in reading order, numbered as their buttons are.
    lines += [
        f"**{n}** · {render.clip(prompt, 120)}"
        for n, prompt in enumerate(stored.request.prompts, start=1)
    ]
    if facts.prompt_truncated:
        lines.append(
            translate("⚠ The prompt was longer than the model reads; its end was ignored.", locale)
        )
    if facts.from_cache:
        lines.append(
            translate(
                "♻ Same settings and seed as an earlier image: served from the cache.", locale
            )
        )
    lines += censored.lines(len(facts.seeds), locale)
    embed = discord.Embed(
        title=render.embed_title(job.prompt),
        description="\n".join(lines),
        colour=COLOUR_DONE,
    )
    # Direct messages have a quota of their own (guild None), shown the same way.
    usage = await bot.service.db.quotas.usage(job.guild_id, job.user_id, role_ids=role_ids)
    footer = f"{facts.model} · " + render.quota_footer(usage.remaining, usage.resets_at, locale)
    embed.set_footer(text=footer)
    view: discord.ui.View | None
    if len(censored.blocked) >= len(facts.seeds):
        view = None  # nothing shown, nothing to act on
    elif facts.operation is Operation.TXT2IMG or len(facts.seeds) > 1:
        view = grid_view(job.id, len(facts.seeds), withheld=censored.blocked)
    else:
        can_upscale = bot.can_upscale_size(facts.model, facts.width * 2, facts.height * 2)
        if not can_upscale:
            limit = bot.upscale_limit(facts.model)
            embed.description = (embed.description or "") + translate(
                "\n⬆ No further upscale: {model} upscales to {limit} px at most.",
                locale,
                model=facts.model,
                limit=limit,
            )
        view = single_view(
            job.id, locale, can_upscale=can_upscale, has_parent=job.parent_job_id is not None
        )
    return embed, view


async def show_stored_outcome(bot: BotHost, job: Job) -> None:
    """After a restart: show a finished job's outcome that was never shown, from storage
    (its images are stored: no generating again), on its own message."""
    target = MessageTarget(bot, job)
    target.answered(job.message_id)
    model = StoredRequest.loads(job.request).request.model or bot.registry.default_name
    if job.status is JobStatus.DONE:
        images = sorted(await bot.service.job_images(job.id), key=lambda image: image.index)
        flags = await bot.service.db.safety.for_job(job.id)
        held = [entry for entry in flags if entry.held]
        if not images and not held:  # cleaned up since: nothing left to show
            await mark_delivered(bot, job)
            return
        by_index = {
            image.index: await asyncio.to_thread(_open_png, await bot.service.image_bytes(image))
            for image in images
        }
        size = next(iter(by_index.values())).size if by_index else (512, 512)
        pictures = [
            withheld_tile(*size) if (picture := by_index.get(index)) is None else picture
            for index in range(len(images) + len(held))
        ]
        censored = Censored.of(flags)
        grid = await render_result(job, pictures, censored)
        facts = ResultFacts.stored(job, images, bot.registry.default_name, held)
        embed, view = await result_embed_and_view(bot, job, facts, censored=censored)
        if grid is not None:
            embed.set_image(url=f"attachment://{grid.filename}")
        await edit_with_retries(
            target, embed, view, {"attachments": [] if grid is None else [grid]}
        )
    else:
        locale = locale_named(StoredRequest.loads(job.request).locale)
        line = (
            translate("✖ Cancelled.", locale)
            if job.status is JobStatus.CANCELLED
            else f"❌ {translate_marked(job.error or '', locale)}"
        )
        embed = status_embed(job.prompt, model, line, COLOUR_FAILED)
        await edit_with_retries(target, embed, None, {"attachments": []})
    await mark_delivered(bot, job)


def _open_png(data: bytes) -> PILImage.Image:
    from PIL import Image as PILImageModule

    with PILImageModule.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
