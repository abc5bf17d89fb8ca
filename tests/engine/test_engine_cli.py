"""``python -m engine``: generate end to end, list models, and helpful failures."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.__main__ import build_parser, main
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


# --- no network, unwritable output, help ---------------------------------------------------

# Runs ``python -m engine`` as is, counting the connections it tries to open to ``port``.
COUNTING_RUNNER = """
import runpy, socket, sys
port = int(sys.argv[1])
real = socket.create_connection
def counting(address, *args, **kwargs):
    if address[1] == port:
        print("connection attempt", file=sys.stderr, flush=True)
    return real(address, *args, **kwargs)
socket.create_connection = counting
sys.argv = ["python -m engine", *sys.argv[2:]]
runpy.run_module("engine", run_name="__main__", alter_sys=True)
"""


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends


def test_a_hub_model_without_network_fails_at_once_and_says_what_to_do(tmp_path: Path) -> None:
    port = closed_port()
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("HF_HUB_OFFLINE")
    }
    environment |= {
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HOME": str(tmp_path / "hf"),  # nothing cached
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", COUNTING_RUNNER, str(port), "generate", "a fox",
         "--model", "sd-turbo", "--device", "cpu", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, env=environment, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    attempts = done.stderr.count("connection attempt")
    # One question to the hub and no retries (it retried 5 times over 24 s); the hub client
    # also makes one attempt of its own, unretried, to fetch its user-agent registry.
    assert 1 <= attempts <= 2, done.stderr
    error = done.stderr.splitlines()[-1]
    assert error.startswith("error: Cannot reach the Hugging Face hub")
    assert f"127.0.0.1:{port}" in error and "stabilityai/sd-turbo" in error
    for advice in ("network connection", "--local-files-only", "HF_HUB_OFFLINE=1", "--model tiny"):
        assert advice in error
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.__main__

    def never(*_args: object) -> None:
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(engine.__main__, "_build_backend", never)


@pytest.mark.usefixtures("no_loading")
def test_an_output_folder_that_cannot_be_made_fails_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["generate", "a fox", "--model", "tiny", "--out", str(blocker / "out")])
    assert code == 1
    error = capsys.readouterr().err
    assert f"Cannot write to the output folder {blocker / 'out'}" in error
    assert "--out" in error and "Traceback" not in error


@pytest.mark.usefixtures("no_loading")
@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders"
)
def test_a_read_only_output_folder_fails_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        code = main(["generate", "a fox", "--model", "tiny", "--out", str(read_only)])
    finally:
        read_only.chmod(0o755)
    assert code == 1
    assert f"Cannot write to the output folder {read_only}" in capsys.readouterr().err


def test_generate_help_names_the_program_and_explains_every_option() -> None:
    parser = build_parser()
    subcommands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    for name, command in subcommands.choices.items():
        assert command.format_usage().startswith(f"usage: python -m engine {name} ")
        unexplained = [
            action.dest
            for action in command._actions
            if not action.help or action.help == argparse.SUPPRESS
        ]
        assert unexplained == [], f"{name}: options without help: {unexplained}"
    # Run through the bot's command line, the usage names that program instead.
    assert "usage: diffusion-chat generate " in main_help("diffusion-chat")


def main_help(prog: str) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit):
        main(["generate", "--help"], prog=prog)
    return output.getvalue()
