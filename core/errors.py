"""Errors whose message the user who caused them may see, whatever front door they used."""

from __future__ import annotations

import secrets


def N_(text: str) -> str:
    """Marks an English text as one a front door shows translated (gettext's convention):
    the text itself is the message id in the catalogs, so nothing changes here."""
    return text


class UserError(Exception):
    """A problem the user caused or can fix. ``str(error)`` is shown to them (privately).

    Given ``values``, the message is a template (``"Steps must be at most {most}."``) filled
    from them: a front door can then show the template's translation with the same values.
    """

    def __init__(self, message: str = "", /, **values: object) -> None:
        super().__init__(message.format(**values) if values else message)
        self.template = message
        self.values = values


class InvalidField(UserError):
    """A request field the user filled in wrongly; ``field`` names it the way the caller's
    front door does (an option or a query parameter of the same name)."""

    def __init__(self, field: str, message: str, /, **values: object) -> None:
        super().__init__(message, **values)
        self.field = field


class QuotaRefused(UserError):
    """The job would break the user's quota. ``retry_after_s``: when trying again can work
    (the daily reset), or None (a concurrent-jobs limit frees up when a job ends)."""

    def __init__(self, message: str, retry_after_s: float | None, /, **values: object) -> None:
        super().__init__(message, **values)
        self.retry_after_s = retry_after_s


class StartupError(Exception):
    """Start-up failed for a reason the operator can fix; ``str()`` is the one line to show."""


def incident_id() -> str:
    """A short id a user can quote and an operator can find in the logs."""
    return secrets.token_hex(4)
