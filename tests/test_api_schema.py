"""Schemathesis against the live API: every operation in its OpenAPI document, with valid and
invalid data, must never answer 5xx, and every answer must match the document (status codes,
content types, headers, bodies).

One check is left out: "schema-valid request rejected". The document cannot say which sizes
and models exist (the registry decides at run time), so a request it allows may still be
refused, correctly, with a 422 that names the field.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from api_support import start_api
from foreign_models import save_tiny_yolos

EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "15"))


@pytest.mark.asyncio
async def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    """All of schemathesis's phases (examples, boundary coverage, fuzzing, stateful links),
    valid and invalid data, deterministic so a failure is reproducible."""
    # A tiny local detector, so that /api/cv/yolo/detect answers without the internet.
    detector = save_tiny_yolos(tmp_path / "yolos")
    api = await start_api(
        tmp_path / "data", API_REQUESTS_PER_MINUTE="100000", DETECTOR_MODEL=str(detector)
    )
    try:
        base, key = api.base, api.new_key("fuzz")
        result = await asyncio.to_thread(run_schemathesis, base, key, tmp_path)
    finally:
        await api.stop()
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "Tested: " in result.stdout and "failures" not in result.stdout.split("SUMMARY")[-1]


def run_schemathesis(base: str, key: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
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
        cwd=folder,  # its cache folder goes there, not into the repository
    )
