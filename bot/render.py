"""Text that users read: progress lines, result captions, quota and queue summaries. Pure."""

from __future__ import annotations

import datetime as dt
import math

from core import textguard

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


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 1:
        return "1 s"
    if seconds < 60:
        return f"{math.ceil(seconds)} s"
    minutes, secs = divmod(math.ceil(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def progress_bar(step: int, total: int, width: int = 16) -> str:
    fraction = 0.0 if total <= 0 else min(1.0, max(0.0, step / total))
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


def queued_line(position: int, eta_s: float | None) -> str:
    ahead = "next in line" if position <= 1 else f"position {position} in the queue"
    eta = "" if eta_s is None else f" · ready in about {duration(eta_s)}"
    return f"⏳ Queued, {ahead}{eta}"


def loading_line(model: str, detail: str = "") -> str:
    suffix = f" ({clip(detail, 80)})" if detail else ""
    return f"📦 Loading model `{model}`{suffix}… the first load can take a few minutes."


def progress_line(step: int, total: int, eta_s: float | None) -> str:
    percent = 0 if total <= 0 else round(100 * step / total)
    eta = "" if eta_s is None else f" · about {duration(eta_s)} left"
    return f"🎨 `{progress_bar(step, total)}` {percent}% · step {step}/{total}{eta}"


def seeds_text(seeds: tuple[int, ...] | list[int]) -> str:
    if not seeds:
        return ""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return "seeds " + ", ".join(str(s) for s in seeds)


def quota_footer(remaining: int | None, resets_at: dt.datetime | None) -> str:
    if remaining is None:
        return "No daily image limit in this server."
    when = "" if resets_at is None else f", resets {resets_at:%H:%M} UTC"
    noun = "image" if remaining == 1 else "images"
    return f"{remaining} {noun} left for you today{when}."


def discord_time(moment: dt.datetime, style: str = "R") -> str:
    """A timestamp that Discord shows in each reader's own time zone."""
    return f"<t:{int(moment.timestamp())}:{style}>"
