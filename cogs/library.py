"""/favorites and /history: a user's own images, paginated."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.views import MAX_SEARCH_BYTES, Pager
from core.errors import UserError

MAX_SEARCH_CHARS = 40  # carried in the page buttons' ids, which Discord caps at 100

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]


class Library(commands.Cog):
    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot

    async def _show(self, interaction: Interaction, kind: Pager, search: str | None = None) -> None:
        shown = await self.bot.pages.render(kind, interaction.user.id, 0, search=search)
        await interaction.response.send_message(
            shown.content, embeds=shown.embeds, view=shown.view, files=shown.files, ephemeral=True
        )

    @app_commands.command()
    async def favorites(self, interaction: Interaction) -> None:
        """Your favourite images."""
        await self._show(interaction, Pager.FAVOURITES)

    @app_commands.command()
    @app_commands.describe(search="Only prompts with these words (the last may be unfinished)")
    async def history(
        self,
        interaction: Interaction,
        search: app_commands.Range[str, 1, MAX_SEARCH_CHARS] | None = None,
    ) -> None:
        """Your recent generations, each with a button to run it again."""
        if search is not None and len(search.encode("utf-8")) > MAX_SEARCH_BYTES:
            raise UserError(
                "That search is too long to page through: use fewer words (at most "
                f"{MAX_SEARCH_BYTES} bytes, about 14 characters in Korean)."
            )
        await self._show(interaction, Pager.HISTORY, search)


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Library(bot))
