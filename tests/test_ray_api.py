"""The HTTP API's end-to-end tests again, with ENGINE=ray: the API process drives two CPU
replicas on the session's Ray cluster, and clients cannot tell the difference.

By default the tests where the engine matters run here; with RAY_E2E=all every test of
test_api.py does.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from api_support import ApiProcess, start_api
from ray_support import RayCluster

if os.environ.get("RAY_E2E") == "all":  # first, so they keep their order
    from test_api import *  # noqa: F403

# isort: off
# The tests in their module's order: some expect what the earlier ones left.
from test_api import (  # noqa: F401 - collected again here, against the Ray engine
    pytestmark,
    key,
    http,
    test_generate_follow_the_events_and_download_the_png,
    test_prefer_wait_returns_the_finished_job,
    test_a_reconnecting_client_misses_nothing,
    test_cancel_while_running,
    test_quotas_apply_to_keys_as_to_users,
    test_killed_mid_job_the_restarted_server_finishes_it,
    test_a_conversation_refines_each_result_from_the_last,
)
# isort: on


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api(
    tmp_path_factory: pytest.TempPathFactory, ray_cluster: RayCluster
) -> AsyncIterator[ApiProcess]:
    server = await start_api(tmp_path_factory.mktemp("api") / "data", **ray_cluster.env())
    assert "Ray replica" in server.output
    yield server
    await server.stop()
