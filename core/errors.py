"""Errors whose message the user who caused them may see, whatever front door they used."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.errors import N_ as N_


@dataclass(frozen=True)
class Note:
    """Something the requester should know that is not an error (an ignored flag, a capped
    expansion): an English template and its values, as ``UserError`` carries them, so a front
    door can show it translated. A value may be a ``Note`` itself (a reason inside a note)."""

    template: str
    values: Mapping[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.template.format(**self.values) if self.values else self.template


def note(template: str, /, **values: object) -> Note:
    return Note(template, values)


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
