"""A fake Discord for end-to-end tests with the unmodified discord.py client.

See ``plugin.py`` for the pytest fixtures and ``server.FakeDiscord`` for the API.
"""

from __future__ import annotations

from .client import discord_py_pointed_at, point_discord_py_at, running_client
from .driver import CommandRejected
from .faults import Routes
from .interactions import CallbackRecord, FakeDiscordTimeout, InteractionHandle
from .models import (
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    MessageFlags,
    Permissions,
    StoredAttachment,
    StoredMessage,
)
from .server import CommandSync, FakeDiscord, Problem, RequestRecord
from .spec import OpenAPISpec, spec_path, spec_unavailable_reason

__all__ = [
    "CallbackRecord",
    "CommandRejected",
    "CommandSync",
    "FakeChannel",
    "FakeDiscord",
    "FakeDiscordTimeout",
    "FakeGuild",
    "FakeMember",
    "FakeRole",
    "FakeUser",
    "InteractionHandle",
    "MessageFlags",
    "OpenAPISpec",
    "Permissions",
    "Problem",
    "RequestRecord",
    "Routes",
    "StoredAttachment",
    "StoredMessage",
    "discord_py_pointed_at",
    "point_discord_py_at",
    "running_client",
    "spec_path",
    "spec_unavailable_reason",
]
