"""The Discord side of user errors: a refusal raised from an interaction check."""

from __future__ import annotations

from discord import app_commands

from core.errors import UserError


class PermissionDenied(UserError, app_commands.CheckFailure):
    """Raised from interaction checks, so discord.py routes it to the tree's error handler."""
