"""/quota and /stats: moderators (Manage Server) manage limits and queue priority, and see how
the bot is used."""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.actions import member_role_ids, require_moderator
from bot.i18n import date, number, percent, reader_locale, translate, translate_marked
from core.charts import PERIOD_DAYS, period_range, usage_chart
from core.errors import N_, UserError
from core.storage import UNSET
from core.storage.records import Priority, QuotaScope
from core.storage.usage import merged, server_key

if TYPE_CHECKING:
    from bot.client import DiffusionBot

Interaction = discord.Interaction["DiffusionBot"]


def _limit(value: str | None) -> int | None:
    """'unlimited' or a whole number; None means unlimited."""
    if value is None or value.strip().lower() in {"unlimited", "none", "∞"}:
        return None
    try:
        number = int(value)
    except ValueError:
        raise UserError(
            N_("`{value}` is not a number or `unlimited`."), value=render.clip(value, 20)
        ) from None
    if number < 0:
        raise UserError(N_("A limit cannot be negative."))
    return number


def _shown(limit: int | None, locale: discord.Locale | None) -> str:
    return translate("unlimited", locale) if limit is None else str(limit)


def translate_priority(label: str, locale: discord.Locale | None) -> str:
    names = {
        "high": translate("high", locale),
        "normal": translate("normal", locale),
        "low": translate("low", locale),
    }
    return names.get(label, label)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Quota(commands.GroupCog, group_name="quota"):
    """Daily image limits and concurrent jobs."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]
        require_moderator(interaction, N_("Only moderators with Manage Server can manage quotas."))
        # Every answer here is private, and a write may wait on a busy database: acknowledge
        # now, inside Discord's 3 s, and answer with a follow-up.
        await interaction.response.defer(ephemeral=True, thinking=True)
        return True

    @app_commands.command(name="show")
    @app_commands.describe(user="Whose quota to show (default: yours)")
    async def show(self, interaction: Interaction, user: discord.Member | None = None) -> None:
        """Show a user's limits and today's usage."""
        assert interaction.guild_id is not None
        target = user or interaction.user
        usage = await self.bot.service.db.quotas.usage(
            interaction.guild_id, target.id, role_ids=member_role_ids(target)
        )
        locale = reader_locale(interaction)
        text = translate(
            "**{name}** — limits from {source} settings\n"
            "Images today: {used} of {daily} (resets {resets})\n"
            "Jobs at once: {active} of {concurrent}\n"
            "Queue priority: {priority}",
            locale,
            name=target.display_name,
            source=usage.policy.source.value,
            used=usage.used,
            daily=_shown(usage.daily_limit, locale),
            resets=render.discord_time(usage.resets_at),
            active=usage.active_jobs,
            concurrent=_shown(usage.concurrent_limit, locale),
            priority=translate_priority(usage.policy.priority.label, locale),
        )
        await interaction.followup.send(text, ephemeral=True)

    @app_commands.command(name="set")
    @app_commands.describe(
        role="Set the limits for everyone with this role",
        user="Set the limits for this user",
        daily_images="Images per day, or 'unlimited'",
        concurrent_jobs="Jobs at the same time, or 'unlimited'",
        priority="Queue plan: high-priority jobs run before normal ones, normal before low",
    )
    @app_commands.choices(
        priority=[app_commands.Choice(name=p.label, value=int(p)) for p in reversed(Priority)]
    )
    async def set_(
        self,
        interaction: Interaction,
        daily_images: str | None = None,
        concurrent_jobs: str | None = None,
        priority: app_commands.Choice[int] | None = None,
        role: discord.Role | None = None,
        user: discord.Member | None = None,
    ) -> None:
        """Set limits and queue priority for a role, a user, or (with neither) the server."""
        assert interaction.guild_id is not None
        if role is not None and user is not None:
            raise UserError(N_("Pick a role or a user, not both."))
        if role is not None and role.is_default():
            # @everyone is never among a member's roles: it means the server-wide default.
            scope, target, who = QuotaScope.GUILD, None, None
        elif role is not None:
            scope, target = QuotaScope.ROLE, role.id
            who = translate("the role {role}", reader_locale(interaction), role=role.name)
        elif user is not None:
            scope, target, who = QuotaScope.USER, user.id, user.display_name
        else:
            scope, target, who = QuotaScope.GUILD, None, None
        if daily_images is None and concurrent_jobs is None and priority is None:
            raise UserError(N_("Give `daily_images`, `concurrent_jobs`, `priority`, or several."))
        # Whatever is left out stays as it was (UNSET); a limit never becomes unlimited (None)
        # by omission.
        daily = UNSET if daily_images is None else _limit(daily_images)
        concurrent = UNSET if concurrent_jobs is None else _limit(concurrent_jobs)
        plan = UNSET if priority is None else Priority(priority.value)
        await self.bot.service.db.quotas.set_policy(
            interaction.guild_id,
            scope,
            target,
            daily_images=daily,
            concurrent_jobs=concurrent,
            priority=plan,
            updated_by=interaction.user.id,
        )
        locale = reader_locale(interaction)
        parts = []
        if daily is not UNSET:
            parts.append(translate("{count} images a day", locale, count=_shown(daily, locale)))
        if concurrent is not UNSET:
            parts.append(
                translate("{count} jobs at once", locale, count=_shown(concurrent, locale))
            )
        if plan is not UNSET:
            parts.append(
                translate(
                    "{priority} queue priority",
                    locale,
                    priority=translate_priority(plan.label, locale),
                )
            )
        if who is None:
            who = translate("everyone in this server", locale)
        await interaction.followup.send(
            translate("Limits for {who}: {limits}.", locale, who=who, limits=", ".join(parts)),
            ephemeral=True,
        )

    @app_commands.command(name="reset")
    @app_commands.describe(user="Whose usage today to forgive")
    async def reset(self, interaction: Interaction, user: discord.Member) -> None:
        """Give a user back today's images."""
        assert interaction.guild_id is not None
        forgiven = await self.bot.service.db.quotas.reset_usage(
            interaction.guild_id, user.id, reset_by=interaction.user.id
        )
        await interaction.followup.send(
            translate(
                "Gave {name} back {count} images for today.",
                reader_locale(interaction),
                name=user.display_name,
                count=forgiven,
            ),
            ephemeral=True,
        )


class Stats(commands.Cog):
    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(period="Today (default), the last 7 days or the last 30 days")
    @app_commands.choices(
        period=[app_commands.Choice(name=name, value=name) for name in PERIOD_DAYS]
    )
    async def stats(self, interaction: Interaction, period: str = "day") -> None:
        """This server's generations, people, speed, failures and feedback, with a chart."""
        require_moderator(interaction, N_("Only moderators with Manage Server can see statistics."))
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        first, last = period_range(period, discord.utils.utcnow().date())
        days = await self.bot.service.db.usage.days(first, last, server_key(interaction.guild_id))
        stats = merged(days)
        summary = stats.summary()
        active = stats.jobs - stats.done - stats.failed - stats.cancelled
        locale = reader_locale(interaction)
        first_day, last_day = date(first, locale), date(last, locale)
        span = {
            "day": translate("Today ({date}, since 00:00 UTC)", locale, date=last_day),
            "week": translate(
                "Last 7 days ({first} – {last})", locale, first=first_day, last=last_day
            ),
            "month": translate(
                "Last 30 days ({first} – {last})", locale, first=first_day, last=last_day
            ),
        }[period]

        def share(fraction: float | None) -> str:
            return percent(fraction, locale)

        def count(value: int) -> str:
            return number(value, locale)

        lines = [
            translate(
                "**{span}**: {jobs} jobs, {images} images",
                locale,
                span=span,
                jobs=count(stats.jobs),
                images=count(stats.images),
            ),
            translate(
                "Done {done} · failed {failed} · cancelled {cancelled} · in progress {active}",
                locale,
                done=count(stats.done),
                failed=count(stats.failed),
                cancelled=count(stats.cancelled),
                active=count(active),
            ),
            translate(
                "People: {people} · errors {errors} · cancelled {cancelled}",
                locale,
                people=count(stats.active_users),
                errors=share(stats.error_rate),
                cancelled=share(stats.cancel_rate),
            ),
            translate(
                "Request to result: median {median}, p95 {p95} (queue p95 {queue}, "
                "generation p95 {generation})",
                locale,
                median=render.duration(summary["total_p50_s"], locale),
                p95=render.duration(summary["total_p95_s"], locale),
                queue=render.duration(summary["wait_p95_s"], locale),
                generation=render.duration(summary["generation_p95_s"], locale),
            ),
            translate(
                "Advanced settings: {settings} · saved to favourites {favourited}",
                locale,
                settings=", ".join(
                    f"{name.replace('_', ' ')} {share(fraction)}"
                    for name, fraction in summary["advanced_share"].items()
                    if fraction
                )
                or "—",
                favourited=share(summary["favourited_share"]),
            ),
        ]
        if stats.from_buttons:
            lines.append(
                translate(
                    "Buttons: {uses}",
                    locale,
                    uses=", ".join(
                        f"{kind} {count(n)}" for kind, n in stats.from_buttons.most_common()
                    ),
                )
            )
        if stats.feedback_by_model:
            lines.append(
                translate(
                    "Feedback: {votes}",
                    locale,
                    votes=", ".join(
                        f"`{model}` 👍 {count(up)} 👎 {count(down)}"
                        for model, (up, down) in sorted(stats.feedback_by_model.items())
                    ),
                )
            )
        for reason, times in stats.failure_reasons.most_common(5):
            lines.append(f"• {count(times)}× {render.clip(translate_marked(reason, locale), 120)}")
        # The chart's own labels stay English: the bundled font has no Hangul.
        title = {"day": "Today", "week": "Last 7 days", "month": "Last 30 days"}[period]
        chart = await asyncio.to_thread(usage_chart, days, f"{title}: generations and p95")
        file = discord.File(io.BytesIO(chart), "stats.png")
        await interaction.followup.send(
            render.clip("\n".join(lines), render.CONTENT_LIMIT), file=file, ephemeral=True
        )


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Quota(bot))
    await bot.add_cog(Stats(bot))
