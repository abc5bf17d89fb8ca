"""/history, /favorites and /gallery: search, filters and sort over the library, shown as
numbered contact sheets (``bot.library``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n import reader_locale
from cogs.imagine import model_choices
from core.library import OPERATIONS, build_query
from core.storage.records import JobStatus, LibraryScope, LibrarySort

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]
Search = app_commands.Range[str, 1, 100]
Moment = app_commands.Range[str, 1, 40]

OPERATION_CHOICES = [app_commands.Choice(name=name, value=name) for name in OPERATIONS]
STATUS_CHOICES = [
    app_commands.Choice(name=status.value, value=status.value) for status in JobStatus
]
SORT_CHOICES = [
    app_commands.Choice(name="newest first", value=LibrarySort.NEWEST.value),
    app_commands.Choice(name="oldest first", value=LibrarySort.OLDEST.value),
    app_commands.Choice(name="most favourited", value=LibrarySort.MOST_FAVOURITED.value),
]
FILTERS = {
    "search": "Only prompts with these words (the last may be unfinished)",
    "model": "Only results of this model",
    "operation": "Only this kind of job (txt2img, upscale, variation...)",
    "since": "From this date: 2026-11-30, today, yesterday, or an age such as 7d, 2w, 3m",
    "until": "Up to and including this date (same forms as since)",
    "sort": "Order (newest first unless you choose)",
}


class Library(commands.Cog):
    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot

    async def _show(
        self,
        interaction: Interaction,
        scope: LibraryScope,
        *,
        search: str | None,
        model: str | None,
        operation: str | None,
        since: str | None,
        until: str | None,
        sort: str | None,
        status: str | None = None,
        favourites_only: bool = False,
    ) -> None:
        query = build_query(
            discord.utils.utcnow(),
            search=search,
            model=model,
            operation=operation,
            status=status,
            since=since,
            until=until,
            favourites_only=favourites_only,
            sort=sort,
        )
        # Reading thumbnails and drawing the sheet can pass Discord's 3 s on a busy machine.
        await interaction.response.defer(ephemeral=True, thinking=True)
        shown = await self.bot.library.first_page(
            scope, interaction.user.id, interaction.guild_id, query, reader_locale(interaction)
        )
        await interaction.followup.send(
            embeds=shown.embeds, view=shown.view, files=shown.files, ephemeral=True
        )

    @app_commands.command()
    @app_commands.describe(
        **FILTERS,
        status="Only jobs that ended so (done, failed, cancelled) or are queued or running",
        favourites="Only jobs with an image you starred",
    )
    @app_commands.choices(operation=OPERATION_CHOICES, status=STATUS_CHOICES, sort=SORT_CHOICES)
    async def history(
        self,
        interaction: Interaction,
        search: Search | None = None,
        model: str | None = None,
        operation: str | None = None,
        status: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        favourites: bool = False,
        sort: str | None = None,
    ) -> None:
        """Your generations, in every server and DM: search, filter, open, run again."""
        await self._show(
            interaction,
            LibraryScope.HISTORY,
            search=search,
            model=model,
            operation=operation,
            status=status,
            since=since,
            until=until,
            favourites_only=favourites,
            sort=sort,
        )

    @app_commands.command()
    @app_commands.describe(**FILTERS)
    @app_commands.choices(operation=OPERATION_CHOICES, sort=SORT_CHOICES)
    async def favorites(
        self,
        interaction: Interaction,
        search: Search | None = None,
        model: str | None = None,
        operation: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        sort: str | None = None,
    ) -> None:
        """The images you starred, newest star first."""
        await self._show(
            interaction,
            LibraryScope.FAVOURITES,
            search=search,
            model=model,
            operation=operation,
            since=since,
            until=until,
            sort=sort,
        )

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.describe(**FILTERS, favourites="Only results you starred")
    @app_commands.choices(operation=OPERATION_CHOICES, sort=SORT_CHOICES)
    async def gallery(
        self,
        interaction: Interaction,
        search: Search | None = None,
        model: str | None = None,
        operation: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        favourites: bool = False,
        sort: str | None = None,
    ) -> None:
        """This server's public results: newest, or most favourited."""
        await self._show(
            interaction,
            LibraryScope.GALLERY,
            search=search,
            model=model,
            operation=operation,
            since=since,
            until=until,
            favourites_only=favourites,
            sort=sort,
        )

    @history.autocomplete("model")
    @favorites.autocomplete("model")
    @gallery.autocomplete("model")
    async def model_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return model_choices(self.bot, current)

    @history.autocomplete("search")
    async def search_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """The user's own prompts, from everywhere (as /history lists), never anyone else's."""
        prompts = await self.bot.service.db.history.recent(interaction.user.id, current)
        return [
            app_commands.Choice(name=prompt, value=prompt)
            for prompt in prompts
            if prompt.strip() and len(prompt) <= 100
        ][:25]


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Library(bot))
