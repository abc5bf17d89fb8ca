"""The bot's end-to-end tests again, with ENGINE=ray: the bot process drives two CPU
replicas on the session's Ray cluster, and Discord users cannot tell the difference.

By default the tests where the engine matters run here (generation with progress and
previews, img2img, private results, a failure, server models, a kill -9 mid-job); with
RAY_E2E=all every test of test_bot_e2e.py does (about 5 minutes more).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from e2e_support import World, start_world, stop_world
from ray_support import RayCluster

if os.environ.get("RAY_E2E") == "all":  # first, so they keep their order
    from test_bot_e2e import *  # noqa: F403

# isort: off
# The tests in their module's order: some expect what the earlier ones left.
from test_bot_e2e import (  # noqa: F401 - collected again here, against the Ray engine
    pytestmark,
    test_imagine_to_finished_grid_with_progress_and_previews,
    test_image_attachment_starts_an_img2img_job,
    test_private_results_are_ephemeral,
    test_killed_mid_job_restart_finishes_exactly_once,
    test_failed_generation_reaches_the_user_and_health_and_metrics_are_served,
    test_moderators_choose_the_servers_default_model_and_the_models_it_offers,
)
# isort: on


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayCluster
) -> AsyncIterator[World]:
    started = await start_world(tmp_path_factory.mktemp("bot-data"), **ray_cluster.env())
    assert "Ray replica" in started.bot.output
    try:
        yield started
    finally:
        await stop_world(started)
