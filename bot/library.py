"""The library in Discord: /history, /favorites and /gallery as numbered contact sheets with
a button per entry; an entry opened at full size; sharing to the gallery channel; moderators
taking an entry out of the gallery. Storage answers the questions; this renders them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Any

import discord
from PIL import Image as PILImage

from bot import render
from bot.delivery import UPLOAD_LIMIT, render_grid
from bot.errors import PermissionDenied
from bot.host import BotHost
from bot.i18n import reader_locale, translate, translate_marked
from bot.views import Action, JobButton, entry_view, library_page_view
from core.errors import N_, UserError
from core.jobcodec import StoredRequest
from core.service import EDIT_KIND
from core.storage.errors import ImageNotFound
from core.storage.records import (
    Image,
    Job,
    JobStatus,
    LibraryEntry,
    LibraryQuery,
    LibraryScope,
    LibrarySort,
    LibraryView,
    Page,
)
from engine.images import encode_preview, make_contact_sheet

log = logging.getLogger(__name__)

PAGE_SIZE = 10  # two rows of five numbered buttons
SHEET_MAX_BYTES = 2 * 2**20

_TITLES = {
    LibraryScope.HISTORY: (N_("🕘 Your generations"), N_("No generations yet: try /imagine.")),
    LibraryScope.FAVOURITES: (
        N_("⭐ Your favourites"),
        N_("You have no favourites yet: press ⭐ under an image."),
    ),
    LibraryScope.GALLERY: (
        N_("🖼 This server's gallery"),
        N_("This server's gallery is empty: public results show up here."),
    ),
}
_SORT_NAMES = {
    LibrarySort.NEWEST: N_("newest first"),
    LibrarySort.OLDEST: N_("oldest first"),
    LibrarySort.MOST_FAVOURITED: N_("most favourited"),
}


@dataclass
class RenderedPage:
    content: str
    embeds: list[discord.Embed]
    view: discord.ui.View
    files: list[discord.File]


def describe_query(query: LibraryQuery, locale: discord.Locale | None = None) -> str:
    """The filters in force, as one line people can read back."""
    parts = []
    if query.text:
        parts.append(f"“{render.clip(query.text, 60)}”")
    if query.model:
        parts.append(translate("model `{model}`", locale, model=render.clip(query.model, 40)))
    if query.operation:
        parts.append(query.operation)
    if query.status is not None:
        parts.append(render.status_name(query.status, locale))
    if query.since is not None:
        parts.append(translate("since {date}", locale, date=render.discord_time(query.since, "d")))
    if query.until is not None:
        parts.append(translate("before {date}", locale, date=render.discord_time(query.until, "d")))
    if query.favourites_only:
        parts.append(translate("⭐ only", locale))
    if query.sort is not LibrarySort.NEWEST:
        parts.append(translate_marked(_SORT_NAMES[query.sort], locale))
    return " · ".join(parts)


def _entry_line(
    number: int, entry: LibraryEntry, scope: LibraryScope, locale: discord.Locale | None
) -> str:
    job = entry.job
    if job.status is not JobStatus.DONE:
        state = render.status_name(job.status, locale)
    elif not entry.images:
        state = translate("images cleaned up", locale)
    elif len(entry.images) == 1:
        state = translate("1 image", locale)
    else:
        state = translate("{count} images", locale, count=len(entry.images))
    line = (
        f"**{number}.** {render.quoted_prompt(job.prompt, 70)} · {state} · "
        f"{render.discord_time(job.created_at)}"
    )
    if entry.favourite_count:
        line += f" · ⭐ {entry.favourite_count}"
    if scope is LibraryScope.GALLERY:
        line += " · " + translate("by {user}", locale, user=f"<@{job.user_id}>")
    return line


def _decode_tile(data: bytes | None) -> PILImage.Image | None:
    if data is None:
        return None
    try:
        with PILImage.open(io.BytesIO(data)) as tile:
            return tile.convert("RGB")
    except (OSError, ValueError):
        return None  # a damaged thumbnail: the cell stays empty, the number stays


def _sheet(tiles: list[bytes | None]) -> tuple[bytes, str]:
    sheet = make_contact_sheet([_decode_tile(data) for data in tiles])
    return encode_preview(sheet, max_bytes=SHEET_MAX_BYTES)


class Library:
    def __init__(self, bot: BotHost) -> None:
        self._bot = bot

    @property
    def _db(self) -> Any:
        return self._bot.service.db

    # --- pages ---------------------------------------------------------------------------

    async def first_page(
        self,
        scope: LibraryScope,
        user_id: int,
        guild_id: int | None,
        query: LibraryQuery,
        locale: discord.Locale | None,
    ) -> RenderedPage:
        """Save the question (page buttons carry its id) and show its first page."""
        saved = await self._db.library.save_view(scope, user_id, guild_id, query)
        return await self.render(saved, 0, locale)

    async def saved(self, view_id: str, user_id: int) -> LibraryView:
        saved: LibraryView | None = await self._db.library.view(view_id)
        if saved is None:
            raise UserError(N_("These pages have expired. Run the command again."))
        if saved.user_id != user_id:
            raise UserError(N_("These pages belong to someone else. Use the command yourself."))
        return saved

    async def render(
        self, saved: LibraryView, page: int, locale: discord.Locale | None
    ) -> RenderedPage:
        found = await self._page(saved, page)
        if not found.items and found.total:  # the list shrank under this page: its last one
            page = found.page_count - 1
            found = await self._page(saved, page)
        heading, empty = (translate_marked(text, locale) for text in _TITLES[saved.scope])
        filters = describe_query(saved.query, locale)
        embed = discord.Embed(
            title=f"{heading} ({found.total})" if found.total else heading,
            colour=discord.Colour.blurple(),
        )
        lines = [f"🔎 {filters}"] if filters else []
        if not found.items:
            lines.append(
                translate("Nothing matches these filters.", locale)
                if saved.query.filtered
                else empty
            )
        lines += [
            _entry_line(number, entry, saved.scope, locale)
            for number, entry in enumerate(found.items, start=1)
        ]
        embed.description = render.clip("\n".join(lines), 4096)
        files: list[discord.File] = []
        if found.items:
            tiles = [await self._thumbnail(entry.images) for entry in found.items]
            data, ext = await asyncio.to_thread(_sheet, tiles)
            files.append(discord.File(io.BytesIO(data), f"page.{ext}"))
            embed.set_image(url=f"attachment://page.{ext}")
            embed.set_footer(
                text=translate(
                    "Page {page} of {pages} · press a number to open it",
                    locale,
                    page=page + 1,
                    pages=found.page_count,
                )
            )
        view = library_page_view(
            saved.id,
            page,
            found.page_count,
            [
                (entry.job.id, entry.images[0].index if entry.images else None)
                for entry in found.items
            ],
            locale,
        )
        return RenderedPage("", [embed], view, files)

    async def _page(self, saved: LibraryView, page: int) -> Page[LibraryEntry]:
        result: Page[LibraryEntry] = await self._db.library.page(
            saved.scope,
            saved.user_id,
            saved.query,
            guild_id=saved.guild_id,
            offset=page * PAGE_SIZE,
            limit=PAGE_SIZE,
        )
        return result

    async def _thumbnail(self, images: tuple[Image, ...]) -> bytes | None:
        if not images or not images[0].thumbnail_key:
            return None
        try:
            data: bytes = await self._bot.service.images.get(images[0].thumbnail_key)
        except ImageNotFound:
            return None  # cleaned up meanwhile: an empty cell
        return data

    # --- one entry -----------------------------------------------------------------------

    async def entry(
        self,
        job: Job,
        index: int | None,
        viewer_id: int,
        *,
        moderator_here: bool,
        locale: discord.Locale | None,
    ) -> RenderedPage:
        """One image of ``job`` at full size (the first when ``index`` is None) with what the
        viewer may do to it."""
        images = sorted(await self._bot.service.job_images(job.id), key=lambda i: i.index)
        stored = StoredRequest.loads(job.request).request
        model = stored.model or self._bot.registry.default_name
        embed = discord.Embed(title=render.embed_title(job.prompt), colour=discord.Colour.green())
        removable = (
            moderator_here
            and not job.private
            and job.guild_id is not None
            and job.gallery_removed_at is None
        )
        if not images:
            reason = job.error or (
                translate("cleaned up", locale)
                if job.status is JobStatus.DONE
                else render.status_name(job.status, locale)
            )
            embed.description = translate(
                "by {user} · `{model}` · no images ({reason})",
                locale,
                user=f"<@{job.user_id}>",
                model=model,
                reason=reason,
            )
            view = discord.ui.View(timeout=None)
            if viewer_id == job.user_id:
                again = translate("Run again", locale)
                view.add_item(JobButton(Action.REROLL, job.id, label=again, emoji="🔄"))
            view.add_item(JobButton(Action.INFO, job.id, emoji="ℹ"))
            return RenderedPage("", [embed], view, [])
        image = next((i for i in images if i.index == index), images[0])
        starred = await self._db.favourites.favourited_among(viewer_id, [image.id])
        embed.description = (
            translate(
                "by {user} · `{model}` · seed {seed} · {size} · {time}",
                locale,
                user=f"<@{job.user_id}>",
                model=model,
                seed=image.seed,
                size=f"{image.width}×{image.height}",
                time=render.discord_time(job.created_at),
            )
            + (translate(" · ⭐ in your favourites", locale) if starred else "")
            + ("\n" + translate("📤 Shared", locale) if job.shared_at else "")
        )
        data = await self._bot.service.image_bytes(image)
        name = f"{job.id}-{image.index + 1}.png"
        if len(data) > UPLOAD_LIMIT:
            picture = await asyncio.to_thread(_decode_tile, data)
            if picture is not None:
                data, ext = await asyncio.to_thread(
                    encode_preview, picture, max_bytes=UPLOAD_LIMIT, prefer="jpeg"
                )
                name = f"{job.id}-{image.index + 1}.{ext}"
        embed.set_image(url=f"attachment://{name}")
        view = entry_view(
            job.id,
            image.index,
            locale,
            indexes=[i.index for i in images],
            can_upscale=self._bot.can_upscale_size(model, image.width * 2, image.height * 2),
            owner=viewer_id == job.user_id,
            removable=removable,
            rerollable=job.kind != EDIT_KIND,
        )
        return RenderedPage("", [embed], view, [discord.File(io.BytesIO(data), name)])

    # --- sharing and the gallery ---------------------------------------------------------

    def share_link(self, job: Job) -> str | None:
        base = self._bot.settings.api_public_url
        return None if base is None else f"{base}/share/{job.id}"

    async def share(self, interaction: discord.Interaction[Any], job: Job) -> None:
        """Post the owner's result to the server's gallery channel (crediting them) and make
        it public; with a public API address, answer with its share page too."""
        if interaction.user.id != job.user_id:
            raise PermissionDenied(N_("Only the person who made this image can share it."))
        locale = reader_locale(interaction)
        images = sorted(await self._bot.service.job_images(job.id), key=lambda i: i.index)
        if not images:
            raise UserError(N_("This job has no images to share."))
        channel_id = None
        if job.guild_id is not None:
            channel_id = (await self._db.guilds.settings(job.guild_id)).gallery_channel_id
        link = self.share_link(job)
        if channel_id is None and link is None:
            raise UserError(
                N_(
                    "There is nowhere to share this: this server has no gallery channel. A "
                    "moderator can choose one with `/settings gallery-channel`."
                )
                if job.guild_id is not None
                else N_(
                    "Results made in a DM can be shared only where the bot's operator has "
                    "set up share links (API_PUBLIC_URL)."
                )
            )
        await interaction.response.defer(ephemeral=True, thinking=True)
        if not await self._db.library.claim_share(job.id):
            shared = await self._db.jobs.get(job.id)
            text = self._shared_text(shared, link, locale, again=True)
            await _send_shared(interaction, text, link, locale)
            return
        message_id = None
        try:
            if channel_id is not None:
                message_id = await self._post(channel_id, job, images, locale)
            await self._db.library.record_share(job.id, channel_id, message_id)
        except BaseException:
            await self._db.library.release_share(job.id)
            raise
        shared = await self._db.jobs.get(job.id)
        await _send_shared(interaction, self._shared_text(shared, link, locale), link, locale)

    def _shared_text(
        self, job: Job, link: str | None, locale: discord.Locale | None, *, again: bool = False
    ) -> str:
        lines = [
            translate("📤 Already shared.", locale)
            if again
            else translate("📤 Shared: it is public now.", locale)
        ]
        if job.share_channel_id and job.share_message_id and job.guild_id:
            lines.append(
                translate(
                    "In {channel}: {url}",
                    locale,
                    channel=f"<#{job.share_channel_id}>",
                    url=f"https://discord.com/channels/{job.guild_id}/{job.share_channel_id}/"
                    f"{job.share_message_id}",
                )
            )
        if link:
            lines.append(translate("Share page (copy this link): {link}", locale, link=link))
        return "\n".join(lines)

    async def _post(
        self, channel_id: int, job: Job, images: list[Image], locale: discord.Locale | None
    ) -> int:
        channel = self._bot.get_channel(channel_id)
        try:
            if channel is None:
                channel = await self._bot.fetch_channel(channel_id)
            if not isinstance(channel, discord.abc.Messageable):
                raise UserError(N_("The gallery channel is not a text channel. Ask a moderator."))
            pictures = [
                picture
                for picture in [
                    await asyncio.to_thread(
                        _decode_tile, await self._bot.service.image_bytes(image)
                    )
                    for image in images
                ]
                if picture is not None
            ]
            if not pictures:
                raise UserError(N_("This job's images cannot be read any more."))
            file = await render_grid(job, pictures)
            model = (
                StoredRequest.loads(job.request).request.model or self._bot.registry.default_name
            )
            embed = discord.Embed(
                title=render.embed_title(job.prompt),
                description=translate(
                    "by {user} · `{model}` · {seeds}",
                    locale,
                    user=f"<@{job.user_id}>",
                    model=model,
                    seeds=render.seeds_text([image.seed for image in images], locale),
                ),
                colour=discord.Colour.gold(),
            )
            embed.set_image(url=f"attachment://{file.filename}")
            view = discord.ui.View(timeout=None)
            view.add_item(JobButton(Action.FAVOURITE, job.id, emoji="⭐"))
            view.add_item(JobButton(Action.INFO, job.id, emoji="ℹ"))
            message = await channel.send(
                embed=embed,
                file=file,
                view=view,
                allowed_mentions=discord.AllowedMentions.none(),  # credit without a ping
            )
        except (discord.Forbidden, discord.NotFound):
            raise UserError(
                N_(
                    "I cannot post in {channel}. A moderator can give me Send Messages, "
                    "Embed Links and Attach Files there, or choose another channel with "
                    "`/settings gallery-channel`."
                ),
                channel=f"<#{channel_id}>",
            ) from None
        return message.id

    async def remove_from_gallery(self, interaction: discord.Interaction[Any], job: Job) -> None:
        if interaction.guild_id is None or interaction.guild_id != job.guild_id:
            raise PermissionDenied(N_("Only this server's moderators can remove it."))
        permissions = interaction.permissions
        if not (permissions.manage_guild or permissions.manage_messages):
            raise PermissionDenied(
                N_("Only moderators (Manage Server or Manage Messages) can remove gallery entries.")
            )
        removed = await self._db.library.remove_from_gallery(job.id, interaction.user.id)
        if removed and job.share_channel_id and job.share_message_id:
            post = self._bot.get_partial_messageable(job.share_channel_id).get_partial_message(
                job.share_message_id
            )
            with contextlib.suppress(discord.HTTPException):
                await post.delete()  # already deleted by hand, or no permission: fine
        locale = reader_locale(interaction)
        await interaction.response.send_message(
            translate("🚫 Removed from this server's gallery (and its share page).", locale)
            if removed
            else translate("It was already out of the gallery.", locale),
            ephemeral=True,
        )


async def _send_shared(
    interaction: discord.Interaction[Any],
    text: str,
    link: str | None,
    locale: discord.Locale | None,
) -> None:
    if link is None:
        await interaction.followup.send(text, ephemeral=True)
        return
    view = discord.ui.View(timeout=None)
    label = translate("Open share page", locale)
    view.add_item(discord.ui.Button(label=label, url=link, emoji="🔗"))
    await interaction.followup.send(text, view=view, ephemeral=True)
