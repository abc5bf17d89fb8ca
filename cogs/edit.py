"""/edit region (repaint the part of your picture a mask marks), /edit adjust (crop, turn, tone
and filters, no model) and /params (run again from a PNG made by this bot or by the
AUTOMATIC1111 web UI)."""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image as PILImage

from bot import editing, render
from bot.actions import launch, post_edit
from bot.i18n import reader_locale, translate, translate_template
from cogs.imagine import read_upload, require_picture
from core import textguard
from core.errors import N_, Note, UserError, note
from engine import edits
from engine.errors import ValidationError
from engine.images import parse_parameters, read_png_parameters
from engine.types import GenerationRequest, Operation

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]
UPLOADED_PROMPT = "(your picture, edited)"


def _mask_png(picture: bytes, mask: bytes) -> tuple[bytes, bytes, tuple[int, int]]:
    with PILImage.open(io.BytesIO(picture)) as opened:
        image = opened.convert("RGB")
    with PILImage.open(io.BytesIO(mask)) as drawn:
        fitted = edits.user_mask(drawn, image.size)
    out = []
    for part in (image, fitted):
        buffer = io.BytesIO()
        part.save(buffer, format="PNG", compress_level=1)
        out.append(buffer.getvalue())
    return out[0], out[1], image.size


class Edit(commands.GroupCog, group_name="edit"):
    """Change a picture of yours."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="region")
    @app_commands.describe(
        image="The picture (PNG, JPEG or WebP)",
        mask="The same picture's area to repaint, painted white (or opaque) on black",
        prompt="What to put there",
        private="Only you will see the result",
        image_url="Or the picture at this https link",
    )
    async def region(
        self,
        interaction: Interaction,
        mask: discord.Attachment,
        prompt: app_commands.Range[str, 1, 1000],
        image: discord.Attachment | None = None,
        private: bool = False,
        image_url: app_commands.Range[str, 1, 2000] | None = None,
    ) -> None:
        """Repaint the part of your picture that your mask marks."""
        picture = await require_picture(self.bot, image, image_url)
        drawn = await read_upload(mask, self.bot.download_hosts)
        try:
            canvas, fitted, _ = await asyncio.to_thread(_mask_png, picture, drawn)
        except ValidationError as error:
            raise UserError(error.template, **error.values) from None
        except (OSError, ValueError):
            raise UserError(N_("The image or the mask is not a picture I can read.")) from None
        request = GenerationRequest(
            prompt=textguard.clean(prompt),
            operation=Operation.INPAINT,
            count=1,
            init_image=canvas,
            mask_image=fitted,
            strength=editing.REGION_STRENGTH,
        )
        await launch(interaction, request, private=private)

    @app_commands.command(name="adjust")
    @app_commands.describe(
        image="The picture (PNG, JPEG or WebP)",
        crop="1:1, 16:9, 3:4... or a box: left top width height (%)",
        turn="90, 180, 270, horizontal, vertical",
        tone="Brightness contrast saturation; 1 is unchanged: 1.2 1 0.8",
        filter="grayscale, sepia, sharpen, blur, autocontrast",
        private="Only you will see the result",
        image_url="Or the picture at this https link",
    )
    @app_commands.choices(
        filter=[app_commands.Choice(name=f.value, value=f.value) for f in edits.Filter]
    )
    async def adjust(
        self,
        interaction: Interaction,
        image: discord.Attachment | None = None,
        crop: app_commands.Range[str, 1, 60] | None = None,
        turn: app_commands.Range[str, 1, 60] | None = None,
        tone: app_commands.Range[str, 1, 60] | None = None,
        filter: str | None = None,
        private: bool = False,
        image_url: app_commands.Range[str, 1, 2000] | None = None,
    ) -> None:
        """Crop, rotate, flip, change the tone or add a filter: no model, instant."""
        adjustments = editing.parse_adjustments(crop or "", turn or "", tone or "", filter or "")
        data = await require_picture(self.bot, image, image_url)
        await interaction.response.defer(ephemeral=private, thinking=True)
        description = adjustments.describe()
        request = GenerationRequest(prompt=UPLOADED_PROMPT, operation=Operation.IMG2IMG)
        try:
            png, picture = await asyncio.to_thread(
                editing.edited_png,
                data,
                adjustments,
                editing.edit_parameters(request, 0, "none", description),
            )
        except ValidationError as error:
            raise UserError(error.template, **error.values) from None
        except (OSError, ValueError):
            raise UserError(N_("That file is not a picture I can read.")) from None
        request = GenerationRequest(
            prompt=UPLOADED_PROMPT,
            operation=Operation.IMG2IMG,
            width=picture.width,
            height=picture.height,
            seed=0,
        )
        await post_edit(
            interaction, request, png, picture, 0, description, private=private, parent=None
        )


class Params(commands.Cog):
    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot

    @app_commands.command()
    @app_commands.describe(
        image="A PNG made by this bot or by the AUTOMATIC1111 web UI",
        run="Show its settings (default), run it again with its seed, or with a new one",
        image_url="Or the PNG at this https link",
    )
    @app_commands.choices(
        run=[
            app_commands.Choice(name="show the settings", value="show"),
            app_commands.Choice(name="again, same seed", value="again"),
            app_commands.Choice(name="again, new seed", value="new"),
        ]
    )
    async def params(
        self,
        interaction: Interaction,
        image: discord.Attachment | None = None,
        run: str = "show",
        image_url: app_commands.Range[str, 1, 2000] | None = None,
    ) -> None:
        """Read the settings a PNG was made with, and run them again."""
        data = await require_picture(self.bot, image, image_url)
        text = await asyncio.to_thread(read_png_parameters, data)
        if not text:
            raise UserError(
                N_(
                    "That picture carries no generation settings: use a PNG made by this bot "
                    "or by the AUTOMATIC1111 web UI, as it was saved (Discord's previews drop "
                    "them)."
                )
            )
        parsed = parse_parameters(text)
        known = {spec.name for spec in self.bot.registry.specs()}
        model = parsed.model if parsed.model in known else None
        locale = reader_locale(interaction)
        notes: list[Note] = []
        if parsed.model and model is None:
            notes.append(
                note(
                    N_("The model `{model}` is not here: using `{default}`."),
                    model=render.clip(parsed.model, 60),
                    default=self.bot.registry.default_name,
                )
            )
        default = translate("default", locale)
        lines = [
            translate(
                "**Prompt:** {prompt}", locale, prompt=render.clip(parsed.prompt, 1000) or "—"
            ),
            translate(
                "**Negative prompt:** {negative}",
                locale,
                negative=render.clip(parsed.negative_prompt, 300) or "—",
            ),
            translate(
                "**Steps:** {steps} · **Sampler:** {sampler} · **CFG scale:** {cfg} · "
                "**Seed:** {seed} · **Size:** {size} · **Model:** {model}",
                locale,
                steps=parsed.steps or default,
                sampler=parsed.sampler or default,
                cfg=parsed.cfg_scale if parsed.cfg_scale is not None else default,
                seed=parsed.seed if parsed.seed is not None else translate("random", locale),
                size=f"{parsed.width or '?'}×{parsed.height or '?'}",
                model=render.clip(parsed.model or default, 60),
            ),
            *(translate_template(each, locale) for each in notes),
        ]
        if run == "show":
            lines.append(
                translate("Run it again with `/params run:again` (same seed) or `run:new`.", locale)
            )
            await interaction.response.send_message(
                render.clip("\n".join(lines), render.CONTENT_LIMIT), ephemeral=True
            )
            return
        if not parsed.prompt.strip():
            raise UserError(N_("That picture's settings have no prompt to run."))
        scheduler = parsed.scheduler
        if parsed.sampler and scheduler is None:
            notes.append(
                note(
                    N_("The sampler {sampler} is not here: using the model's own."),
                    sampler=parsed.sampler,
                )
            )
        request = GenerationRequest(
            prompt=textguard.clean(parsed.prompt),
            negative_prompt=textguard.clean(parsed.negative_prompt),
            model=model,
            count=1,
            steps=parsed.steps,
            guidance=parsed.cfg_scale,
            width=parsed.width,
            height=parsed.height,
            scheduler=scheduler,
            seed=parsed.seed if run == "again" else None,
        )
        await launch(interaction, request, notes=tuple(notes))


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Edit(bot))
    await bot.add_cog(Params(bot))
