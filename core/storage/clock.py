"""Time as storage sees it: aware UTC datetimes, stored as fixed-width ISO 8601 text.

Every timestamp in the database is ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``. Text of one fixed
width sorts in time order, compares with plain ``<`` in SQL, reads well in the ``sqlite3``
shell, and round-trips to the microsecond (a float of unix seconds would not).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

UTC = dt.UTC

Clock = Callable[[], dt.datetime]
"""A function returning the current time as an aware datetime. Inject one in tests."""


def system_clock() -> dt.datetime:
    return dt.datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to. For tests (of storage and of its callers)."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        start = start or dt.datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
        self.now = require_aware(start)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta | None = None, **kwargs: float) -> dt.datetime:
        """Move forward by ``delta`` or by ``timedelta(**kwargs)``; returns the new time."""
        self.now = self.now + (delta if delta is not None else dt.timedelta(**kwargs))
        return self.now

    def set(self, moment: dt.datetime) -> None:
        self.now = require_aware(moment)


def require_aware(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: storage needs timezone-aware datetimes")
    return moment.astimezone(UTC)


def to_db(moment: dt.datetime) -> str:
    return require_aware(moment).isoformat(timespec="microseconds")


def to_db_opt(moment: dt.datetime | None) -> str | None:
    return None if moment is None else to_db(moment)


def from_db(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


def from_db_opt(text: str | None) -> dt.datetime | None:
    return None if text is None else from_db(text)


def utc_day(moment: dt.datetime) -> str:
    """The UTC calendar day of ``moment`` as ``YYYY-MM-DD`` (the quota ledger's day)."""
    return require_aware(moment).date().isoformat()


def next_utc_midnight(moment: dt.datetime) -> dt.datetime:
    """When the daily quota that covers ``moment`` resets."""
    day = require_aware(moment).date() + dt.timedelta(days=1)
    return dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
