"""Shared pytest configuration.

``fakediscord.plugin`` provides the ``fake_discord`` and ``run_discord_client`` fixtures
(a fake Discord that the unmodified discord.py client talks to over real sockets).
"""

from __future__ import annotations

pytest_plugins = ["fakediscord.plugin"]
