"""Your account: /apikey, a personal key for the HTTP API that acts as you (so the API shares
your history, favourites and quota with Discord); /export, your data to take away; /forget,
which deletes it; /remix, your remix mode."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import UPLOAD_LIMIT
from bot.i18n import reader_locale, translate
from bot.views import forget_view
from core.export import MANIFEST, export_user

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]

MAX_ACTIVE_KEYS = 5


class ApiKeys(commands.GroupCog, group_name="apikey"):
    """Your key for the HTTP API."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]
        # Private answers, after a database write: acknowledge inside Discord's 3 s first.
        await interaction.response.defer(ephemeral=True, thinking=True)
        return True

    @app_commands.command(name="create")
    async def create(self, interaction: Interaction) -> None:
        """Make a key for the HTTP API that acts as you (shown to you once)."""
        keys = self.bot.service.db.api_keys
        locale = reader_locale(interaction)
        active = [key for key in await keys.for_user(interaction.user.id) if key.active]
        if len(active) >= MAX_ACTIVE_KEYS:
            await interaction.followup.send(
                translate(
                    "You already have {count} keys. Revoke them with `/apikey revoke` first.",
                    locale,
                    count=len(active),
                ),
                ephemeral=True,
            )
            return
        _, secret = await keys.create(f"{interaction.user} (Discord)", user_id=interaction.user.id)
        settings = self.bot.settings
        where = (
            translate(
                "Your API key for {address}, shown only now: keep it secret.",
                locale,
                address=f"{settings.api_host}:{settings.api_port}",
            )
            if settings.api_port
            else translate(
                "Your API key (the HTTP API is off on this bot for now), shown only now: "
                "keep it secret.",
                locale,
            )
        )
        usage = translate(
            "Send it as `Authorization: Bearer <key>`. Jobs made with it count against your DM "
            "quota and appear in your /history. `/apikey revoke` turns it off.",
            locale,
        )
        await interaction.followup.send(f"{where}\n||`{secret}`||\n{usage}", ephemeral=True)

    @app_commands.command(name="revoke")
    async def revoke(self, interaction: Interaction) -> None:
        """Turn off every API key that acts as you, at once."""
        count = await self.bot.service.db.api_keys.revoke_all(interaction.user.id)
        locale = reader_locale(interaction)
        text = (
            translate(
                "Revoked keys: {count}. Requests with them are refused now.", locale, count=count
            )
            if count
            else translate("You have no active API keys.", locale)
        )
        await interaction.followup.send(text, ephemeral=True)


class YourData(commands.Cog):
    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot

    @app_commands.command()
    async def export(self, interaction: Interaction) -> None:
        """Get your images (PNGs with their settings) and your job list as zip files."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        locale = reader_locale(interaction)
        folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="dc-export-"))
        try:
            made = await export_user(
                self.bot.service.db,
                self.bot.service.images,
                interaction.user.id,
                folder,
                part_limit=UPLOAD_LIMIT,
            )
            if not made.parts:
                await interaction.followup.send(
                    translate("You have nothing to export yet.", locale), ephemeral=True
                )
                return
            for number, part in enumerate(made.parts, start=1):
                head = (
                    translate(
                        "Your data: {jobs} job(s), {images} image(s), in {parts} part(s). "
                        "The job list is `{manifest}` in the last part.",
                        locale,
                        jobs=made.jobs,
                        images=made.images,
                        parts=len(made.parts),
                        manifest=MANIFEST,
                    )
                    if number == 1
                    else translate(
                        "Part {number} of {parts}.", locale, number=number, parts=len(made.parts)
                    )
                )
                await interaction.followup.send(head, file=discord.File(part), ephemeral=True)
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)

    @app_commands.command()
    async def forget(self, interaction: Interaction) -> None:
        """Delete everything this bot keeps about you, in every server (asks first)."""
        jobs = await self.bot.service.db.jobs.history(interaction.user.id, limit=1)
        await interaction.response.send_message(
            translate(
                "This deletes, in every server and in DMs: your {jobs} job(s) and their "
                "images, your favourites, your remembered prompts and your API keys. It cannot "
                "be undone. (Moderators' limits on you, and today's image count, stay.)",
                reader_locale(interaction),
                jobs=jobs.total,
            ),
            view=forget_view(interaction.user.id, reader_locale(interaction)),
            ephemeral=True,
        )


class Preferences(commands.Cog):
    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot

    @app_commands.command()
    @app_commands.describe(mode="on: edit the prompt before each reroll, variation, zoom or pan")
    @app_commands.choices(
        mode=[
            app_commands.Choice(name="on", value="on"),
            app_commands.Choice(name="off", value="off"),
        ]
    )
    async def remix(self, interaction: Interaction, mode: str | None = None) -> None:
        """Remix mode: change the prompt when you reroll, vary, zoom or pan (or see if it is on)."""
        users = self.bot.service.db.users
        if mode is None:
            on = await users.remix(interaction.user.id)
        else:
            on = mode == "on"
            await users.set_remix(interaction.user.id, on)
        await interaction.response.send_message(
            translate(
                "🎛 Remix mode is **on**: rerolls, variations, zooms and pans first ask for the "
                "prompt.",
                reader_locale(interaction),
            )
            if on
            else translate(
                "🎛 Remix mode is **off**: buttons reuse the prompt as it was.",
                reader_locale(interaction),
            ),
            ephemeral=True,
        )


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(ApiKeys(bot))
    await bot.add_cog(YourData(bot))
    await bot.add_cog(Preferences(bot))
