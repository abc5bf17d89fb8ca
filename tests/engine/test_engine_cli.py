"""``python -m engine``: generate end to end, list models, and helpful failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.__main__ import main
from engine.errors import OutOfMemory
from engine.images import parse_parameters, read_png_parameters

ROOT = Path(__file__).parents[2]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=timeout,
        check=False,
    )


def test_generate_writes_pngs_with_metadata_and_a_grid(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli(
        "generate", "a red fox in snow", "--model", "tiny", "--count", "4", "--seed", "42",
        "--out", str(out), "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = sorted(path.name for path in out.iterdir())
    assert names == ["01-42.png", "02-43.png", "03-44.png", "04-45.png", "grid.png"]
    for index, seed in enumerate(range(42, 46), start=1):
        parameters = read_png_parameters((out / f"{index:02d}-{seed}.png").read_bytes())
        assert parameters is not None
        parsed = parse_parameters(parameters)
        assert (parsed.prompt, parsed.seed, parsed.model) == ("a red fox in snow", seed, "tiny")
        assert f"seed {seed}: " in done.stdout
    with Image.open(out / "grid.png") as grid:
        assert grid.width > 64 and grid.height > 64
    assert "timings: load" in done.stdout
    assert "running on CPU, this will be slow" in done.stderr
    assert "noise" in done.stderr
    assert "denoising" in done.stderr  # the progress bar
    assert "Traceback" not in done.stderr


def test_models_lists_the_registry_and_marks_the_noise_models() -> None:
    done = run_cli("models")
    assert done.returncode == 0, done.stderr
    assert "sd-turbo (default)" in done.stdout
    tiny_line = next(line for line in done.stdout.splitlines() if line.startswith("tiny "))
    assert "noise" in tiny_line
    assert "licence: CreativeML OpenRAIL-M" in done.stdout


def test_unknown_model_fails_fast_with_the_choices() -> None:
    done = run_cli("generate", "a fox", "--model", "nope")
    assert done.returncode == 1
    assert "error: Unknown model 'nope'. Available models: sd-turbo" in done.stderr
    assert "Traceback" not in done.stderr


# The remaining failures run in-process: they need no fresh interpreter.


def test_missing_weights_say_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models.gone]\nsource = "./gone"\nfamily = "sd15"\n')
    code = main(["generate", "a fox", "--models-file", str(models), "--device", "cpu"])
    assert code == 1
    error = capsys.readouterr().err
    assert "error: The folder" in error and "does not exist" in error
    assert "Traceback" not in error


def test_uncached_hub_model_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models.remote]\nsource = "someone/not-downloaded"\nfamily = "sdxl"\n')
    code = main(
        ["generate", "a fox", "--models-file", str(models), "--device", "cpu", "--local-files-only"]
    )
    assert code == 1
    assert "hf download someone/not-downloaded" in capsys.readouterr().err


def test_out_of_memory_suggests_smaller_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.backend import DiffusersBackend

    def exhausted(*_args: object) -> list:
        raise OutOfMemory()

    monkeypatch.setattr(DiffusersBackend, "run", exhausted)
    code = main(["generate", "a fox", "--model", "tiny", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 1
    error = capsys.readouterr().err
    assert "too large for this GPU" in error and "--count 1" in error


def test_bad_requests_and_unexpected_errors_have_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", "a fox", "--model", "tiny", "--width", "65", "--device", "cpu"])
    assert code == 1
    assert "Width must be a multiple of 8" in capsys.readouterr().err

    from engine.backend import DiffusersBackend

    def broken(*_args: object) -> list:
        raise RuntimeError("something odd")

    monkeypatch.setattr(DiffusersBackend, "run", broken)
    code = main(["generate", "a fox", "--model", "tiny", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 1
    assert "unexpected RuntimeError: something odd (run with --debug" in capsys.readouterr().err
