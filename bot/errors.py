"""Errors whose message a user may see, and the one place that turns failures into replies."""

from __future__ import annotations

import secrets

from discord import app_commands


class UserError(Exception):
    """A problem the user caused or can fix. ``str(error)`` is shown to them, ephemerally."""


class PermissionDenied(UserError, app_commands.CheckFailure):
    """Raised from interaction checks, so discord.py routes it to the tree's error handler."""


def incident_id() -> str:
    """A short id a user can quote and an operator can find in the logs."""
    return secrets.token_hex(4)
