"""What happens when someone starts a job or clicks a button. Thin: Discord in, service calls,
views out. Every user-caused failure ends as an ephemeral explanation."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import logging
from typing import Any

import discord
from PIL import Image as PILImage

from bot import editing, render
from bot.delivery import render_grid, status_embed
from bot.errors import PermissionDenied
from bot.host import BotHost
from bot.i18n import reader_locale, translate, translate_marked, translate_template
from bot.library import PAGE_SIZE as LIBRARY_PAGE_SIZE
from bot.library import Library, RenderedPage
from bot.views import (
    Action,
    EditModal,
    Pager,
    PromptModal,
    favourite_picker_view,
    progress_view,
    region_view,
    single_view,
)
from core.errors import N_, Note, UserError
from core.jobcodec import StoredRequest
from core.service import INTERACTION_TOKEN_LIFETIME, Requester
from core.storage.errors import ImageNotFound, InvalidInput, JobNotFound
from core.storage.records import Image, Job, LibraryQuery, LibraryScope
from core.wildcards import ExpandMode
from engine import edits
from engine.errors import ValidationError
from engine.types import GenerationRequest, Operation

log = logging.getLogger(__name__)
Interaction = discord.Interaction[BotHost]

INFO_UPLOAD_BUDGET = 10 * 2**20 - 256 * 1024
ANSWER_BUDGET_S = 2.0  # Discord fails an interaction not answered within 3 s
CLOCK_TRUST_S = 60.0
# The actions that, in remix mode, first open a modal to edit the prompt.
REMIXABLE = frozenset(
    {
        Action.REROLL,
        Action.VARIATION,
        Action.VARY_SUBTLE,
        Action.VARY_STRONG,
        Action.ZOOM_OUT_2,
        Action.ZOOM_OUT_15,
        Action.ZOOM_CUSTOM,
        Action.PAN_LEFT,
        Action.PAN_RIGHT,
        Action.PAN_UP,
        Action.PAN_DOWN,
    }
)
ZOOM_FIELD = (N_("Zoom out by"), N_("a number from 1.1 to 4, such as 1.8"), "2")
BOX_FIELD = (N_("Box: left top width height (%)"), N_("for example 25 25 50 50"), "")
LEGACY_PAGE_SIZE = 5  # page buttons from before saved views counted five to a page


def member_role_ids(user: discord.abc.User) -> tuple[int, ...]:
    """The ids of the roles Discord sent with a member (none for a user outside a guild).

    ``Member.roles`` keeps only the roles found in the guild cache, so a role the cache has
    not seen (made while the gateway was away, or a guild that is not cached) would quietly
    lose its quota override; the ids in the interaction's payload are what Discord says.
    """
    sent = getattr(user, "_roles", None)
    if sent is not None:
        return tuple(sorted(int(role_id) for role_id in sent))
    return tuple(role.id for role in getattr(user, "roles", ()) if not role.is_default())


def is_age_restricted(channel: object) -> bool:
    """Whether Discord marks ``channel`` age-restricted ("NSFW"); a thread follows its
    parent. DMs and channels of unknown kinds are not."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def requester_from(interaction: Interaction) -> Requester:
    member = interaction.user
    return Requester(
        user_id=member.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        role_ids=member_role_ids(member),
        interaction_token=interaction.token,
        token_expires_at=issued_at(interaction) + INTERACTION_TOKEN_LIFETIME,
        locale=None if (locale := reader_locale(interaction)) is None else locale.value,
        age_restricted=is_age_restricted(interaction.channel),
    )


def is_moderator(interaction: Interaction) -> bool:
    permissions = interaction.permissions
    return interaction.guild_id is not None and (
        permissions.manage_guild or permissions.administrator
    )


def require_moderator(interaction: Interaction, refusal: str) -> None:
    """Refuse anyone who is not a moderator here, with ``refusal`` (marked with ``N_``:
    "Only moderators with Manage Server can manage quotas."). default_permissions only
    hides a command, and a server can change that: check too."""
    if interaction.guild_id is None:
        # PermissionDenied, not a plain UserError: only check failures reach the error handler.
        raise PermissionDenied(N_("This command only works in a server."))
    if not is_moderator(interaction):
        raise PermissionDenied(refusal)


def require_owner(interaction: Interaction, refusal: str) -> None:
    """Refuse anyone but the bot's owners (``OWNER_IDS``), with ``refusal`` (N_-marked).
    Being a server's moderator is not enough: what an owner changes, every server gets."""
    if interaction.user.id not in interaction.client.settings.owner_ids:
        raise PermissionDenied(refusal)


async def launch(
    interaction: Interaction,
    request: GenerationRequest,
    *,
    private: bool = False,
    parent: tuple[str, int] | None = None,
    init_image_key: str | None = None,
    notes: tuple[Note, ...] = (),
    style: str | None = None,
    expand: ExpandMode | None = None,
) -> None:
    """Accept the job, then answer with the message that will follow it.

    Accepting (checks, quota, durable record, queue) normally takes milliseconds, so it
    happens before the answer: a refusal is then an ephemeral reply of its own. Deferring
    first would not do, since Discord turns the first follow-up of a public deferral into a
    public message. When accepting runs long (a busy database), a placeholder answers in
    time instead; a refusal then replaces it with an ephemeral follow-up.
    """
    bot = interaction.client
    requester = requester_from(interaction)
    requester_locale = reader_locale(interaction)
    accepting = asyncio.ensure_future(
        bot.service.accept(
            requester,
            request,
            private=private,
            parent=parent,
            init_image_key=init_image_key,
            style=style,
            expand=expand,
        )
    )
    done, _ = await asyncio.wait({accepting}, timeout=_answer_budget_s(interaction))
    if not done:
        placeholder = status_embed(
            request.prompt, request.model or "…", translate("⏳ Accepting…", requester_locale)
        )
        # Should even this fail, the job is still followed once accepted (a new message).
        with contextlib.suppress(discord.HTTPException):
            await interaction.response.send_message(embed=placeholder, ephemeral=private)
    try:
        accepted = await accepting
    except Exception as error:
        if interaction.response.is_done():
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
        if not isinstance(error, UserError):
            raise
        if bot.metrics is not None:
            bot.metrics.job_rejected()
        await bot.reply_error(interaction, error)
        return
    job = accepted.job
    bot.events("queued", job, accepted.request.model)
    # Followed from now on: whatever happens to the answer, the accepted job is delivered.
    reporter = bot.track(job, accepted.feed, answered=False, role_ids=requester.role_ids)
    message_id = None
    try:
        queued = translate("⏳ Queued…", requester_locale)
        embed = status_embed(job.prompt, accepted.request.model, queued)
        view = progress_view(job.id, requester_locale)
        if interaction.response.is_done():
            message = await interaction.edit_original_response(embed=embed, view=view)
            message_id = message.id
        else:
            callback = await interaction.response.send_message(
                embed=embed, view=view, ephemeral=private
            )
            message_id = callback.message_id or (await interaction.original_response()).id
        await bot.service.db.jobs.set_message(
            job.id, channel_id=interaction.channel_id, message_id=message_id
        )
    finally:
        reporter.target.answered(message_id)
    notes = (*notes, *accepted.notes)
    if notes:
        told = (translate_template(each, requester_locale) for each in notes)
        await interaction.followup.send("\n".join(told), ephemeral=True)


async def post_edit(
    interaction: Interaction,
    request: GenerationRequest,
    png: bytes,
    picture: PILImage.Image,
    seed: int,
    description: str,
    *,
    private: bool,
    parent: tuple[str, int] | None,
) -> None:
    """Record a plain edit (deferred already) as a finished job of its own and post it with
    the single-image view, as its answer."""
    bot = interaction.client
    completed = await bot.service.record_edit(
        requester_from(interaction), request, png, seed, private=private, parent=parent
    )
    edited = completed.job
    shown = await render_grid(edited, [picture])
    model = request.model or bot.registry.default_name
    embed = discord.Embed(
        title=render.embed_title(request.prompt),
        description=f"<@{edited.user_id}> ✂ {description} · {picture.width}×{picture.height}",
        colour=discord.Colour.green(),
    )
    embed.set_image(url=f"attachment://{shown.filename}")
    view = single_view(
        edited.id,
        reader_locale(interaction),
        can_upscale=bot.can_upscale_size(model, picture.width * 2, picture.height * 2),
        has_parent=parent is not None,
    )
    message = await interaction.followup.send(
        embed=embed, file=shown, view=view, ephemeral=private, wait=True
    )
    await bot.service.db.jobs.set_message(
        edited.id, channel_id=interaction.channel_id, message_id=message.id
    )
    await bot.service.db.jobs.mark_delivered(edited.id)


def _answer_budget_s(interaction: Interaction) -> float:
    """How long accepting may take before a placeholder answers: Discord wants the answer
    within 3 s of the interaction, and an upload may already have used some of that."""
    elapsed = (discord.utils.utcnow() - issued_at(interaction)).total_seconds()
    return min(ANSWER_BUDGET_S, max(0.2, ANSWER_BUDGET_S - max(0.0, elapsed)))


def issued_at(interaction: Interaction) -> dt.datetime:
    """When Discord sent the interaction: the time in its id, unless that disagrees with this
    machine's clock by more than a minute (a skewed clock, or a proxy's own ids); then now.
    The 15-minute token and the 3-second deadline are counted from it."""
    now = discord.utils.utcnow()
    created = interaction.created_at
    return created if abs((now - created).total_seconds()) < CLOCK_TRUST_S else now


def _require_visible(interaction: Interaction, job: Job) -> None:
    """A button acts on a job only for someone who can see it: its owner, or anyone in the
    server where it was posted publicly. Button ids can be crafted, so this is checked on
    every click, and a refusal does not tell whether the job exists."""
    if interaction.user.id == job.user_id:
        return
    if job.private or job.guild_id is None or job.guild_id != interaction.guild_id:
        raise UserError(N_("This job no longer exists."))


class ButtonActions:
    def __init__(self, bot: BotHost, library: Library) -> None:
        self._bot = bot
        self._library = library

    @property
    def _db(self) -> Any:
        return self._bot.service.db

    async def on_job_button(
        self, interaction: Interaction, action: Action, job_id: str, index: int | None
    ) -> None:
        try:
            job = await self._visible_job(interaction, job_id)
            await self._dispatch(interaction, action, job, index)
        except Exception as error:
            await self._bot.reply_failure(interaction, error)

    async def _visible_job(self, interaction: Interaction, job_id: str) -> Job:
        """The job a button or modal names, if the one who used it may see it."""
        try:
            job: Job = await self._db.jobs.get(job_id)
        except JobNotFound:
            raise UserError(N_("This job no longer exists.")) from None
        _require_visible(interaction, job)
        return job

    async def _dispatch(
        self, interaction: Interaction, action: Action, job: Job, index: int | None
    ) -> None:
        if action in REMIXABLE and await self._db.users.remix(interaction.user.id):
            await self._ask_remix(interaction, action, job, index or 0)
            return
        match action:
            case Action.CANCEL:
                await self._cancel(interaction, job)
            case Action.FAVOURITE:
                await self._favourite(interaction, job, index)
            case Action.DELETE:
                await self._delete(interaction, job)
            case Action.INFO:
                await self._info(interaction, job)
            case Action.OPEN | Action.BROWSE:
                await self._open(interaction, job, index, in_place=action is Action.BROWSE)
            case Action.SHARE:
                await self._library.share(interaction, job)
            case Action.GALLERY_REMOVE:
                await self._library.remove_from_gallery(interaction, job)
            case Action.VARY_REGION:
                await self._finished_image(job, index or 0)
                locale = reader_locale(interaction)
                await interaction.response.send_message(
                    translate("🖌 Which part should change? Then say what to put there.", locale),
                    view=region_view(job.id, index or 0, locale),
                    ephemeral=True,
                )
            case Action.ZOOM_CUSTOM:
                await self._ask(interaction, action, job, index or 0, N_("Custom Zoom"), ZOOM_FIELD)
            case _ if action.value in editing.REGIONS:
                extra = BOX_FIELD if action is Action.REGION_BOX else None
                await self._ask(interaction, action, job, index or 0, N_("Vary (Region)"), extra)
            case Action.COMPARE:
                await self._compare(interaction, job, index or 0)
            case Action.GOOD | Action.BAD:
                await self._vote(interaction, job, 1 if action is Action.GOOD else -1)
            case Action.EDIT:
                await self._finished_image(job, index or 0)
                await interaction.response.send_modal(
                    EditModal(job.id, index or 0, reader_locale(interaction))
                )
            case _:
                await self._run(interaction, action, job, index or 0)

    async def _run(
        self,
        interaction: Interaction,
        action: Action,
        job: Job,
        index: int,
        *,
        prompt: str | None = None,
        negative: str | None = None,
        extra: str | None = None,
    ) -> None:
        """The actions that start a job: run with the job's prompt, or one the user edited."""
        match action:
            case Action.UPSCALE:
                await self._derive(
                    interaction,
                    job,
                    index,
                    Operation.UPSCALE,
                    None,
                    prompt=prompt,
                    negative=negative,
                )
            case Action.VARIATION | Action.VARY_STRONG:
                await self._derive(
                    interaction,
                    job,
                    index,
                    Operation.VARIATION,
                    "strong",
                    prompt=prompt,
                    negative=negative,
                )
            case Action.VARY_SUBTLE:
                await self._derive(
                    interaction,
                    job,
                    index,
                    Operation.VARIATION,
                    "subtle",
                    prompt=prompt,
                    negative=negative,
                )
            case Action.REROLL:
                await self._reroll(interaction, job, prompt=prompt, negative=negative)
            case Action.ZOOM_OUT_2 | Action.ZOOM_OUT_15 | Action.ZOOM_CUSTOM:
                factor = (
                    editing.zoom_factor(extra or "")
                    if action is Action.ZOOM_CUSTOM
                    else editing.ZOOMS[action.value]
                )
                await self._repaint(
                    interaction,
                    job,
                    index,
                    lambda image: edits.zoom_out(image, factor),
                    prompt=prompt,
                    negative=negative,
                )
            case _ if action.value in editing.PANS:
                direction = editing.PANS[action.value]
                spec = self._bot.registry.get(self._model_of(job))
                await self._repaint(
                    interaction,
                    job,
                    index,
                    lambda image: edits.pan(image, direction, max_size=spec.presets.max_size),
                    prompt=prompt,
                    negative=negative,
                )
            case _ if action.value in editing.REGIONS:
                region = editing.REGIONS[action.value]
                try:
                    box = edits.parse_box(extra or "") if region is edits.Region.BOX else None
                except ValidationError as error:
                    raise UserError(error.template, **error.values) from None
                await self._repaint(
                    interaction,
                    job,
                    index,
                    lambda image: edits.Canvas(image, edits.region_mask(image.size, region, box)),
                    strength=editing.REGION_STRENGTH,
                    prompt=prompt,
                    negative=negative,
                )
            case _:
                raise UserError(N_("This button does nothing any more."))

    def _model_of(self, job: Job) -> str:
        return StoredRequest.loads(job.request).request.model or self._bot.registry.default_name

    async def _ask(
        self,
        interaction: Interaction,
        action: Action,
        job: Job,
        index: int,
        title: str,
        extra: tuple[str, str, str] | None,
    ) -> None:
        """Open the modal for a prompt (and ``extra``) before running ``action``. ``title``
        and ``extra``'s label and placeholder are English texts marked with ``N_``."""
        await self._finished_image(job, index)
        stored = StoredRequest.loads(job.request).request
        locale = reader_locale(interaction)
        if extra is not None:
            label, placeholder, default = extra
            extra = (
                translate_marked(label, locale),
                translate_marked(placeholder, locale),
                default,
            )
        await interaction.response.send_modal(
            PromptModal(
                title=translate_marked(title, locale),
                action=action,
                job_id=job.id,
                index=index,
                prompt=stored.prompt_of(index),
                negative=stored.negative_prompt,
                extra=extra,
                locale=locale,
            )
        )

    async def _ask_remix(
        self, interaction: Interaction, action: Action, job: Job, index: int
    ) -> None:
        extra = ZOOM_FIELD if action is Action.ZOOM_CUSTOM else None
        await self._ask(interaction, action, job, index, N_("Remix"), extra)

    async def on_prompt_modal(
        self,
        interaction: Interaction,
        action: Action,
        job_id: str,
        index: int,
        prompt: str,
        negative: str,
        extra: str | None,
    ) -> None:
        try:
            job = await self._visible_job(interaction, job_id)
            await self._run(
                interaction, action, job, index, prompt=prompt, negative=negative, extra=extra
            )
        except Exception as error:
            await self._bot.reply_failure(interaction, error)

    async def on_edit_modal(
        self,
        interaction: Interaction,
        job_id: str,
        index: int,
        fields: tuple[str, str, str, str],
    ) -> None:
        """✂ Edit submitted: apply it off the loop, record it as a finished job of its own
        (no model runs), and post it with the single-image view."""
        try:
            job = await self._visible_job(interaction, job_id)
            adjustments = editing.parse_adjustments(*fields)
            image = await self._finished_image(job, index)
            await interaction.response.defer(ephemeral=job.private, thinking=True)
            parent = StoredRequest.loads(job.request).request
            model = parent.model or self._bot.registry.default_name
            description = adjustments.describe()
            data = await self._bot.service.image_bytes(image)
            try:
                png, picture = await asyncio.to_thread(
                    editing.edited_png,
                    data,
                    adjustments,
                    editing.edit_parameters(parent, image.seed, model, description),
                )
            except ValidationError as error:
                raise UserError(error.template, **error.values) from None
            request = dataclasses.replace(
                parent,
                prompt=parent.prompt_of(index),
                prompts=(),
                count=1,
                operation=Operation.IMG2IMG,
                width=picture.width,
                height=picture.height,
                seed=image.seed,
            )
            await post_edit(
                interaction,
                request,
                png,
                picture,
                image.seed,
                description,
                private=job.private,
                parent=(job.id, image.index),
            )
        except Exception as error:
            await self._bot.reply_failure(interaction, error)

    async def _finished_image(self, job: Job, index: int) -> Image:
        images = await self._finished_images(job)
        # By the image's own index: clean-up may have kept only some of a grid's images.
        image = next((i for i in images if i.index == index), None)
        if image is None:
            raise UserError(N_("That image no longer exists."))
        return image

    async def _repaint(
        self,
        interaction: Interaction,
        job: Job,
        index: int,
        build: editing.Build,
        *,
        prompt: str | None = None,
        negative: str | None = None,
        strength: float = 1.0,
    ) -> None:
        """Zoom Out, Pan, Vary (Region): the model paints the canvas ``build`` makes."""
        image = await self._finished_image(job, index)
        request = await editing.repaint_request(
            self._bot, job, image, build, prompt=prompt, negative=negative, strength=strength
        )
        await launch(interaction, request, private=job.private, parent=(job.id, image.index))

    async def _vote(self, interaction: Interaction, job: Job, value: int) -> None:
        """👍/👎: the quality signal, counted per model in /stats; again to take it back."""
        await self._finished_images(job)
        now = await self._db.usage.vote(interaction.user.id, job.id, value)
        text = {
            1: N_("👍 Thanks: counted as a good result."),
            -1: N_("👎 Thanks: counted as a poor result."),
            0: N_("Your vote on this result is taken back."),
        }[now]
        await interaction.response.send_message(
            translate_marked(text, reader_locale(interaction)), ephemeral=True
        )

    async def _compare(self, interaction: Interaction, job: Job, index: int) -> None:
        """This image beside the one it was made from."""
        image = await self._finished_image(job, index)
        if job.parent_job_id is None:
            raise UserError(N_("This image was not made from another one: nothing to compare."))
        parent_job = await self._db.jobs.find(job.parent_job_id)
        if parent_job is None:
            raise UserError(N_("The image it was made from has been deleted."))
        _require_visible(interaction, parent_job)
        parent = next(
            (
                i
                for i in await self._bot.service.job_images(parent_job.id)
                if i.index == (job.parent_image_index or 0)
            ),
            None,
        )
        if parent is None:
            raise UserError(N_("The image it was made from has been cleaned up."))
        await interaction.response.defer(ephemeral=True, thinking=True)
        file = await editing.compare_file(self._bot, parent, image, job)
        embed = discord.Embed(
            title=translate("Before and after", reader_locale(interaction)),
            description=render.embed_title(job.prompt),
        )
        embed.set_image(url=f"attachment://{file.filename}")
        await interaction.followup.send(embed=embed, file=file, ephemeral=True)

    async def _open(
        self, interaction: Interaction, job: Job, index: int | None, *, in_place: bool
    ) -> None:
        """A library entry at full size: a message of its own, or (stepping between a job's
        images) the same message."""
        if in_place:
            await interaction.response.defer()
        else:
            await interaction.response.defer(ephemeral=True, thinking=True)
        permissions = interaction.permissions
        shown = await self._library.entry(
            job,
            index,
            interaction.user.id,
            moderator_here=interaction.guild_id == job.guild_id
            and (permissions.manage_guild or permissions.manage_messages),
            locale=reader_locale(interaction),
        )
        if in_place:
            await interaction.edit_original_response(
                embeds=shown.embeds, view=shown.view, attachments=shown.files
            )
        else:
            await interaction.followup.send(
                embeds=shown.embeds, view=shown.view, files=shown.files, ephemeral=True
            )

    def _require_owner_or_moderator(self, interaction: Interaction, job: Job, refusal: str) -> None:
        if interaction.user.id != job.user_id and not is_moderator(interaction):
            raise PermissionDenied(refusal)

    async def _cancel(self, interaction: Interaction, job: Job) -> None:
        self._require_owner_or_moderator(
            interaction,
            job,
            N_("Only the person who made this image or a moderator can cancel it."),
        )
        if job.finished:
            raise UserError(N_("This job has already finished."))
        cancelled = self._bot.cancel_job(job.id)
        if cancelled is False:
            raise UserError(N_("This job has already finished."))
        if cancelled is None:
            # Not followed by this process (e.g. between a restart and its resume).
            await self._db.jobs.mark_cancelled(job.id, "cancelled by a user")
        await interaction.response.send_message(
            translate("Cancelled.", reader_locale(interaction)), ephemeral=True
        )

    async def _finished_images(self, job: Job) -> list[Any]:
        # Images are stored before the result is shown and the job marked done, so a click
        # that follows the result closely finds them even while the job still says running.
        images = list(await self._bot.service.job_images(job.id))
        if images:
            return images
        if job.active:
            raise UserError(N_("This job has not finished yet."))
        raise UserError(N_("This job has no images (it failed, was cancelled, or was cleaned up)."))

    async def _derive(
        self,
        interaction: Interaction,
        job: Job,
        index: int,
        operation: Operation,
        strength: str | None,
        *,
        prompt: str | None = None,
        negative: str | None = None,
    ) -> None:
        image = await self._finished_image(job, index)
        parent = StoredRequest.loads(job.request).request
        if operation is Operation.UPSCALE and not self._bot.can_upscale_size(
            parent.model, image.width * 2, image.height * 2
        ):
            limit = self._bot.upscale_limit(parent.model)
            if limit:
                raise UserError(
                    N_(
                        "This image is already as large as this model can upscale "
                        "({limit} px on its longer side)."
                    ),
                    limit=limit,
                )
            raise UserError(N_("This image is already as large as this model can upscale."))
        width, height = image.width, image.height
        if operation is Operation.VARIATION:
            # A tiled upscale is larger than the model paints at once: vary it at that size.
            max_size = self._bot.registry.get(self._model_of(job)).presets.max_size
            width, height = edits.fit_within((width, height), max_size)
        request = GenerationRequest(
            prompt=parent.prompt_of(index) if prompt is None else prompt,
            model=parent.model,
            operation=operation,
            negative_prompt=parent.negative_prompt if negative is None else negative,
            count=1,
            steps=parent.steps,
            guidance=parent.guidance,
            width=width,
            height=height,
            scheduler=parent.scheduler,
            variation=strength if operation is Operation.VARIATION else None,  # type: ignore[arg-type]
            init_image=await self._bot.service.image_bytes(image),
        )
        await launch(
            interaction,
            request,
            private=job.private,
            parent=(job.id, index),
            init_image_key=image.file_key,
        )

    async def _reroll(
        self,
        interaction: Interaction,
        job: Job,
        *,
        prompt: str | None = None,
        negative: str | None = None,
    ) -> None:
        stored = StoredRequest.loads(job.request)
        request = dataclasses.replace(stored.request, seed=None)
        if prompt is not None:  # remixed: the new prompt for every image
            request = dataclasses.replace(
                request, prompt=prompt, prompts=(), negative_prompt=negative or ""
            )
        images = self._bot.service.images
        if stored.init_image_key:
            request = dataclasses.replace(
                request, init_image=await images.get(stored.init_image_key)
            )
        if stored.mask_image_key:  # a zoom, pan or region: the same canvas, a new painting
            request = dataclasses.replace(
                request, mask_image=await images.get(stored.mask_image_key)
            )
        await launch(
            interaction, request, private=job.private, init_image_key=stored.init_image_key
        )

    async def _favourite(self, interaction: Interaction, job: Job, index: int | None) -> None:
        """⭐ under one image (a single result, an opened entry) stars it; under a grid it
        asks which of the grid's images to star."""
        locale = reader_locale(interaction)
        images = await self._finished_images(job)
        if index is not None:
            images = [image for image in images if image.index == index]
            if not images:
                raise UserError(N_("That image no longer exists."))
        elif len(images) > 1:
            starred = await self._db.favourites.favourited_among(
                interaction.user.id, [i.id for i in images]
            )
            await interaction.response.send_message(
                translate("⭐ Which of these images do you want in your favourites?", locale),
                view=favourite_picker_view(
                    job.id,
                    max(i.index for i in images) + 1,
                    frozenset(i.index for i in images if i.id in starred),
                    locale,
                ),
                ephemeral=True,
            )
            return
        added = await self._db.favourites.toggle(interaction.user.id, [i.id for i in images])
        if len(images) == 1:
            text = (
                translate("⭐ Added this image to your favourites.", locale)
                if added
                else translate("Removed this image from your favourites.", locale)
            )
        else:
            text = (
                translate(
                    "⭐ Added these {count} images to your favourites.", locale, count=len(images)
                )
                if added
                else translate(
                    "Removed these {count} images from your favourites.", locale, count=len(images)
                )
            )
        await interaction.response.send_message(text, ephemeral=True)

    async def _delete(self, interaction: Interaction, job: Job) -> None:
        self._require_owner_or_moderator(
            interaction,
            job,
            N_("Only the person who made this image or a moderator can delete it."),
        )
        clicked = interaction.message
        if clicked is None or clicked.id != job.message_id:
            # A button's id names a job; the message it deletes must be that job's own.
            raise UserError(N_("This button does not belong to this message."))
        await interaction.response.defer()
        await interaction.delete_original_response()
        if interaction.user.id == job.user_id:  # its owner: gone from their lists too
            await self._db.library.hide(job.id)

    async def _info(self, interaction: Interaction, job: Job) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        stored = StoredRequest.loads(job.request).request
        images = list(await self._bot.service.job_images(job.id))
        timings = job.timings or {}
        locale = reader_locale(interaction)
        default = translate("model default", locale)
        lines = [
            translate("**Prompt:** {prompt}", locale, prompt=render.clip(job.prompt, 1000)),
            translate(
                "**Negative prompt:** {negative}",
                locale,
                negative=render.clip(stored.negative_prompt, 300) or "—",
            ),
            translate(
                "**Model:** `{model}` · **Steps:** {steps} · **Guidance:** {guidance}",
                locale,
                model=stored.model or self._bot.registry.default_name,
                steps=stored.steps or default,
                guidance=stored.guidance if stored.guidance is not None else default,
            ),
            translate(
                "**Seeds:** {seeds}",
                locale,
                seeds=", ".join(str(i.seed) for i in images) or stored.seed,
            ),
            translate("**Status:** {status}", locale, status=render.status_name(job.status, locale))
            + (
                translate(
                    " · **Time:** {duration}",
                    locale,
                    duration=render.duration(timings.get("total_s")),
                )
                if timings
                else ""
            ),
        ]
        files: list[discord.File] = []
        budget = INFO_UPLOAD_BUDGET
        for image in images:
            data = await self._bot.service.image_bytes(image)
            if len(data) > budget:
                lines.append(
                    translate("Some full-size files are too large to attach here.", locale)
                )
                break
            budget -= len(data)
            files.append(discord.File(io.BytesIO(data), f"{job.id}-{image.index + 1}.png"))
        await interaction.followup.send("\n".join(lines)[:2000], files=files, ephemeral=True)
        if files and self._bot.metrics is not None:
            self._bot.metrics.image_served(len(files))

    async def on_page(
        self,
        interaction: Interaction,
        kind: Pager,
        user_id: int,
        page: int,
        search: str | None = None,
    ) -> None:
        """A page button from before saved views: ask its question again as a saved view."""
        try:
            if interaction.user.id != user_id:
                raise UserError(N_("These pages belong to someone else. Use the command yourself."))
            scope = LibraryScope.FAVOURITES if kind is Pager.FAVOURITES else LibraryScope.HISTORY
            saved = await self._db.library.save_view(
                scope, user_id, interaction.guild_id, LibraryQuery(text=search)
            )
            page = page * LEGACY_PAGE_SIZE // LIBRARY_PAGE_SIZE
            shown = await self._library.render(saved, page, reader_locale(interaction))
            await self._show_page(interaction, shown)
        except Exception as error:
            await self._bot.reply_failure(interaction, error)

    async def on_library_page(self, interaction: Interaction, view_id: str, page: int) -> None:
        try:
            saved = await self._library.saved(view_id, interaction.user.id)
            shown = await self._library.render(saved, page, reader_locale(interaction))
            await self._show_page(interaction, shown)
        except Exception as error:
            await self._bot.reply_failure(interaction, error)

    async def _show_page(self, interaction: Interaction, shown: RenderedPage) -> None:
        await interaction.response.edit_message(
            content=shown.content or None,
            embeds=shown.embeds,
            view=shown.view,
            attachments=shown.files,
        )

    async def on_favourite_pick(
        self, interaction: Interaction, job_id: str, chosen: list[int]
    ) -> None:
        try:
            job = await self._visible_job(interaction, job_id)
            images = await self._finished_images(job)
            count = await self._db.favourites.choose(
                interaction.user.id,
                [i.id for i in images],
                [i.id for i in images if i.index in chosen],
            )
            locale = reader_locale(interaction)
            numbers = ", ".join(str(index + 1) for index in sorted(chosen)) or translate(
                "none", locale
            )
            await interaction.response.edit_message(
                content=translate(
                    "⭐ Starred from this grid: {numbers} ({count} image(s)).",
                    locale,
                    numbers=numbers,
                    count=count,
                ),
                view=None,
            )
        except Exception as error:
            await self._bot.reply_failure(interaction, error, ImageNotFound)

    async def on_forget(self, interaction: Interaction, user_id: int) -> None:
        """The confirmed /forget: delete everything of the user's, then say what went."""
        try:
            if interaction.user.id != user_id:
                raise UserError(N_("Only the person who asked can confirm this."))
            await interaction.response.defer()  # deleting many files can take a while
            report = await self._bot.service.db.forget_user(user_id)
            posts = 0
            for channel_id, message_id in report.shared_posts:
                post = self._bot.get_partial_messageable(channel_id).get_partial_message(message_id)
                with contextlib.suppress(discord.HTTPException):  # deleted by hand already
                    await post.delete()
                    posts += 1
            await interaction.edit_original_response(
                content=translate(
                    "Done. Deleted {jobs} job(s) with {images} image(s) ({files} file(s)), "
                    "{favourites} favourite(s), {prompts} remembered prompt(s), {keys} API "
                    "key(s) and {posts} shared post(s), in every server and DM.",
                    reader_locale(interaction),
                    jobs=report.jobs,
                    images=report.images,
                    files=report.files_deleted,
                    favourites=report.favourites,
                    prompts=report.prompts,
                    keys=report.api_keys,
                    posts=posts,
                ),
                view=None,
            )
        except Exception as error:
            await self._bot.reply_failure(interaction, error, InvalidInput)
