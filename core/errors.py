"""Errors whose message the user who caused them may see, whatever front door they used."""

from __future__ import annotations

import secrets


class UserError(Exception):
    """A problem the user caused or can fix. ``str(error)`` is shown to them (privately)."""


def incident_id() -> str:
    """A short id a user can quote and an operator can find in the logs."""
    return secrets.token_hex(4)
