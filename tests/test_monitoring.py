"""The shipped alert rules and Grafana dashboard (issue 22) parse, and every metric they name
is one the bot really exposes; promtool (Debian's prometheus package, installed by .ci/run)
checks the rules as Prometheus will."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.metrics import Metrics
from engine.engine import EngineStatus

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "diffusion-chat.json"
METRIC = re.compile(r"\bdiffusion_chat_[a-z_]+")
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count", "_created")


def exposed_names() -> set[str]:
    status = EngineStatus(
        queued=0,
        running=0,
        loaded_model="tiny",
        worker_alive=True,
        worker_restarts=0,
        cache_hits=0,
        cache_misses=0,
    )
    body, _ = Metrics(engine_status=lambda: status, gpu_memory=lambda: []).render()
    names = set()
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "counter":
                names.add(f"{name}_total")
            if kind == "histogram":
                names.update(f"{name}{part}" for part in HISTOGRAM_PARTS)
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split()[0])
    return names


def test_alert_rules_cover_the_named_signals_with_metrics_that_exist() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    alerts = {rule["alert"]: rule for rule in rules}
    for wanted in (
        "DiffusionChatQueueDeep",
        "DiffusionChatSlowQueue",
        "DiffusionChatErrorRate",
        "DiffusionChatGpuMemoryHigh",
        "DiffusionChatWorkerRestarts",
        "DiffusionChatGatewayDisconnected",
    ):
        assert wanted in alerts and alerts[wanted]["annotations"]["summary"]
    named = {name for rule in rules for name in METRIC.findall(rule["expr"])}
    missing = named - exposed_names()
    assert not missing, f"rules name metrics the bot does not expose: {missing}"


def test_the_dashboard_parses_and_charts_only_real_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "diffusion-chat" and len(dashboard["panels"]) >= 8
    named = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in METRIC.findall(target["expr"])
    }
    assert {"diffusion_chat_queue_depth", "diffusion_chat_gateway_connected"} <= named
    missing = named - exposed_names()
    assert not missing, f"the dashboard charts metrics the bot does not expose: {missing}"


def test_the_check_bites_on_a_misspelt_metric() -> None:
    assert "diffusion_chat_queue_dept" not in exposed_names()
    assert "diffusion_chat_queue_depth" in exposed_names()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: .ci/run installs it")
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
