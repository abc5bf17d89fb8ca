"""Schemathesis against the live API: every operation in its OpenAPI document, with valid and
invalid data, must never answer 5xx, and every answer must match the document (status codes,
content types, headers, bodies).

One check is left out: "schema-valid request rejected". The document cannot say which sizes
and models exist (the registry decides at run time), so a request it allows may still be
refused, correctly, with a 422 that names the field.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import free_port, product_env
from e2e_support import ROOT

EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "15"))


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data_dir = tmp_path_factory.mktemp("schema") / "data"
    port = free_port()
    env = product_env(data_dir, API_PORT=str(port), API_REQUESTS_PER_MINUTE="100000")
    server = subprocess.Popen(
        [sys.executable, "-m", "bot"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, "the API exited"
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.1)
        made = subprocess.run(
            [sys.executable, "-m", "bot.cli", "apikey", "create", "fuzz"],
            cwd=Path(data_dir).parent,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        yield base, made.stdout.splitlines()[1].strip()
    finally:
        server.terminate()
        server.wait(30)


def test_schemathesis_finds_nothing(live_api: tuple[str, str], tmp_path: Path) -> None:
    """All of schemathesis's phases (examples, boundary coverage, fuzzing, stateful links),
    valid and invalid data, deterministic so a failure is reproducible."""
    base, key = live_api
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "st"),
            "run",
            f"{base}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--mode",
            "all",
            "--max-examples",
            str(EXAMPLES),
            "--exclude-checks",
            "positive_data_acceptance",
            "--generation-deterministic",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # its cache folder goes there, not into the repository
    )
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "Tested: " in result.stdout and "failures" not in result.stdout.split("SUMMARY")[-1]
