"""The discord.py client: extensions, persistent buttons, command sync, job tracking, errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from bot.actions import ButtonActions
from bot.delivery import JobReporter, MessageTarget, mark_delivered, show_stored_outcome
from bot.host import BotHost
from bot.i18n import CommandTranslator, locale_named, reader_locale, translate, translate_marked
from bot.library import Library
from bot.views import FavouritePicker, ForgetButton, JobButton, LibraryPageButton, PageButton
from core.errors import N_, StartupError, UserError
from core.jobcodec import StoredRequest

if TYPE_CHECKING:
    from core.config import Settings
    from core.feed import JobFeed
    from core.service import JobService
    from core.storage.records import Job
    from core.tracing import JobTracer
    from engine.registry import ModelRegistry

log = logging.getLogger(__name__)

EXTENSIONS = (
    "cogs.imagine",
    "cogs.quota",
    "cogs.library",
    "cogs.moderation",
    "cogs.account",
    "cogs.edit",
    "cogs.styles",
    "cogs.converse",
    "cogs.analyze",
    "cogs.safety",
)
BUTTONS = (JobButton, PageButton, LibraryPageButton, ForgetButton, FavouritePicker)

# The bot never joins voice, so discord.py's notices that voice libraries (PyNaCl, davey)
# are missing concern nobody who runs it.
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False


def point_discord_at(api_base_url: str, gateway_url: str) -> None:
    """Use this REST base and gateway (Discord's own by default, or a compatible proxy)."""
    discord.http.Route.BASE = api_base_url
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class DiffusionBot(BotHost):
    def __init__(
        self,
        settings: Settings,
        service: JobService,
        registry: ModelRegistry,
        *,
        metrics: Any = None,
        tracer: JobTracer | None = None,
    ) -> None:
        super().__init__(settings, service, registry, metrics=metrics, tracer=tracer)
        self.library = Library(self)
        self.actions = ButtonActions(self, self.library)
        self._tracked: dict[str, JobReporter] = {}
        self.gateway_connected = False
        self.synced_scopes: list[str] = []

    async def is_member(self, guild_id: int, user_id: int) -> bool:
        """Whether ``user_id`` is in the server ``guild_id`` (and the bot is too), asking
        Discord when the member is not cached: the bot has no members intent."""
        guild = self.get_guild(guild_id)
        if guild is None:
            return False
        if guild.get_member(user_id) is not None:
            return True
        try:
            await guild.fetch_member(user_id)
        except discord.NotFound:
            return False
        return True

    # --- start-up ------------------------------------------------------------------------

    async def serve(self, token: str) -> None:
        """Log in and run until closed. A token Discord refuses is a ``StartupError``."""
        async with self:
            try:
                await self.start(token)
            except discord.LoginFailure:
                raise StartupError(
                    "Discord refused the token: check DISCORD_TOKEN (Bot > Reset Token)."
                ) from None

    async def setup_hook(self) -> None:
        self.add_dynamic_items(*BUTTONS)
        self.tree.error(self.on_app_command_error)
        await self.tree.set_translator(CommandTranslator())
        for extension in EXTENSIONS:
            try:
                await self.load_extension(extension)
            except Exception:
                log.exception("extension %s failed to load; its commands are missing", extension)
        await self.sync_commands_if_changed()
        await self.resume_unfinished()

    async def on_message(self, message: discord.Message, /) -> None:
        """No prefix commands: a message that mentions the bot is a conversation with one of
        its results (cogs.converse), not a command to parse."""

    async def sync_commands_if_changed(self) -> None:
        """Sync only when the definitions differ from what was last synced (Discord rate-limits
        command sync, and a restart loop must not burn through it)."""
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        scope = f"guild:{guild.id}" if guild else "global"
        # As sent: with their Korean names and descriptions, so a new translation syncs.
        translator = CommandTranslator()
        definitions = [
            await command.get_translated_payload(self.tree, translator)
            for command in self.tree.get_commands(guild=guild)
        ]
        digest = hashlib.sha256(
            json.dumps(
                {"app": self.application_id, "commands": definitions}, sort_keys=True
            ).encode()
        ).hexdigest()
        state_file = self.settings.data_dir / "command-sync.json"
        state: dict[str, str] = {}
        if state_file.is_file():
            try:
                state = json.loads(state_file.read_text())
            except ValueError:
                state = {}
        names = {definition["name"] for definition in definitions}
        if state.get(scope) == digest and await self._registered_names(guild) == names:
            log.info("commands unchanged (%s); not syncing", scope)
            return
        await self.tree.sync(guild=guild)
        self.synced_scopes.append(scope)
        state[scope] = digest
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state))
        log.info("synced %d commands (%s)", len(definitions), scope)

    async def _registered_names(self, guild: discord.abc.Snowflake | None) -> set[str] | None:
        """The command names Discord holds: the state file alone cannot know that someone
        removed them (or that this is another application or Discord-compatible service)."""
        try:
            return {command.name for command in await self.tree.fetch_commands(guild=guild)}
        except discord.HTTPException:
            return None

    async def resume_unfinished(self) -> None:
        outcome = await self.service.db.jobs.resume_unfinished(sources={"discord"})
        for job in outcome.resumed:
            try:
                feed = await self.service.resubmit(job)
            except Exception as error:
                log.warning("job %s could not be resumed: %s", job.id, error)
                failed = await self.service.db.jobs.mark_failed(
                    job.id, N_("Could not resume after a restart.")
                )
                self._in_background(
                    self._tell_failed(
                        failed,
                        N_(
                            "❌ This job could not be resumed. Its images were given back to "
                            "your quota; please try again."
                        ),
                    )
                )
                continue
            self.track(job, feed, role_ids=StoredRequest.loads(job.request).role_ids)
        for job in outcome.abandoned:
            self._in_background(
                self._tell_failed(
                    job,
                    N_(
                        "❌ This job failed after several restarts. Its images were given back "
                        "to your quota; please try again."
                    ),
                )
            )
        for job in outcome.undelivered:
            # Finished before the restart, but never shown: shown now, from storage.
            self._in_background(self._show_stored(job))
        if outcome.resumed or outcome.undelivered:
            log.info(
                "resumed %d unfinished jobs; showing %d finished ones",
                len(outcome.resumed),
                len(outcome.undelivered),
            )

    async def _show_stored(self, job: Job) -> None:
        try:
            await show_stored_outcome(self, job)
        except discord.HTTPException:
            log.info("job %s: could not show its stored outcome", job.id)

    async def _tell_failed(self, job: Job, text: str) -> None:
        """``text``: an English text marked with ``N_``, shown in the job's language."""
        target = MessageTarget(self, job)
        target.answered(job.message_id)
        locale = locale_named(StoredRequest.loads(job.request).locale)
        try:
            await target.edit(
                content=translate_marked(text, locale),
                embed=None,
                attachments=[],
                view=None,
            )
        except discord.HTTPException:
            log.info("job %s: could not tell the user it failed", job.id)
            return
        await mark_delivered(self, job)

    async def on_ready(self) -> None:
        self.gateway_connected = True
        log.info("connected as %s to %d servers", self.user, len(self.guilds))

    async def on_resumed(self) -> None:
        self.gateway_connected = True

    async def on_disconnect(self) -> None:
        self.gateway_connected = False

    async def close(self) -> None:
        # The composition root stops the engine first: jobs followed here see it stop, and
        # stay recorded as unfinished for the next start.
        for task in list(self._reporters):
            task.cancel()
        await super().close()

    # --- jobs ----------------------------------------------------------------------------

    def track(
        self,
        job: Job,
        feed: JobFeed,
        *,
        answered: bool = True,
        role_ids: tuple[int, ...] = (),
    ) -> JobReporter:
        """Follow a job to its end. With ``answered=False`` the reporter holds its first edit
        until ``reporter.target.answered(message_id)`` says where the message is."""
        target = MessageTarget(self, job)
        if answered:
            target.answered(job.message_id)
        reporter = JobReporter(
            self,
            job,
            feed,
            target,
            edit_interval=self.settings.progress_edit_interval_s,
            role_ids=role_ids,
        )
        self._tracked[job.id] = reporter
        task = asyncio.create_task(reporter.run(), name=f"job-{job.id}")
        self._reporters.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._reporters.discard(done)
            if self._tracked.get(job.id) is reporter:
                del self._tracked[job.id]

        task.add_done_callback(finished)
        return reporter

    def cancel_job(self, job_id: str) -> bool | None:
        """Cancel a job this process follows: True if cancelled, False if it already ended,
        None if it is not followed here (e.g. between a restart and its resume)."""
        reporter = self._tracked.get(job_id)
        if reporter is None:
            return None
        return reporter.feed.cancel()

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Every click gets an answer. discord.py routes a button to its handler only when
        the button is still on the message; one that is not (a stale Cancel on a message
        that has since become a result, or a crafted id) is routed here, and an id from
        another version of the bot gets an explanation instead of "This interaction failed"."""
        if interaction.type is not discord.InteractionType.component:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        for button in BUTTONS:
            match = button.__discord_ui_compiled_template__.fullmatch(custom_id)
            if match is None:
                continue
            if _is_on_message(interaction.message, custom_id):
                return  # discord.py calls its handler
            item = await button.from_custom_id(interaction, discord.ui.Button(), match)
            await item.callback(interaction)
            return
        await self._reply(
            interaction,
            translate(
                "This button no longer works. Please run the command again.",
                reader_locale(interaction),
            ),
        )

    async def on_app_command_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        locale = reader_locale(interaction)
        if isinstance(original, UserError):
            await self.reply_error(interaction, original)
        elif isinstance(error, app_commands.NoPrivateMessage):
            await self._reply(
                interaction, translate("This command only works in a server.", locale)
            )
        elif isinstance(error, app_commands.TransformerError):
            # e.g. a member who has left the server since the option was filled in
            await self._reply(
                interaction,
                translate(
                    "I couldn't use one of the options you gave. Please pick it again.", locale
                ),
            )
        elif isinstance(error, app_commands.MissingPermissions | app_commands.CheckFailure):
            await self._reply(
                interaction, translate("You don't have permission to use this command.", locale)
            )
        else:
            await self.reply_unexpected(interaction, original)


def _is_on_message(message: discord.Message | None, custom_id: str) -> bool:
    """Whether the clicked message carries a component with ``custom_id`` (discord.py's
    condition for dispatching it to a dynamic item)."""
    if message is None:
        return False
    for row in message.components:
        for component in getattr(row, "children", (row,)):
            if getattr(component, "custom_id", None) == custom_id:
                return True
    return False
