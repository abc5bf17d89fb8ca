"""/analyze: what is in a picture, as boxes drawn on it and a count per label (core.analysis),
with a Repaint and a Remove button per object found: an inpaint of the picture with that
object's box as the mask."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image as PILImage

from bot import editing, render
from bot.actions import launch
from bot.i18n import number, reader_locale, translate, translate_template
from bot.views import PREFIX
from cogs.imagine import require_picture
from core import textguard
from core.errors import N_, UserError
from engine import edits
from engine.detect import Detection
from engine.errors import EngineError
from engine.types import GenerationRequest, Operation

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]
MAX_LISTED = 15  # labels listed in the answer; the picture shows every box
MAX_EDITABLE = 10  # objects with buttons: two each, in four rows of five
REMOVE_PROMPT = "empty background, nothing there, seamless"
MARGIN = 0.08  # the mask reaches this share of the box beyond it, for the object's edges


class DetectionButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    # The picture (by its stored PNG's digest) and the box in pixels fit a custom_id.
    template=re.compile(
        rf"{PREFIX}:det:(?P<action>[rx]):(?P<digest>[0-9a-f]{{64}}):"
        r"(?P<box>\d{1,5}\.\d{1,5}\.\d{1,5}\.\d{1,5})"
    ),
):
    def __init__(
        self, action: str, digest: str, box: tuple[int, int, int, int], label: str
    ) -> None:
        self.action = action
        self.digest = digest
        self.box = box
        super().__init__(
            discord.ui.Button(
                label=label[:80],
                style=discord.ButtonStyle.secondary,
                custom_id=f"{PREFIX}:det:{action}:{digest}:{'.'.join(map(str, box))}",
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> DetectionButton:
        x0, y0, x1, y1 = (int(v) for v in match["box"].split("."))
        return cls(match["action"], match["digest"], (x0, y0, x1, y1), "")

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        locale = reader_locale(interaction)
        if self.action == "r":
            await interaction.response.send_modal(RepaintModal(self.digest, self.box, locale))
            return
        try:
            await repaint(interaction, self.digest, self.box, REMOVE_PROMPT)
        except UserError as error:
            await interaction.client.reply_error(interaction, error)


class RepaintModal(discord.ui.Modal):
    def __init__(
        self, digest: str, box: tuple[int, int, int, int], locale: discord.Locale | None
    ) -> None:
        super().__init__(title=translate("Repaint", locale), timeout=900)
        self.digest = digest
        self.box = box
        self.prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label=translate("What to put there", locale), custom_id="prompt", max_length=1000
        )
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        try:
            await repaint(interaction, self.digest, self.box, self.prompt.value)
        except UserError as error:
            await interaction.client.reply_error(interaction, error)


async def repaint(
    interaction: discord.Interaction[Any], digest: str, box: tuple[int, int, int, int], prompt: str
) -> None:
    """Inpaint the analysed picture inside ``box`` as ``prompt`` says."""
    picture = await interaction.client.service.analyzer.picture(digest)
    mask = await asyncio.to_thread(_box_mask, picture, box)
    request = GenerationRequest(
        prompt=textguard.clean(prompt),
        operation=Operation.INPAINT,
        count=1,
        init_image=picture,
        mask_image=mask,
        strength=editing.REGION_STRENGTH,
    )
    await launch(interaction, request)


def _box_mask(picture: bytes, box: tuple[int, int, int, int]) -> bytes:
    """The inpainting mask (PNG) of ``box`` on the picture, grown by ``MARGIN`` each way."""
    with PILImage.open(io.BytesIO(picture)) as opened:
        width, height = opened.size
    x0, y0, x1, y1 = box
    grow_x, grow_y = round((x1 - x0) * MARGIN), round((y1 - y0) * MARGIN)
    left, top = max(0, x0 - grow_x), max(0, y0 - grow_y)
    right, bottom = min(width, x1 + grow_x), min(height, y1 + grow_y)
    percent = (
        100 * left / width,
        100 * top / height,
        100 * (right - left) / width,
        100 * (bottom - top) / height,
    )
    buffer = io.BytesIO()
    edits.region_mask((width, height), edits.Region.BOX, percent).save(buffer, "PNG")
    return buffer.getvalue()


def detection_view(
    digest: str, detections: list[Detection], locale: discord.Locale | None
) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for number_, found in enumerate(detections[:MAX_EDITABLE], start=1):
        x0, y0, x1, y1 = (round(v) for v in found.box)
        box = (x0, y0, x1, y1)
        if box[2] - box[0] < 8 or box[3] - box[1] < 8:
            continue  # too small to repaint
        name = f"{render.clip(found.label, 30)} {number_}"
        repaint_label = translate("Repaint {label}", locale, label=name)
        remove_label = translate("Remove {label}", locale, label=name)
        view.add_item(DetectionButton("r", digest, box, repaint_label))
        view.add_item(DetectionButton("x", digest, box, remove_label))
    return view


class Analyze(commands.Cog):
    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        # Apps → Analyze on any message: a result of the bot's, or a message with a picture.
        self.menu = app_commands.ContextMenu(name="Analyze", callback=self.analyze_message)
        bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def analyze_message(self, interaction: Interaction, message: discord.Message) -> None:
        """What is in this message's picture: a result's first image, or its attachment."""
        analyzer = self.bot.service.analyzer
        if not analyzer.enabled:
            raise UserError(analyzer.disabled_reason)
        picture = await self._message_picture(interaction, message)
        await self._answer(interaction, picture, None)

    async def _message_picture(self, interaction: Interaction, message: discord.Message) -> bytes:
        service = self.bot.service
        job = await service.db.jobs.by_message(message.id)
        if job is not None:
            if job.private and job.user_id != interaction.user.id:
                raise UserError(N_("That result is private; only its owner sees it."))
            images = sorted(await service.job_images(job.id), key=lambda image: image.index)
            if images:
                return await service.image_bytes(images[0])
        attachment = next(
            (a for a in message.attachments if (a.content_type or "").startswith("image/")), None
        )
        if attachment is None:
            raise UserError(N_("That message has no picture to analyze."))
        return await require_picture(self.bot, attachment, None)

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
        if not analyzer.enabled:
            raise UserError(analyzer.disabled_reason)
        picture = await require_picture(self.bot, image, image_url)
        await self._answer(interaction, picture, threshold)

    async def _answer(
        self, interaction: Interaction, picture: bytes, threshold: float | None
    ) -> None:
        analyzer = self.bot.service.analyzer
        locale = reader_locale(interaction)
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
        if analysis.picture_id is not None:
            view = detection_view(analysis.picture_id, analysis.detections, locale)
            await interaction.followup.send(embed=embed, file=file, view=view)
        else:
            await interaction.followup.send(embed=embed, file=file)


async def setup(bot: DiffusionBot) -> None:
    bot.add_dynamic_items(DetectionButton)
    await bot.add_cog(Analyze(bot))
