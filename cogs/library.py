"""/favorites and /history: a user's own images, paginated."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.views import Pager

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]


class Library(commands.Cog):
    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot

    async def _show(self, interaction: Interaction, kind: Pager) -> None:
        shown = await self.bot.pages.render(kind, interaction.user.id, 0)
        await interaction.response.send_message(
            shown.content, embeds=shown.embeds, view=shown.view, files=shown.files, ephemeral=True
        )

    @app_commands.command()
    async def favorites(self, interaction: Interaction) -> None:
        """Your favourite images."""
        await self._show(interaction, Pager.FAVOURITES)

    @app_commands.command()
    async def history(self, interaction: Interaction) -> None:
        """Your recent generations, each with a button to run it again."""
        await self._show(interaction, Pager.HISTORY)


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Library(bot))
