"""/banned: the words this server does not allow in prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.actions import require_moderator
from core.errors import UserError

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]


def _words(text: str) -> list[str]:
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise UserError("Give one or more words, separated by commas.")
    if any(len(w) > 100 for w in words):
        raise UserError("Each banned word or phrase must be under 100 characters.")
    return words


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Banned(commands.GroupCog, group_name="banned"):
    """Words that may not appear in prompts here."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]
        require_moderator(interaction, "manage banned words")
        # Every answer here is private, and a write may wait on a busy database: acknowledge
        # now, inside Discord's 3 s, and answer with a follow-up.
        await interaction.response.defer(ephemeral=True, thinking=True)
        return True

    @app_commands.command(name="add")
    @app_commands.describe(words="Words or phrases, separated by commas")
    async def add(self, interaction: Interaction, words: str) -> None:
        """Refuse prompts containing these words."""
        assert interaction.guild_id is not None
        added = await self.bot.service.db.guilds.add_banned_words(
            interaction.guild_id, _words(words), added_by=interaction.user.id
        )
        await interaction.followup.send(
            f"Now refusing: {', '.join(f'`{w}`' for w in added) or 'nothing new'}.",
            ephemeral=True,
        )

    @app_commands.command(name="remove")
    @app_commands.describe(words="Words or phrases, separated by commas")
    async def remove(self, interaction: Interaction, words: str) -> None:
        """Allow these words again."""
        assert interaction.guild_id is not None
        removed = await self.bot.service.db.guilds.remove_banned_words(
            interaction.guild_id, _words(words)
        )
        await interaction.followup.send(
            f"Allowed again: {', '.join(f'`{w}`' for w in removed) or 'none of those'}.",
            ephemeral=True,
        )

    @app_commands.command(name="list")
    async def list_(self, interaction: Interaction) -> None:
        """Show the banned words."""
        words = await self.bot.service.db.guilds.banned_words(interaction.guild_id)
        text = ", ".join(f"`{w}`" for w in words) if words else "No words are banned here."
        await interaction.followup.send(render.clip(text, render.CONTENT_LIMIT), ephemeral=True)


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Banned(bot))
