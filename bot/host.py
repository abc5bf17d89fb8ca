"""What the Discord adapter's parts (actions, delivery) need from the bot, apart from the
client that composes them: shared state, job events, replies to errors, background retries.

``DiffusionBot`` (``bot.client``) adds extensions, command sync and job tracking. The parts
take a ``BotHost`` so they need not import the client that imports them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import discord
from discord.ext import commands

from bot.i18n import reader_locale, translate, translate_template
from bot.views import ButtonHandler
from core import downloads
from core.errors import UserError, incident_id
from core.events import JobEvents
from core.service import store_when_possible
from core.storage.errors import DatabaseBusy
from engine.registry import upscale_limit
from engine.types import ResolvedRequest

if TYPE_CHECKING:
    from core.config import Settings
    from core.feed import JobFeed
    from core.service import JobService
    from core.storage.records import Job
    from core.tracing import JobTracer
    from engine.registry import ModelRegistry

log = logging.getLogger("bot")


def explain_unexpected(error: BaseException, locale: discord.Locale | None) -> str:
    """Log an error the user did not cause and say what they can do: wait for a busy
    database (a busy write is rolled back, nothing is lost), or quote the incident reference."""
    if isinstance(error, DatabaseBusy):
        log.warning("database busy: %s", error)
        return translate(
            "I'm busy right now (my database is locked). Please try again in a moment.", locale
        )
    ref = incident_id()
    log.error("unexpected error (ref %s)", ref, exc_info=error, extra={"incident": ref})
    return translate(
        "Something went wrong on our side. If it keeps happening, quote `{ref}`.", locale, ref=ref
    )


class AnswerTarget(Protocol):
    def answered(self, message_id: int | None) -> None: ...


class Followed(Protocol):
    """A job the bot follows to its end (a ``bot.delivery.JobReporter``)."""

    @property
    def target(self) -> AnswerTarget: ...


class BotHost(commands.Bot):
    actions: ButtonHandler

    def __init__(
        self,
        settings: Settings,
        service: JobService,
        registry: ModelRegistry,
        *,
        metrics: Any = None,
        tracer: JobTracer | None = None,
    ) -> None:
        # No privileged intents: slash commands and buttons need only the guilds intent; the
        # message intents bring replies that mention the bot, with their text (cogs.converse).
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents(guilds=True, guild_messages=True, dm_messages=True),
            help_command=None,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
        )
        self.settings = settings
        # Where attachments may be downloaded from: ATTACHMENT_HOSTS (Discord's CDN hosts by
        # default), and the REST base URL's own origin (see core.downloads.download_hosts).
        self.download_hosts = downloads.download_hosts(
            settings.attachment_hosts, settings.discord_api_base_url
        )
        self.link_test_hosts = downloads.allowed_hosts(settings.link_test_hosts)
        self.service = service
        self.registry = registry
        self.metrics = metrics
        self.events = JobEvents(metrics, tracer)
        self._reporters: set[asyncio.Task[None]] = set()

    def track(
        self,
        job: Job,
        feed: JobFeed,
        *,
        answered: bool = True,
        role_ids: tuple[int, ...] = (),
    ) -> Followed:
        """Follow a job to its end (see ``DiffusionBot.track``)."""
        raise NotImplementedError

    def cancel_job(self, job_id: str) -> bool | None:
        """Cancel a followed job (see ``DiffusionBot.cancel_job``)."""
        raise NotImplementedError

    def _in_background(self, work: Coroutine[Any, Any, None], name: str = "job-task") -> None:
        """Run ``work`` beside the bot, cancelled when it closes."""
        task = asyncio.create_task(work, name=name)
        self._reporters.add(task)
        task.add_done_callback(self._reporters.discard)

    def keep_trying(self, attempt: Callable[[], Awaitable[None]], job_id: str) -> None:
        """Retry a record that storage refuses now (disk full, database locked) with backoff
        until it takes it, so the outcome is recorded once storage is back."""

        self._in_background(store_when_possible(attempt, job_id), name=f"record-{job_id}")

    def can_upscale(self, request: ResolvedRequest) -> bool:
        return self.can_upscale_size(request.model, request.width * 2, request.height * 2)

    def can_upscale_size(self, model: str | None, width: int, height: int) -> bool:
        """Whether an upscale to ``width`` x ``height`` is within the model's reach (drawn
        in tiles beyond what it draws at once: see ``engine.registry.upscale_limit``)."""
        limit = self.upscale_limit(model)
        return limit is not None and max(width, height) <= limit

    def upscale_limit(self, model: str | None) -> int | None:
        try:
            spec = self.registry.get(model or self.registry.default_name)
        except Exception:
            return None
        return upscale_limit(spec.presets)

    # --- errors --------------------------------------------------------------------------

    async def reply_failure(
        self,
        interaction: discord.Interaction[Any],
        error: BaseException,
        *also_theirs: type[Exception],
    ) -> None:
        """Answer a failed interaction: a user's mistake (a ``UserError``, or one of
        ``also_theirs``) with its explanation, anything else with an incident reference."""
        if isinstance(error, UserError):
            await self.reply_error(interaction, error)
        elif also_theirs and isinstance(error, also_theirs):
            await self.reply_error(interaction, UserError(str(error)))
        else:
            await self.reply_unexpected(interaction, error)

    async def reply_error(self, interaction: discord.Interaction[Any], error: UserError) -> None:
        await self._reply(interaction, translate_template(error, reader_locale(interaction)))

    async def reply_unexpected(
        self, interaction: discord.Interaction[Any], error: BaseException
    ) -> None:
        await self._reply(interaction, explain_unexpected(error, reader_locale(interaction)))

    async def _reply(self, interaction: discord.Interaction[Any], text: str) -> None:
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not tell the user about an error", exc_info=True)
