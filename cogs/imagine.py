"""/imagine and /queue: the commands everyone uses."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.actions import launch
from bot.i18n import reader_locale, translate
from core import downloads, textguard
from core.downloads import AllowedHost
from core.errors import N_, UserError
from core.prompts import ASPECTS, parse_inline
from engine.types import GenerationRequest, Operation

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]
MAX_PROMPT_CHARS = 1500  # far beyond what a text encoder reads; longer is almost always a paste
MAX_UPLOAD_BYTES = 10 * 2**20
# The download happens before the answer, which Discord wants within 3 s.
UPLOAD_READ_TIMEOUT_S = 1.5


async def read_upload(
    attachment: discord.Attachment,
    hosts: Iterable[AllowedHost] | None = None,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    timeout_s: float = UPLOAD_READ_TIMEOUT_S,
) -> bytes:
    """The attachment's bytes; the engine then checks that they really are an image.

    Fetched from ``hosts`` only (default: Discord's CDN), redirects checked hop by hop, and cut
    off as soon as ``max_bytes`` is passed whatever size the payload or the server declares.
    """
    if attachment.size > max_bytes:
        raise UserError(
            N_("`{name}` is {size} MiB; please attach an image under {most} MiB."),
            name=render.clip(attachment.filename, 60),
            size=f"{attachment.size / 2**20:.1f}",
            most=f"{max_bytes / 2**20:g}",
        )
    try:
        async with asyncio.timeout(timeout_s):
            return await downloads.fetch(attachment.url, hosts=hosts, max_bytes=max_bytes)
    except TimeoutError:
        raise UserError(N_("That image took too long to download; try a smaller file.")) from None
    except aiohttp.ClientError:
        raise UserError(N_("I could not download that attachment. Please try again.")) from None


async def read_picture(
    bot: DiffusionBot, image: discord.Attachment | None, image_url: str | None
) -> bytes | None:
    """The picture a command was given as an attachment or as a link (never both; None when
    neither). A link is fetched through ``core.downloads``' address checks."""
    if image is not None and image_url is not None:
        raise UserError(N_("Give a picture or a link to one, not both."))
    if image is not None:
        return await read_upload(image, bot.download_hosts)
    if image_url is None:
        return None
    return await downloads.image_from_link(
        image_url,
        max_bytes=MAX_UPLOAD_BYTES,
        timeout_s=UPLOAD_READ_TIMEOUT_S,
        allowed=bot.link_test_hosts,
    )


async def require_picture(
    bot: DiffusionBot, image: discord.Attachment | None, image_url: str | None
) -> bytes:
    picture = await read_picture(bot, image, image_url)
    if picture is None:
        raise UserError(N_("Attach a picture, or give a link to one with `image_url`."))
    return picture


class Imagine(commands.Cog):
    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot

    @app_commands.command()
    @app_commands.describe(
        prompt="What to draw. (word:1.3) stresses a word; --no, --ar 16:9, --seed, --steps work",
        negative="What to keep out of the picture",
        count="How many images (1 to 4)",
        seed="A number that makes the result repeatable",
        steps="Denoising steps (more is slower and often finer)",
        guidance="How closely to follow the prompt",
        aspect="The picture's shape",
        model="Which model to draw with",
        private="Only you will see the result",
        image="Start from this picture instead of noise (PNG, JPEG or WebP)",
        image_url="Or start from the picture at this https link",
        strength="With an image: how much to change it (0.05 keeps it, 1 ignores it)",
        style="A style around your prompt: photo, cinematic, anime... or this server's own",
        expand="With {a|b} choices or __wildcards__: every combination, or `count` random ones",
        lora="A LoRA to draw with (or write <lora:name:0.8> in the prompt)",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
        expand=[
            app_commands.Choice(name="every combination (4 at most)", value="all"),
            app_commands.Choice(name="random ones (as many as count)", value="random"),
        ],
    )
    async def imagine(
        self,
        interaction: Interaction,
        prompt: app_commands.Range[str, 1, 6000],
        negative: app_commands.Range[str, 0, 1000] | None = None,
        count: app_commands.Range[int, 1, 4] = 4,
        seed: app_commands.Range[int, 0, 4294967295] | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        guidance: app_commands.Range[float, 0.0, 30.0] | None = None,
        aspect: str | None = None,
        model: str | None = None,
        private: bool = False,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.05, 1.0] | None = None,
        style: app_commands.Range[str, 1, 32] | None = None,
        expand: str | None = None,
        lora: app_commands.Range[str, 1, 40] | None = None,
        image_url: app_commands.Range[str, 1, 2000] | None = None,
    ) -> None:
        """Draw images from a text prompt (and, optionally, a starting picture)."""
        # What is stored and shown: no NUL or other controls, no zero-width or bidi tricks.
        prompt = textguard.clean(prompt)
        negative = textguard.clean(negative) if negative else None
        if not textguard.has_visible(prompt):
            raise UserError(
                N_(
                    "Your prompt has no visible characters (only spaces or invisible ones). "
                    "Please describe what to draw in words."
                )
            )
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UserError(
                N_(
                    "That prompt is {length} characters long; please keep it under {most}. "
                    "Models read about 300 tokens (some 200 words) at most."
                ),
                length=f"{len(prompt):,}",
                most=f"{MAX_PROMPT_CHARS:,}",
            )
        inline = parse_inline(prompt)
        if not inline.prompt.strip():
            raise UserError(N_("Please describe what to draw."))
        if model is not None and model not in self.bot.registry.names():
            raise UserError(
                N_("There is no model called `{name}`. Pick one from the list."),
                name=render.clip(model, 50),
            )
        init_image = await read_picture(self.bot, image, image_url)
        if strength is not None and init_image is None:
            raise UserError(N_("`strength` only applies when you give an image."))
        negatives = [n for n in (negative, inline.negative) if n]
        request = GenerationRequest(
            prompt=inline.prompt,
            model=model,
            negative_prompt=", ".join(negatives),
            count=count,
            steps=steps if steps is not None else inline.steps,
            guidance=guidance,
            aspect=aspect or inline.aspect,
            seed=seed if seed is not None else inline.seed,
            operation=Operation.IMG2IMG if init_image is not None else Operation.TXT2IMG,
            init_image=init_image,
            strength=strength if init_image is not None else None,
            loras=((lora, None),) if lora else (),
        )
        await launch(
            interaction,
            request,
            private=private,
            notes=inline.notes,
            style=style,
            expand="random" if expand == "random" else None,
        )

    @imagine.autocomplete("model")
    async def model_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        _, offered = await self.bot.service.server_models(interaction.guild_id)
        return model_choices(self.bot, current, offered)

    @imagine.autocomplete("lora")
    async def lora_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        registry = self.bot.registry
        model = getattr(interaction.namespace, "model", None)
        family = registry.get(model).family if model is None or model in registry else None
        wanted = current.strip().lower()
        return [
            app_commands.Choice(
                name=render.clip(f"{lora.name} — {lora.description or lora.family.value}", 100),
                value=lora.name,
            )
            for lora in registry.loras(family)
            if wanted in lora.name.lower()
        ][:25]

    @imagine.autocomplete("style")
    async def style_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        styles = await self.bot.service.styles(interaction.guild_id)
        wanted = current.strip().lower()
        return [
            app_commands.Choice(name=render.clip(f"{s.name} — {s.template}", 100), value=s.name)
            for s in styles
            if wanted in s.name
        ][:25]

    @imagine.autocomplete("prompt")
    async def prompt_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        prompts = await self.bot.service.db.history.suggestions(
            interaction.user.id, interaction.guild_id, current
        )
        if not current.strip() and interaction.guild_id is not None:
            # Nothing typed yet: this week's trending prompts here come first.
            since = discord.utils.utcnow() - dt.timedelta(days=7)
            used, starred = await self.bot.service.db.library.trending(interaction.guild_id, since)
            trending = [prompt for prompt, _, _ in (*used, *starred)]
            prompts = list(dict.fromkeys([*trending, *prompts]))
        # A choice's value is limited to 100 characters: a longer prompt would arrive cut.
        choices = [
            app_commands.Choice(name=prompt, value=prompt)
            for prompt in prompts
            if prompt.strip() and len(prompt) <= 100
        ]
        return choices[:25]

    @app_commands.command()
    async def queue(self, interaction: Interaction) -> None:
        """Show how busy the image queue is and where your jobs are."""
        entries = self.bot.service.engine.queue_snapshot()
        mine = [e for e in entries if e.user_id == str(interaction.user.id)]
        waiting = sum(1 for e in entries if e.position > 0)
        running = len(entries) - waiting
        locale = reader_locale(interaction)
        lines = [
            translate(
                "**{running}** generating now, **{waiting}** waiting.",
                locale,
                running=running,
                waiting=waiting,
            )
        ]
        for entry in mine:
            where = (
                translate("generating now", locale)
                if entry.position == 0
                else translate("position {position}", locale, position=entry.position)
            )
            eta = (
                ""
                if entry.eta_s is None
                else translate(
                    ", ready in about {duration}",
                    locale,
                    duration=render.duration(entry.eta_s, locale),
                )
            )
            lines.append(
                translate(
                    "• `{job}` ({images} images): {where}{eta}",
                    locale,
                    job=entry.job_id,
                    images=entry.images,
                    where=where,
                    eta=eta,
                )
            )
        if not mine:
            lines.append(translate("You have no jobs in the queue.", locale))
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @app_commands.command()
    async def models(self, interaction: Interaction) -> None:
        """List the models you can draw with."""
        locale = reader_locale(interaction)
        default, offered = await self.bot.service.server_models(interaction.guild_id)
        lines = [
            f"• `{spec.name}` ({spec.family.value}) — {render.clip(spec.description, 150)}"
            + (translate(" · **the default here**", locale) if spec.name == default else "")
            for spec in self.bot.registry.specs()
            if spec.name in offered
        ]
        loras = self.bot.registry.loras()
        if loras:
            lines.append(
                translate(
                    "**LoRAs** (the `lora` option, or `<lora:name:0.8>` in a prompt):", locale
                )
            )
            lines += [
                f"• `{lora.name}` ({lora.family.value}, "
                + translate("weight {weight}", locale, weight=f"{lora.weight:g}")
                + (
                    ", " + translate("trigger: {words}", locale, words=", ".join(lora.triggers))
                    if lora.triggers
                    else ""
                )
                + f") — {render.clip(lora.description, 120)}"
                for lora in loras
            ]
        await interaction.response.send_message(
            render.clip("\n".join(lines), render.CONTENT_LIMIT), ephemeral=True
        )


def model_choices(
    bot: DiffusionBot, current: str, offered: Iterable[str] | None = None
) -> list[app_commands.Choice[str]]:
    """The registry's models (those ``offered``, when given) whose name or description holds
    what was typed so far."""
    names = None if offered is None else set(offered)
    choices = []
    for spec in bot.registry.specs():
        if names is not None and spec.name not in names:
            continue
        label = f"{spec.name} — {spec.description}"
        if current.lower() in label.lower():
            choices.append(app_commands.Choice(name=render.clip(label, 100), value=spec.name))
    return choices[:25]


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Imagine(bot))
