"""/safety: what this server does with images the image check flags (outside channels
Discord marks age-restricted, where they are posted as they are), its audit log, and
releasing a held-back image."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.actions import require_moderator
from bot.i18n import reader_locale, translate
from core.errors import N_, UserError
from core.storage.records import FlagAction, SafetyAction, SafetyEntry, SafetyPolicy
from core.storage.safety import MAX_LOG_PAGE, AlreadyReleased, EntryNotFound, NotHeldBack

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]
ACTIONS = [
    app_commands.Choice(name="blur, as a spoiler", value="blur"),
    app_commands.Choice(name="block: hold back for a moderator", value="block"),
    app_commands.Choice(name="default", value="default"),
]


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Safety(commands.GroupCog, group_name="safety"):
    """The image check: blur or hold back flagged images, and review what it caught."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]
        require_moderator(
            interaction, N_("Only moderators with Manage Server can manage the image check.")
        )
        await interaction.response.defer(ephemeral=True, thinking=True)
        return True

    @app_commands.command(name="show")
    async def show(self, interaction: Interaction) -> None:
        """Show what happens here to images the image check flags."""
        assert interaction.guild_id is not None
        policy = await self.bot.service.db.safety.policy(interaction.guild_id)
        await interaction.followup.send(self._describe(policy, interaction), ephemeral=True)

    @app_commands.command(name="set")
    @app_commands.describe(
        action="Default: the server's action (for a channel), or block (for the server)",
        channel="Set it for this channel only; leave empty for the whole server",
    )
    @app_commands.choices(action=ACTIONS)
    async def set_action(
        self,
        interaction: Interaction,
        action: app_commands.Choice[str],
        channel: discord.TextChannel | discord.Thread | None = None,
    ) -> None:
        """Choose what happens to flagged images in this server or one channel."""
        assert interaction.guild_id is not None
        policy = await self.bot.service.db.safety.set_action(
            interaction.guild_id,
            None if action.value == "default" else SafetyAction(action.value),
            channel_id=None if channel is None else channel.id,
            by=interaction.user.id,
        )
        await interaction.followup.send(self._describe(policy, interaction), ephemeral=True)

    @app_commands.command(name="log")
    @app_commands.describe(count="How many of the latest entries to show (at most 20)")
    async def log(
        self, interaction: Interaction, count: app_commands.Range[int, 1, 20] = 10
    ) -> None:
        """The images the image check flagged here, newest first: who, what prompt, score."""
        assert interaction.guild_id is not None
        locale = reader_locale(interaction)
        entries = await self.bot.service.db.safety.log(
            interaction.guild_id, limit=min(count, MAX_LOG_PAGE)
        )
        if not entries:
            await interaction.followup.send(
                translate("The image check has flagged nothing in this server.", locale),
                ephemeral=True,
            )
            return
        embed = discord.Embed(
            title=translate("Image check log", locale),
            description="\n".join(_log_line(entry, locale) for entry in entries),
            colour=discord.Colour.orange(),
        )
        embed.set_footer(text=translate("Release a held-back image: /safety release", locale))
        await interaction.followup.send(embed=embed, ephemeral=True)

    @app_commands.command(name="release")
    @app_commands.describe(entry="The number of a held-back image in /safety log")
    async def release(self, interaction: Interaction, entry: app_commands.Range[int, 1]) -> None:
        """Give a held-back image to its owner (their history and buttons), and see it."""
        assert interaction.guild_id is not None
        locale = reader_locale(interaction)
        try:
            found, image = await self.bot.service.db.safety.release(
                entry, interaction.guild_id, by=interaction.user.id
            )
        except EntryNotFound:
            raise UserError(
                N_("There is no entry #{entry} in this server's image check log."), entry=entry
            ) from None
        except NotHeldBack:
            raise UserError(
                N_("Entry #{entry} was posted blurred; it was never held back."), entry=entry
            ) from None
        except AlreadyReleased:
            raise UserError(N_("Entry #{entry} was released already."), entry=entry) from None
        data = await self.bot.service.image_bytes(image)
        await interaction.followup.send(
            translate(
                "✅ Released #{entry}: <@{user}> now has it in /history, with its buttons.",
                locale,
                entry=entry,
                user=found.user_id,
            ),
            file=discord.File(
                io.BytesIO(data), f"{found.job_id}-{found.index + 1}.png", spoiler=True
            ),
            allowed_mentions=discord.AllowedMentions.none(),
            ephemeral=True,
        )

    def _describe(self, policy: SafetyPolicy, interaction: Interaction) -> str:
        locale = reader_locale(interaction)
        settings = self.bot.settings
        lines = [
            translate(
                "🔞 Image check: `{model}`, flags images scored {threshold} or more.",
                locale,
                model=settings.nsfw_model,
                threshold=f"{settings.nsfw_threshold:g}",
            )
            if settings.nsfw_model.lower() != "off"
            else translate("🔞 The image check is off on this bot (NSFW_MODEL=off).", locale),
            translate(
                "Channels Discord marks age-restricted: flagged images are posted as they are.",
                locale,
            ),
            translate(
                "Elsewhere in this server: {action}", locale, action=_action(policy.action, locale)
            ),
        ]
        lines += [
            translate(
                "In <#{channel}>: {action}", locale, channel=channel, action=_action(action, locale)
            )
            for channel, action in sorted(policy.channels.items())
        ]
        return "\n".join(lines)


def _action(action: SafetyAction, locale: discord.Locale | None) -> str:
    if action is SafetyAction.BLUR:
        return translate("blurred, as a spoiler", locale)
    return translate("held back for a moderator (not charged)", locale)


def _log_line(entry: SafetyEntry, locale: discord.Locale | None) -> str:
    if entry.action is FlagAction.BLURRED:
        what = translate("blurred", locale)
    elif entry.released_by is not None:
        what = translate("released by <@{moderator}>", locale, moderator=entry.released_by)
    else:
        what = translate("held back", locale)
    return (
        f"**#{entry.id}** · {render.discord_time(entry.created_at)} · <@{entry.user_id}> · "
        f"{entry.score:.2f} · {what}\n> {render.clip(entry.prompt, 120)}"
    )


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Safety(bot))
