"""/analyze: what is in a picture, as boxes drawn on it and a count per label (core.analysis)."""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.i18n import number, reader_locale, translate, translate_template
from cogs.imagine import require_picture
from core.errors import UserError
from engine.errors import EngineError

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]
MAX_LISTED = 15  # labels listed in the answer; the picture shows every box


class Analyze(commands.Cog):
    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot

    @app_commands.command()
    @app_commands.describe(
        image="The picture to look at (PNG, JPEG, WebP, GIF or BMP)",
        image_url="Or the picture at this https link",
        threshold="How sure a detection must be, from 0.05 to 1 (default 0.5)",
    )
    async def analyze(
        self,
        interaction: Interaction,
        image: discord.Attachment | None = None,
        image_url: str | None = None,
        threshold: app_commands.Range[float, 0.05, 1.0] | None = None,
    ) -> None:
        """Find the objects in a picture: boxes, labels and how many of each."""
        analyzer = self.bot.service.analyzer
        locale = reader_locale(interaction)
        if not analyzer.enabled:
            raise UserError(analyzer.disabled_reason)
        picture = await require_picture(self.bot, image, image_url)
        # A local model loads on first use, a service may be slow: answer within Discord's
        # three seconds, then follow up.
        await interaction.response.defer(thinking=True)
        try:
            analysis = await analyzer.analyze(picture, threshold)
        except (UserError, EngineError) as error:
            # The loading message is public; the refusal is the user's alone.
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            await interaction.followup.send(translate_template(error, locale), ephemeral=True)
            return
        if analysis.counts:
            lines = [
                f"**{render.clip(label, 40)}** × {number(count, locale)}"
                for label, count in analysis.counts[:MAX_LISTED]
            ]
            if len(analysis.counts) > MAX_LISTED:
                lines.append(
                    translate(
                        "…and {count} more kinds",
                        locale,
                        count=number(len(analysis.counts) - MAX_LISTED, locale),
                    )
                )
            description = "\n".join(lines)
        else:
            description = translate(
                "Nothing found with at least {threshold} certainty.",
                locale,
                threshold=f"{threshold if threshold is not None else analyzer.default_threshold:g}",
            )
        embed = discord.Embed(
            title=translate("What I see", locale), description=description, colour=0x3498DB
        )
        embed.set_image(url="attachment://analyzed.png")
        embed.set_footer(
            text=translate(
                "{count} objects · {width}x{height}",
                locale,
                count=number(len(analysis.detections), locale),
                width=analysis.width,
                height=analysis.height,
            )
        )
        file = discord.File(io.BytesIO(analysis.annotated_png), filename="analyzed.png")
        await interaction.followup.send(embed=embed, file=file)


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Analyze(bot))
