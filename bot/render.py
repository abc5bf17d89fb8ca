"""Text that users read: progress lines, result captions, quota and queue summaries, in the
reader's language (``bot.i18n``)."""

from __future__ import annotations

import datetime as dt
import math

from discord import Locale

from bot.i18n import translate, translate_marked
from core import textguard
from core.errors import N_
from core.storage.records import JobStatus

# Discord's limits for the places these strings go.
CONTENT_LIMIT = 2000
EMBED_TITLE_LIMIT = 256


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def embed_title(prompt: str) -> str:
    return clip(quoted_prompt(prompt, 250).strip() or "…", EMBED_TITLE_LIMIT)


def quoted_prompt(prompt: str, limit: int = 300) -> str:
    # Backticks would break the inline code span; the prompt is shown, never run. Controls
    # and invisible characters (a prompt stored before they were cleaned) are not shown.
    text = textguard.clean(prompt).replace("`", "ʹ").replace("\n", " ").replace("\t", " ")
    return clip(text, limit)


def duration(seconds: float | None, locale: Locale | None = None) -> str:
    if seconds is None:
        return translate("unknown", locale)
    if seconds < 1:
        return translate("{seconds} s", locale, seconds=1)
    if seconds < 60:
        return translate("{seconds} s", locale, seconds=math.ceil(seconds))
    minutes, secs = divmod(math.ceil(seconds), 60)
    if minutes < 60:
        if secs:
            return translate("{minutes} min {seconds} s", locale, minutes=minutes, seconds=secs)
        return translate("{minutes} min", locale, minutes=minutes)
    hours, minutes = divmod(minutes, 60)
    return translate("{hours} h {minutes} min", locale, hours=hours, minutes=minutes)


STATUS_NAMES = {
    JobStatus.QUEUED: N_("queued"),
    JobStatus.RUNNING: N_("running"),
    JobStatus.DONE: N_("done"),
    JobStatus.FAILED: N_("failed"),
    JobStatus.CANCELLED: N_("cancelled"),
}


def status_name(status: JobStatus, locale: Locale | None = None) -> str:
    return translate_marked(STATUS_NAMES[status], locale)


def progress_bar(step: int, total: int, width: int = 16) -> str:
    fraction = 0.0 if total <= 0 else min(1.0, max(0.0, step / total))
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


def queued_line(position: int, eta_s: float | None, locale: Locale | None = None) -> str:
    ahead = (
        translate("next in line", locale)
        if position <= 1
        else translate("position {position} in the queue", locale, position=position)
    )
    eta = (
        ""
        if eta_s is None
        else translate(" · ready in about {duration}", locale, duration=duration(eta_s, locale))
    )
    return translate("⏳ Queued, {ahead}{eta}", locale, ahead=ahead, eta=eta)


def loading_line(model: str, detail: str = "", locale: Locale | None = None) -> str:
    suffix = f" ({clip(detail, 80)})" if detail else ""
    return translate(
        "📦 Loading model `{model}`{suffix}… the first load can take a few minutes.",
        locale,
        model=model,
        suffix=suffix,
    )


def progress_line(step: int, total: int, eta_s: float | None, locale: Locale | None = None) -> str:
    percent = 0 if total <= 0 else round(100 * step / total)
    eta = (
        ""
        if eta_s is None
        else translate(" · about {duration} left", locale, duration=duration(eta_s, locale))
    )
    return translate(
        "🎨 `{bar}` {percent}% · step {step}/{total}{eta}",
        locale,
        bar=progress_bar(step, total),
        percent=percent,
        step=step,
        total=total,
        eta=eta,
    )


def seeds_text(seeds: tuple[int, ...] | list[int], locale: Locale | None = None) -> str:
    if not seeds:
        return ""
    if len(seeds) == 1:
        return translate("seed {seed}", locale, seed=seeds[0])
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return translate("seeds {first}–{last}", locale, first=seeds[0], last=seeds[-1])
    return translate("seeds {seeds}", locale, seeds=", ".join(str(s) for s in seeds))


def quota_footer(
    remaining: int | None, resets_at: dt.datetime | None, locale: Locale | None = None
) -> str:
    if remaining is None:
        return translate("No daily image limit in this server.", locale)
    when = (
        ""
        if resets_at is None
        else translate(", resets {time} UTC", locale, time=f"{resets_at:%H:%M}")
    )
    if remaining == 1:
        return translate(
            "{remaining} image left for you today{when}.", locale, remaining=1, when=when
        )
    return translate(
        "{remaining} images left for you today{when}.", locale, remaining=remaining, when=when
    )


def discord_time(moment: dt.datetime, style: str = "R") -> str:
    """A timestamp that Discord shows in each reader's own time zone."""
    return f"<t:{int(moment.timestamp())}:{style}>"
