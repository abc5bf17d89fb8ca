"""Charts of the usage figures, as PNGs: what /stats and the operator dashboard show. Pure
Pillow work; callers run it off the event loop."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from core.storage.usage import UsageStats, percentile_of

WIDTH, HEIGHT = 900, 420
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 60, 60, 50, 50
BACKGROUND = (43, 45, 49)
GRID = (70, 73, 80)
TEXT = (220, 221, 222)
BARS = (88, 101, 242)  # generations a day
LINE = (250, 166, 26)  # p95 request to result, seconds


def usage_chart(days: Sequence[tuple[dt.date, UsageStats]], title: str) -> bytes:
    """Generations per day (bars, left axis) and the p95 time from request to result
    (line, right axis, seconds)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=11)
    draw.text((MARGIN_LEFT, 16), title, fill=TEXT, font=font)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    bottom = MARGIN_TOP + plot_h
    counts = [stats.jobs for _, stats in days]
    p95s = [percentile_of(stats.total, 0.95) for _, stats in days]
    top_count = max([1, *counts])
    top_seconds = max([1.0, *(p for p in p95s if p is not None)])
    for step in range(5):  # horizontal grid with both axes' labels
        y = bottom - plot_h * step / 4
        draw.line((MARGIN_LEFT, y, WIDTH - MARGIN_RIGHT, y), fill=GRID)
        draw.text((8, y - 7), f"{top_count * step / 4:.0f}", fill=BARS, font=small)
        draw.text(
            (WIDTH - MARGIN_RIGHT + 6, y - 7),
            f"{top_seconds * step / 4:.0f} s",
            fill=LINE,
            font=small,
        )
    if days:
        slot = plot_w / len(days)
        points = []
        for n, ((day, _), count, p95) in enumerate(zip(days, counts, p95s, strict=True)):
            left = MARGIN_LEFT + n * slot
            height = plot_h * count / top_count
            draw.rectangle(
                (left + slot * 0.15, bottom - height, left + slot * 0.85, bottom), fill=BARS
            )
            if p95 is not None:
                points.append((left + slot / 2, bottom - plot_h * p95 / top_seconds))
            if len(days) <= 10 or n % max(1, len(days) // 8) == 0:
                draw.text((left, bottom + 6), day.strftime("%m-%d"), fill=TEXT, font=small)
        if len(points) > 1:
            draw.line(points, fill=LINE, width=3)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=LINE)
    draw.text((MARGIN_LEFT, HEIGHT - 20), "■ generations a day", fill=BARS, font=small)
    draw.text((MARGIN_LEFT + 170, HEIGHT - 20), "● p95 request to result", fill=LINE, font=small)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


PERIOD_DAYS = {"day": 1, "week": 7, "month": 30}


def period_range(period: str, today: dt.date) -> tuple[dt.date, dt.date]:
    """The first and last day (UTC) of the period ending today."""
    return today - dt.timedelta(days=PERIOD_DAYS[period] - 1), today
