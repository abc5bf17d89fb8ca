"""/banned: the words this server does not allow in prompts. /settings: the server's gallery
channel and how long its images are kept. /model: the models this server offers and draws
with by default, and the models the bot's owners add for every server (/model add, remove)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.actions import require_moderator, require_owner
from bot.i18n import reader_locale, translate, translate_template
from bot.throttle import ThrottledEditor
from cogs.imagine import model_choices
from core.custom_models import AddedModel, CustomModels
from core.downloads import human_size
from core.errors import N_, UserError
from core.service import INTERACTION_TOKEN_LIFETIME
from core.storage.guilds import MAX_RETENTION_DAYS

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]
log = logging.getLogger(__name__)


def _words(text: str) -> list[str]:
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise UserError(N_("Give one or more words, separated by commas."))
    if any(len(w) > 100 for w in words):
        raise UserError(N_("Each banned word or phrase must be under 100 characters."))
    return words


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Banned(commands.GroupCog, group_name="banned"):
    """Words that may not appear in prompts here."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]
        require_moderator(
            interaction, N_("Only moderators with Manage Server can manage banned words.")
        )
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
        locale = reader_locale(interaction)
        await interaction.followup.send(
            translate("Now refusing: {words}.", locale, words=", ".join(f"`{w}`" for w in added))
            if added
            else translate("Now refusing: nothing new.", locale),
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
        locale = reader_locale(interaction)
        await interaction.followup.send(
            translate("Allowed again: {words}.", locale, words=", ".join(f"`{w}`" for w in removed))
            if removed
            else translate("Allowed again: none of those.", locale),
            ephemeral=True,
        )

    @app_commands.command(name="list")
    async def list_(self, interaction: Interaction) -> None:
        """Show the banned words."""
        words = await self.bot.service.db.guilds.banned_words(interaction.guild_id)
        text = (
            ", ".join(f"`{w}`" for w in words)
            if words
            else translate("No words are banned here.", reader_locale(interaction))
        )
        await interaction.followup.send(render.clip(text, render.CONTENT_LIMIT), ephemeral=True)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Settings(commands.GroupCog, group_name="settings"):
    """This server's settings for the bot."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]
        require_moderator(
            interaction, N_("Only moderators with Manage Server can change the bot's settings.")
        )
        await interaction.response.defer(ephemeral=True, thinking=True)
        return True

    @app_commands.command(name="gallery-channel")
    @app_commands.describe(channel="Where shared results go; leave empty to turn sharing off")
    async def gallery_channel(
        self,
        interaction: Interaction,
        channel: discord.TextChannel | None = None,
    ) -> None:
        """Choose the channel the Share button posts results to."""
        assert interaction.guild_id is not None
        if channel is not None and interaction.guild is not None:
            mine = channel.permissions_for(interaction.guild.me) if interaction.guild.me else None
            if mine is not None and not (mine.send_messages and mine.attach_files):
                raise UserError(
                    N_(
                        "I cannot post images in {channel}: give me Send Messages, Embed "
                        "Links and Attach Files there first."
                    ),
                    channel=channel.mention,
                )
        await self.bot.service.db.guilds.update_settings(
            interaction.guild_id, gallery_channel_id=None if channel is None else channel.id
        )
        locale = reader_locale(interaction)
        await interaction.followup.send(
            translate("📤 Shared results now go to {channel}.", locale, channel=channel.mention)
            if channel is not None
            else translate("Sharing to a channel is off in this server.", locale),
            ephemeral=True,
        )

    @app_commands.command(name="retention")
    @app_commands.describe(
        days="Days to keep this server's images (favourites stay); leave empty for the default"
    )
    async def retention(
        self,
        interaction: Interaction,
        days: app_commands.Range[int, 1, MAX_RETENTION_DAYS] | None = None,
    ) -> None:
        """How long this server's images are kept before the clean-up deletes them."""
        assert interaction.guild_id is not None
        await self.bot.service.db.guilds.update_settings(interaction.guild_id, retention_days=days)
        locale = reader_locale(interaction)
        await interaction.followup.send(
            translate(
                "🗓 This server's images are now kept {days} day(s), then deleted by the daily "
                "clean-up; favourited images stay until they are unfavourited.",
                locale,
                days=days,
            )
            if days is not None
            else translate(
                "🗓 This server's images are kept as long as the operator's clean-up default.",
                locale,
            ),
            ephemeral=True,
        )

    @app_commands.command(name="show")
    async def show(self, interaction: Interaction) -> None:
        """Show this server's settings."""
        settings = await self.bot.service.db.guilds.settings(interaction.guild_id)
        locale = reader_locale(interaction)
        channel = (
            f"<#{settings.gallery_channel_id}>"
            if settings.gallery_channel_id
            else translate("off", locale)
        )
        kept = (
            translate("{days} day(s)", locale, days=settings.retention_days)
            if settings.retention_days is not None
            else translate("the operator's default", locale)
        )
        await interaction.followup.send(
            translate(
                "**Gallery channel:** {channel}\n**Images kept:** {kept} (favourites stay)",
                locale,
                channel=channel,
                kept=kept,
            ),
            ephemeral=True,
        )


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class ServerModels(commands.GroupCog, group_name="model"):
    """The models this server offers, and the one it draws with by default."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]
        if interaction.type is discord.InteractionType.autocomplete:
            return True
        command = interaction.command
        if command is not None and command.name in OWNER_COMMANDS:
            require_owner(interaction, N_("Only the bot's owners can add or remove models."))
        else:
            require_moderator(
                interaction,
                N_("Only moderators with Manage Server can choose this server's models."),
            )
        await interaction.response.defer(ephemeral=True, thinking=True)
        return True

    def _known(self, name: str) -> str:
        if name not in self.bot.registry.names():
            raise UserError(
                N_("There is no model called `{name}`. Pick one from the list."),
                name=render.clip(name, 50),
            )
        return name

    @app_commands.command(name="default")
    @app_commands.describe(
        name="The model used here when a command names none; leave empty for the bot's default"
    )
    async def default(self, interaction: Interaction, name: str | None = None) -> None:
        """Choose the model /imagine and the buttons use in this server by default."""
        assert interaction.guild_id is not None
        guilds = self.bot.service.db.guilds
        if name is not None:
            self._known(name)
            if name in (await guilds.settings(interaction.guild_id)).disabled_models:
                raise UserError(
                    N_("`{name}` is turned off here: turn it on with `/model enable` first."),
                    name=name,
                )
        await guilds.update_settings(interaction.guild_id, default_model=name)
        locale = reader_locale(interaction)
        await interaction.followup.send(
            translate(
                "🎨 This server now draws with `{name}` when no model is chosen.", locale, name=name
            )
            if name is not None
            else translate(
                "🎨 This server now draws with the bot's default model, `{name}`.",
                locale,
                name=self.bot.registry.default_name,
            ),
            ephemeral=True,
        )

    @app_commands.command(name="enable")
    @app_commands.describe(name="A model of the bot's to offer here again")
    async def enable(self, interaction: Interaction, name: str) -> None:
        """Offer a model in this server again."""
        assert interaction.guild_id is not None
        self._known(name)
        guilds = self.bot.service.db.guilds
        disabled = (await guilds.settings(interaction.guild_id)).disabled_models
        await guilds.update_settings(
            interaction.guild_id, disabled_models=[other for other in disabled if other != name]
        )
        await interaction.followup.send(
            translate(
                "✅ `{name}` is offered in this server.", reader_locale(interaction), name=name
            ),
            ephemeral=True,
        )

    @app_commands.command(name="disable")
    @app_commands.describe(name="A model of the bot's not to offer here")
    async def disable(self, interaction: Interaction, name: str) -> None:
        """Stop offering a model in this server (its past results stay)."""
        assert interaction.guild_id is not None
        self._known(name)
        default, _ = await self.bot.service.server_models(interaction.guild_id)
        if name == default:
            raise UserError(
                N_(
                    "`{name}` is this server's default model: choose another default with "
                    "`/model default` first."
                ),
                name=name,
            )
        guilds = self.bot.service.db.guilds
        disabled = (await guilds.settings(interaction.guild_id)).disabled_models
        await guilds.update_settings(interaction.guild_id, disabled_models=[*disabled, name])
        await interaction.followup.send(
            translate(
                "🚫 `{name}` is no longer offered in this server; its past results stay.",
                reader_locale(interaction),
                name=name,
            ),
            ephemeral=True,
        )

    # --- models the bot's owners add for every server ----------------------------------

    def _custom_models(self) -> CustomModels:
        custom = self.bot.service.custom_models
        if custom is None:
            raise UserError(N_("Adding models is not available on this bot."))
        return custom

    @app_commands.command(name="add")
    @app_commands.describe(
        name="What the model is called here: letters, digits, '.', '_' or '-'",
        source="A Hugging Face hub id (owner/name), or an https link to a .safetensors file",
        config="A model of the bot's (or a hub id) whose configs a single file shares",
    )
    async def add(
        self,
        interaction: Interaction,
        name: app_commands.Range[str, 1, 40],
        source: app_commands.Range[str, 1, 1000],
        config: str | None = None,
    ) -> None:
        """Add a model for every server, from the hub or a link (the bot's owners only)."""
        custom = self._custom_models()
        locale = reader_locale(interaction)

        async def show(text: str) -> None:
            await interaction.edit_original_response(content=text)

        # The download can take minutes: its progress replaces the "thinking" message, paced
        # as job progress is, and the outcome (or the reason it failed) replaces that.
        editor: ThrottledEditor[str] = ThrottledEditor(
            show, self.bot.settings.progress_edit_interval_s
        )

        async def progress(done: int, total: int | None) -> None:
            if _answerable(interaction):
                editor.update(_progress_text(name, done, total, locale))

        try:
            added = await custom.add(
                name, source, added_by=interaction.user.id, config=config, on_progress=progress
            )
        except UserError as error:
            await _tell_outcome(interaction, editor, translate_template(error, locale))
            return
        finally:
            await editor.close()
        await _tell_outcome(interaction, editor, _added_text(added, locale))

    @app_commands.command(name="remove")
    @app_commands.describe(name="A model added with /model add")
    async def remove(self, interaction: Interaction, name: str) -> None:
        """Remove a model added with /model add (the bot's owners only)."""
        await self._custom_models().remove(name)
        await interaction.followup.send(
            translate(
                "🗑 `{name}` is removed from every server and its file deleted; its past "
                "results stay.",
                reader_locale(interaction),
                name=name,
            ),
            ephemeral=True,
        )

    @default.autocomplete("name")
    @enable.autocomplete("name")
    @disable.autocomplete("name")
    async def name_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return model_choices(self.bot, current)

    @add.autocomplete("config")
    async def config_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return model_choices(self.bot, current)

    @remove.autocomplete("name")
    async def custom_name_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return model_choices(self.bot, current, offered=self.bot.registry.custom_names())


OWNER_COMMANDS = frozenset({"add", "remove"})
# Edits through the interaction stop a little before its token expires.
ANSWER_WINDOW = INTERACTION_TOKEN_LIFETIME - dt.timedelta(minutes=1)


def _answerable(interaction: Interaction) -> bool:
    return discord.utils.utcnow() - interaction.created_at < ANSWER_WINDOW


async def _tell_outcome(interaction: Interaction, editor: ThrottledEditor[str], text: str) -> None:
    """The outcome in place of the progress, or, after a download longer than the
    interaction's 15 minutes, in a direct message (an ephemeral answer cannot be reached
    any other way)."""
    if _answerable(interaction):
        await editor.finish(text)
        return
    try:
        await interaction.user.send(text)
    except discord.HTTPException:
        log.warning("could not tell %s how /model add ended: %s", interaction.user.id, text)


def _progress_text(name: str, done: int, total: int | None, locale: discord.Locale | None) -> str:
    if total:
        return translate(
            "⬇️ Downloading `{name}`: {percent}% ({done} of {total})",
            locale,
            name=name,
            percent=min(100, done * 100 // total),
            done=human_size(done),
            total=human_size(total),
        )
    return translate(
        "⬇️ Downloading `{name}`: {done} so far", locale, name=name, done=human_size(done)
    )


def _added_text(added: AddedModel, locale: discord.Locale | None) -> str:
    record = added.record
    if record.kind == "hub":
        return translate(
            "✅ `{name}` ({family}) is added from the Hugging Face hub and offered in every "
            "server now; its weights download on first use. Try `/imagine model:{name}`.",
            locale,
            name=record.name,
            family=record.family,
        )
    return translate(
        "✅ `{name}` ({family}, {size}, SHA-256 `{sha}…`) is added and offered in every server "
        "now. Try `/imagine model:{name}`.",
        locale,
        name=record.name,
        family=record.family,
        size=human_size(record.size_bytes or 0),
        sha=added.short_sha256,
    )


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Banned(bot))
    await bot.add_cog(Settings(bot))
    await bot.add_cog(ServerModels(bot))
