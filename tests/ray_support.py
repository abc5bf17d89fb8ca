"""A Ray cluster on this machine for the tests (``engine.replicas.local_cluster``), started
once per session and stopped after it.

The replicas' processes are started by the cluster, not by the bot, so what they must see
(the offline hub; the engine holds' test aid comes through RAY_FORWARD_ENV) is in their
environment.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.replicas import local_cluster

ROOT = Path(__file__).resolve().parents[1]
# Logical CPUs, not cores: two one-CPU replicas, and room for a third replacing a dead one.
CLUSTER_CPUS = 4


@dataclass(frozen=True)
class RayCluster:
    address: str

    def env(self, replicas: int = 2) -> dict[str, str]:
        """The bot's settings for ENGINE=ray on this cluster: CPU replicas, one torch
        thread each, holds forwarded (see ``tests/engine_holds``)."""
        return {
            "ENGINE": "ray",
            "RAY_ADDRESS": self.address,
            "RAY_REPLICAS": str(replicas),
            "RAY_GPUS_PER_REPLICA": "0",
            "RAY_CPUS_PER_REPLICA": "1",
            "RAY_TORCH_THREADS": "1",
            "RAY_FORWARD_ENV": "PYTHONPATH,ENGINE_HOLD_DIR,HF_HUB_OFFLINE",
            "DEVICE": "cpu",
            # Each bot process its own replicas, even two at once on one cluster.
            "RAY_NAMESPACE": f"test-{uuid.uuid4().hex[:8]}",
        }


@contextlib.contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    with local_cluster(cpus=CLUSTER_CPUS, env=env) as address:
        yield RayCluster(address)
