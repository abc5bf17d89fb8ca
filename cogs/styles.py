"""/style: the styles offered here, and the server's own that moderators add and remove.
/wildcard: the server's value lists for __name__ in prompts.
/trending: the server's most used and most favourited prompts of the week, to use again."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.actions import require_moderator
from bot.i18n import reader_locale, translate
from bot.views import Action, JobButton
from core.errors import N_, UserError
from core.storage.errors import InvalidInput
from core.styles import MAX_STYLES_PER_SERVER, check_style, normalise_name
from core.wildcards import MAX_WILDCARDS_PER_SERVER, check_wildcard
from core.wildcards import normalise_name as wildcard_name

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]
TRENDING_DAYS = 7


class Styles(commands.GroupCog, group_name="style"):
    """Styles for /imagine's style option."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="list")
    async def list_(self, interaction: Interaction) -> None:
        """The styles you can use here."""
        styles = await self.bot.service.styles(interaction.guild_id)
        own = translate(" (this server)", reader_locale(interaction))
        lines = [
            f"• **{style.name}**{'' if style.builtin else own}: "
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
        require_moderator(interaction, N_("Only moderators with Manage Server can manage styles."))
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
        locale = reader_locale(interaction)
        shown = {"name": style.name, "template": render.clip(style.template, 200)}
        await interaction.response.send_message(
            translate("🎨 Added the style **{name}**: `{template}`", locale, **shown)
            if new
            else translate("🎨 Replaced the style **{name}**: `{template}`", locale, **shown),
            ephemeral=True,
        )

    @app_commands.command(name="remove")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    async def remove(self, interaction: Interaction, name: app_commands.Range[str, 1, 32]) -> None:
        """Remove a style of this server."""
        require_moderator(interaction, N_("Only moderators with Manage Server can manage styles."))
        assert interaction.guild_id is not None
        removed = await self.bot.service.db.guilds.remove_style(
            interaction.guild_id, normalise_name(name)
        )
        locale = reader_locale(interaction)
        await interaction.response.send_message(
            translate("Removed the style **{name}**.", locale, name=normalise_name(name))
            if removed
            else translate(
                "This server has no style of that name (built-in ones cannot be removed).", locale
            ),
            ephemeral=True,
        )


class Wildcards(commands.GroupCog, group_name="wildcard"):
    """Value lists that __name__ in a prompt draws from."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="list")
    @app_commands.guild_only()
    async def list_(self, interaction: Interaction) -> None:
        """This server's wildcards, for __name__ in a prompt."""
        found = await self.bot.service.wildcards(interaction.guild_id)
        if not found:
            text = translate(
                "This server has no wildcards yet; moderators add them with `/wildcard add`. "
                "`{red|blue} fox` choices work without any.",
                reader_locale(interaction),
            )
        else:
            text = "\n".join(
                f"• `__{name}__` ({len(values)}): {render.clip(', '.join(values), 150)}"
                for name, values in found.items()
            )
        await interaction.response.send_message(
            render.clip(text, render.CONTENT_LIMIT), ephemeral=True
        )

    @app_commands.command(name="add")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(
        name="Used in prompts as __name__ (1 to 32 letters, digits, - or _)",
        values="The values, separated by commas (up to 200)",
    )
    async def add(
        self,
        interaction: Interaction,
        name: app_commands.Range[str, 1, 36],
        values: app_commands.Range[str, 1, 4000],
    ) -> None:
        """Add (or replace) a wildcard of this server."""
        require_moderator(
            interaction, N_("Only moderators with Manage Server can manage wildcards.")
        )
        assert interaction.guild_id is not None
        checked_name, checked_values = check_wildcard(name, values)
        try:
            new = await self.bot.service.db.guilds.save_wildcard(
                interaction.guild_id,
                checked_name,
                checked_values,
                added_by=interaction.user.id,
                limit=MAX_WILDCARDS_PER_SERVER,
            )
        except InvalidInput as error:
            raise UserError(str(error)) from None
        locale = reader_locale(interaction)
        shown = {
            "name": checked_name,
            "count": len(checked_values),
            "values": render.clip(", ".join(checked_values), 300),
        }
        await interaction.response.send_message(
            translate(
                "Added the wildcard `__{name}__` with {count} values: {values}", locale, **shown
            )
            if new
            else translate(
                "Replaced the wildcard `__{name}__` with {count} values: {values}", locale, **shown
            ),
            ephemeral=True,
        )

    @app_commands.command(name="remove")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    async def remove(self, interaction: Interaction, name: app_commands.Range[str, 1, 36]) -> None:
        """Remove a wildcard of this server."""
        require_moderator(
            interaction, N_("Only moderators with Manage Server can manage wildcards.")
        )
        assert interaction.guild_id is not None
        wanted = wildcard_name(name)
        removed = await self.bot.service.db.guilds.remove_wildcard(interaction.guild_id, wanted)
        locale = reader_locale(interaction)
        await interaction.response.send_message(
            translate("Removed the wildcard `__{name}__`.", locale, name=wanted[:32])
            if removed
            else translate("This server has no wildcard of that name.", locale),
            ephemeral=True,
        )


class Trending(commands.Cog):
    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot

    @app_commands.command()
    @app_commands.guild_only()
    async def trending(self, interaction: Interaction) -> None:
        """This server's most used and most favourited prompts of the last 7 days."""
        assert interaction.guild_id is not None
        since = discord.utils.utcnow() - dt.timedelta(days=TRENDING_DAYS)
        used, starred = await self.bot.service.db.library.trending(interaction.guild_id, since)
        locale = reader_locale(interaction)
        if not used:
            await interaction.response.send_message(
                translate(
                    "Nothing public was made here in the last 7 days: be the first with /imagine.",
                    locale,
                ),
                ephemeral=True,
            )
            return
        view = discord.ui.View(timeout=None)
        lines = [translate("🔥 **Most used this week**", locale)]
        seen: set[str] = set()
        number = 0
        for heading, rows, unit in (
            (None, used, "×"),
            (translate("⭐ **Most favourited this week**", locale), starred, "⭐"),
        ):
            if heading and rows:
                lines.append(heading)
            for prompt, count, example in rows:
                number += 1
                lines.append(f"`{number}` {render.quoted_prompt(prompt, 120)} · {count}{unit}")
                if example and example not in seen and len(view.children) < 20:
                    seen.add(example)
                    view.add_item(
                        JobButton(
                            Action.REROLL,
                            example,
                            label=translate("Use {number}", locale, number=number),
                            row=len(view.children) // 5,
                        )
                    )
        await interaction.response.send_message(
            render.clip("\n".join(lines), render.CONTENT_LIMIT), view=view, ephemeral=True
        )


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Styles(bot))
    await bot.add_cog(Wildcards(bot))
    await bot.add_cog(Trending(bot))
