"""/style: the styles offered here, and the server's own that moderators add and remove."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.actions import require_moderator
from core.errors import UserError
from core.storage.errors import InvalidInput
from core.styles import MAX_STYLES_PER_SERVER, check_style, normalise_name

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]


class Styles(commands.GroupCog, group_name="style"):
    """Styles for /imagine's style option."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="list")
    async def list_(self, interaction: Interaction) -> None:
        """The styles you can use here."""
        styles = await self.bot.service.styles(interaction.guild_id)
        lines = [
            f"• **{style.name}**{'' if style.builtin else ' (this server)'}: "
            f"`{render.clip(style.template, 120)}`"
            for style in styles
        ]
        await interaction.response.send_message(
            render.clip("\n".join(lines), render.CONTENT_LIMIT), ephemeral=True
        )

    @app_commands.command(name="add")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(
        name="The style's name (1 to 32 letters, digits, spaces, - or _)",
        template="The prompt around the user's, with {prompt} where theirs goes",
        negative="Added to the user's negative prompt",
    )
    async def add(
        self,
        interaction: Interaction,
        name: app_commands.Range[str, 1, 32],
        template: app_commands.Range[str, 1, 500],
        negative: app_commands.Range[str, 0, 500] = "",
    ) -> None:
        """Add (or replace) a style of this server."""
        require_moderator(interaction, "manage styles")
        assert interaction.guild_id is not None
        style = check_style(name, template, negative)
        try:
            new = await self.bot.service.db.guilds.save_style(
                interaction.guild_id,
                style.name,
                style.template,
                style.negative,
                added_by=interaction.user.id,
                limit=MAX_STYLES_PER_SERVER,
            )
        except InvalidInput as error:
            raise UserError(str(error)) from None
        verb = "Added" if new else "Replaced"
        await interaction.response.send_message(
            f"🎨 {verb} the style **{style.name}**: `{render.clip(style.template, 200)}`",
            ephemeral=True,
        )

    @app_commands.command(name="remove")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    async def remove(self, interaction: Interaction, name: app_commands.Range[str, 1, 32]) -> None:
        """Remove a style of this server."""
        require_moderator(interaction, "manage styles")
        assert interaction.guild_id is not None
        removed = await self.bot.service.db.guilds.remove_style(
            interaction.guild_id, normalise_name(name)
        )
        await interaction.response.send_message(
            f"Removed the style **{normalise_name(name)}**."
            if removed
            else "This server has no style of that name (built-in ones cannot be removed).",
            ephemeral=True,
        )


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Styles(bot))
