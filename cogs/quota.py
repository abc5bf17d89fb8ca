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
from bot.i18n import reader_locale, translate
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
        require_moderator(interaction, "manage quotas")
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
        require_moderator(interaction, "see statistics")
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        first, last = period_range(period, discord.utils.utcnow().date())
        days = await self.bot.service.db.usage.days(first, last, server_key(interaction.guild_id))
        stats = merged(days)
        summary = stats.summary()
        active = stats.jobs - stats.done - stats.failed - stats.cancelled
        label = {"day": "Today (since 00:00 UTC)", "week": "Last 7 days", "month": "Last 30 days"}
        lines = [
            f"**{label[period]}**: {stats.jobs} jobs, {stats.images} images\n"
            f"Done {stats.done} · failed {stats.failed} · cancelled {stats.cancelled}"
            f" · in progress {active}",
            f"People: {stats.active_users} · errors {_share(stats.error_rate)}"
            f" · cancelled {_share(stats.cancel_rate)}",
            f"Request to result: median {render.duration(summary['total_p50_s'])},"
            f" p95 {render.duration(summary['total_p95_s'])} (queue p95"
            f" {render.duration(summary['wait_p95_s'])}, generation p95"
            f" {render.duration(summary['generation_p95_s'])})",
            "Advanced settings: "
            + ", ".join(
                f"{name.replace('_', ' ')} {_share(share)}"
                for name, share in summary["advanced_share"].items()
                if share
            )
            + f" · saved to favourites {_share(summary['favourited_share'])}",
        ]
        if stats.from_buttons:
            lines.append(
                "Buttons: "
                + ", ".join(f"{kind} {n}" for kind, n in stats.from_buttons.most_common())
            )
        if stats.feedback_by_model:
            lines.append(
                "Feedback: "
                + ", ".join(
                    f"`{model}` 👍 {up} 👎 {down}"
                    for model, (up, down) in sorted(stats.feedback_by_model.items())
                )
            )
        for reason, count in stats.failure_reasons.most_common(5):
            lines.append(f"• {count}× {render.clip(reason, 120)}")
        chart = await asyncio.to_thread(usage_chart, days, f"{label[period]}: generations and p95")
        file = discord.File(io.BytesIO(chart), "stats.png")
        await interaction.followup.send(
            render.clip("\n".join(lines), render.CONTENT_LIMIT), file=file, ephemeral=True
        )


def _share(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction:.0%}"


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Quota(bot))
    await bot.add_cog(Stats(bot))
