"""A Ray cluster on this machine for the tests: ``ray start --head`` bound to 127.0.0.1,
started once per session and stopped after it.

The replicas' processes are started by the cluster, not by the bot, so what they must see
(the engine holds' test aid, the offline hub) is in the cluster's environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from api_support import free_port

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
# Logical CPUs, not cores: two one-CPU replicas, and room for a third replacing a dead one.
CLUSTER_CPUS = 4


@dataclass(frozen=True)
class RayCluster:
    address: str
    temp_dir: Path

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
    # Ray's socket paths must stay short: a folder under /tmp, not pytest's deep one.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [
        str(RAY),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={CLUSTER_CPUS}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--object-store-memory=150000000",
        f"--temp-dir={temp_dir}",
    ]
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        raise RuntimeError(f"ray start failed:\n{started.stdout}\n{started.stderr}")
    try:
        yield RayCluster(address=f"127.0.0.1:{port}", temp_dir=temp_dir)
    finally:
        subprocess.run(
            [str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120, check=False
        )
        shutil.rmtree(temp_dir, ignore_errors=True)
