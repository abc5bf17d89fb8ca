"""Library questions as people ask them ("since 7d", "until 2026-11-30", sort by stars),
turned into the storage's ``LibraryQuery``. Shared by every front door."""

from __future__ import annotations

import datetime as dt
import re

from core.errors import N_, InvalidField
from core.storage.records import JobStatus, LibraryQuery, LibrarySort

MAX_SEARCH_CHARS = 200
OPERATIONS = ("txt2img", "img2img", "variation", "upscale", "inpaint", "outpaint", "edit")
_AGO = re.compile(r"^(\d{1,4})\s*(d|w|m|y)$")
_AGO_DAYS = {"d": 1, "w": 7, "m": 30, "y": 365}


def parse_moment(text: str, now: dt.datetime, *, field: str) -> dt.datetime:
    """A moment from what people type: ``2026-11-30`` (that day's start, UTC), a full ISO
    time, ``today``, ``yesterday``, or an age: ``7d``, ``2w``, ``3m``, ``1y`` ago."""
    value = text.strip().lower()
    today = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if value == "today":
        return today
    if value == "yesterday":
        return today - dt.timedelta(days=1)
    if match := _AGO.match(value):
        return now - dt.timedelta(days=int(match[1]) * _AGO_DAYS[match[2]])
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidField(
            field,
            N_(
                "`{field}` must be a date like 2026-11-30, today, yesterday, or an age like "
                "7d, 2w, 3m or 1y."
            ),
            field=field,
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def build_query(
    now: dt.datetime,
    *,
    search: str | None = None,
    model: str | None = None,
    operation: str | None = None,
    status: str | None = None,
    since: str | None = None,
    until: str | None = None,
    favourites_only: bool = False,
    sort: str | None = None,
) -> LibraryQuery:
    """A ``LibraryQuery`` from the options a person or program sent; a wrong option is an
    ``InvalidField`` naming it. A plain date for ``until`` includes that whole day."""
    if search is not None and len(search) > MAX_SEARCH_CHARS:
        raise InvalidField(
            "search", N_("A search can be at most {most} characters."), most=MAX_SEARCH_CHARS
        )
    if operation is not None and operation not in OPERATIONS:
        raise InvalidField(
            "operation",
            N_("`operation` must be one of {choices}."),
            choices=", ".join(OPERATIONS),
        )
    try:
        wanted_status = None if status is None else JobStatus(status)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidField(
            "status", N_("`status` must be one of {choices}."), choices=known
        ) from None
    try:
        order = LibrarySort.NEWEST if sort is None else LibrarySort(sort)
    except ValueError:
        known = ", ".join(s.value for s in LibrarySort)
        raise InvalidField("sort", N_("`sort` must be one of {choices}."), choices=known) from None
    start = None if since is None else parse_moment(since, now, field="since")
    end = None if until is None else parse_moment(until, now, field="until")
    if end is not None and until is not None and re.fullmatch(r"\s*\d{4}-\d{2}-\d{2}\s*", until):
        end += dt.timedelta(days=1)  # "until 2026-11-30" includes the 30th
    if start is not None and end is not None and start >= end:
        # LibraryQuery refuses it too, in storage's words; this says it for the user.
        raise InvalidField("since", N_("The start of the date range must come before its end."))
    return LibraryQuery(
        text=search.strip() if search and search.strip() else None,
        model=model or None,
        operation=operation,
        status=wanted_status,
        since=start,
        until=end,
        favourites_only=favourites_only,
        sort=order,
    )
