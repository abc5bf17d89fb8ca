"""The ``diffusion-chat`` command, run as a separate process the way operators run it."""

from __future__ import annotations

import ast
import asyncio
import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import cli
from core.storage.migrations import LATEST_VERSION

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GhIjKl.abcdefghijklmnopqrstuvwxyz012345678"


def clean_environment(**extra: str) -> dict[str, str]:
    """The test process's environment without any setting that could leak in."""
    names = set(setting_names())
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("HF_")}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # cwd=tmp_path: no .env of the developer's is read.
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=tmp_path,
        env=clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    models = tmp_path / "models.toml"
    models.write_text('default = "tiny"\n[models.tiny]\nsource = "builtin:tiny"\n')
    path = tmp_path / "test.env"
    path.write_text(
        f"DISCORD_TOKEN={TOKEN}\nDATA_DIR={tmp_path / 'data'}\nMODELS_FILE={models}\n"
        f"HF_HOME={tmp_path / 'hf'}\n",
        encoding="utf-8",
    )
    return path


def test_help_lists_the_subcommands(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--help")
    assert result.returncode == 0
    for command in ("run", "generate", "doctor", "migrate", "cleanup", "healthcheck"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command


def test_doctor_passes_on_a_good_configuration(tmp_path: Path, env_file: Path) -> None:
    result = run_cli(tmp_path, "--env-file", str(env_file), "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DISCORD_TOKEN is set" in result.stdout
    assert "tiny: builtin:tiny" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_doctor_reads_dot_env_and_fails_on_a_bad_token(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DISCORD_TOKEN=oops-not-a-token-but-long-enough-to-look\n")
    result = run_cli(tmp_path, "doctor", DATA_DIR=str(tmp_path / "data"))
    assert result.returncode == 1
    assert "✘ DISCORD_TOKEN does not look like a bot token" in result.stdout
    assert "oops-not-a-token" not in result.stdout


def test_migrate_creates_then_reports_up_to_date(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    first = run_cli(tmp_path, "migrate", DATA_DIR=data)
    assert first.returncode == 0, first.stderr
    assert f"at schema version {LATEST_VERSION}" in first.stdout
    assert (tmp_path / "data" / "diffusion-chat.sqlite3").is_file()
    second = run_cli(tmp_path, "migrate", DATA_DIR=data)
    assert second.returncode == 0
    assert f"is up to date (schema version {LATEST_VERSION})" in second.stdout


def test_cleanup_without_and_with_an_empty_database(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    nothing = run_cli(tmp_path, "cleanup", "--older-than-days", "30", DATA_DIR=data)
    assert nothing.returncode == 0
    assert "Nothing to clean up" in nothing.stdout
    assert run_cli(tmp_path, "migrate", DATA_DIR=data).returncode == 0
    empty = run_cli(tmp_path, "cleanup", "--older-than-days", "30", DATA_DIR=data)
    assert empty.returncode == 0, empty.stderr
    assert "Deleted 0 image record(s)" in empty.stdout
    assert "freeing 0 bytes" in empty.stdout


def test_cleanup_needs_a_sensible_age(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "cleanup", "--older-than-days", "-1")
    assert result.returncode == 2
    assert "must be 0 or more" in result.stderr


def test_bad_settings_are_explained_without_a_traceback(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "migrate", MAX_QUEUED="lots", DATA_DIR=str(tmp_path))
    assert result.returncode == 2
    assert "MAX_QUEUED='lots' is not valid" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_env_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--env-file", "nope.env", "doctor")
    assert result.returncode == 2
    assert "nope.env does not exist" in result.stderr


def test_generate_help_comes_from_the_engine(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "generate", "--help")
    assert result.returncode == 0, result.stderr
    assert "--model" in result.stdout
    assert "--count" in result.stdout
    assert result.stdout.startswith("usage: diffusion-chat generate")


def test_models_uses_the_configured_registry(tmp_path: Path, env_file: Path) -> None:
    result = run_cli(tmp_path, "--env-file", str(env_file), "models")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tiny (default)")
    assert "sd-turbo" not in result.stdout


def test_the_engine_gets_the_settings_as_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str], *, prog: str) -> int:
        assert prog == "diffusion-chat"
        seen.append(argv)
        return 0

    import engine.__main__

    monkeypatch.setattr(engine.__main__, "main", fake_main)
    monkeypatch.setenv("DEFAULT_MODEL", "tiny")
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("CPU_OFFLOAD", "true")
    monkeypatch.chdir(ROOT / "tests")  # no .env here
    assert cli.main(["generate", "a fox", "--debug", "--count", "2"]) == 0
    assert cli.main(["generate", "a fox", "--model=other", "--device", "cuda"]) == 0
    assert seen[0] == [
        "--debug",
        "generate",
        "a fox",
        "--count",
        "2",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--cpu-offload",
    ]
    assert seen[1] == ["generate", "a fox", "--model=other", "--device", "cuda", "--cpu-offload"]


@pytest.fixture
def health_server() -> Iterator[tuple[int, list[tuple[int, bytes]]]]:
    """A stand-in for the bot's /healthz that answers what the test queues."""
    answers: list[tuple[int, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1], answers
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    health_server: tuple[int, list[tuple[int, bytes]]],
) -> None:
    port, answers = health_server
    monkeypatch.chdir(ROOT / "tests")
    monkeypatch.delenv("METRICS_PORT", raising=False)
    assert cli.main(["healthcheck"]) == 0
    assert "metrics are off" in capsys.readouterr().out

    monkeypatch.setenv("METRICS_PORT", str(port))
    monkeypatch.setenv("METRICS_HOST", "0.0.0.0")
    answers.append((200, b'{"gateway_connected": true, "worker_alive": true, "status": "ok"}'))
    assert cli.main(["healthcheck"]) == 0
    answers.append((503, b'{"gateway_connected": false, "worker_alive": true, "status": "x"}'))
    assert cli.main(["healthcheck"]) == 1
    assert "unhealthy: 503" in capsys.readouterr().out


# --- .env.example --------------------------------------------------------------------------


def setting_names() -> list[str]:
    """Every UPPER_CASE name that core/config.py reads with get(...) or values.get(...)."""
    tree = ast.parse((ROOT / "core" / "config.py").read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        first = node.args[0]
        if (
            called == "get"
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
            and re.fullmatch(r"[A-Z][A-Z0-9_]+", first.value)
            and first.value not in names
        ):
            names.append(first.value)
    return names


def test_env_example_lists_every_setting() -> None:
    names = setting_names()
    assert {"DISCORD_TOKEN", "DATA_DIR", "METRICS_PORT", "LOG_FORMAT"} <= set(names)
    assert len(names) >= 28
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    missing = [n for n in names if not re.search(rf"^#? ?{n}=", example, re.MULTILINE)]
    assert not missing, f"add these settings to .env.example: {missing}"
    # The example must never carry a real-looking token.
    assert re.search(r"^DISCORD_TOKEN=$", example, re.MULTILINE)


# --- container files --------------------------------------------------------------------------


def test_dockerfile_copies_only_what_exists_and_checks_health() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE):
        # The image must build from the repository as it is.
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is missing"
    assert 'CMD ["diffusion-chat", "healthcheck"]' in dockerfile
    assert re.search(r"METRICS_PORT=[1-9]", dockerfile), "the health check needs metrics on"
    assert re.search(r"^USER \d+", dockerfile, re.MULTILINE), "run as a non-root uid"
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".env", ".venv", ".git", "data"} <= set(ignored)


def test_compose_file_reserves_a_gpu_and_keeps_the_volumes() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    bot = compose["services"]["bot"]
    devices = bot["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert bot["env_file"] == ".env"
    assert {"data:/data", "models:/models"} <= set(bot["volumes"])
    assert bot["restart"] == "unless-stopped"
    assert {"data", "models"} <= set(compose["volumes"])
    # The monitoring profile's Prometheus evaluates the shipped rules and starts only on request.
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert any("alerts.yml" in volume for volume in prometheus["volumes"])


def test_compose_cluster_profile_runs_ray_postgres_and_s3_from_permissive_images() -> None:
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))["services"]
    cluster = {name for name, spec in services.items() if "cluster" in spec.get("profiles", [])}
    assert cluster == {"ray-head", "gpu-worker", "postgres", "s3"}
    # The head and the workers run the bot's own image, so Ray and Python match the bot's.
    for name in ("ray-head", "gpu-worker"):
        assert services[name]["image"] == services["bot"]["image"]
        assert services[name]["entrypoint"] == ["ray"] and "--block" in services[name]["command"]
    assert "--head" in services["ray-head"]["command"]
    assert "--address=ray-head:6379" in services["gpu-worker"]["command"]
    gpus = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpus["capabilities"] == ["gpu"] and gpus["count"] == "all"
    # Nothing AGPL: no MinIO, no Grafana.
    images = " ".join(service.get("image", "") for service in services.values()).lower()
    assert "minio" not in images and "grafana" not in images


# --- starting the bot on storage it must not use ------------------------------------------

LIBRARY_NOISE = ("torchvision", "PyNaCl", "davey", "Traceback")


def start_bot(tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``python -m bot`` with a well-formed token and a Discord that cannot be reached."""
    models = tmp_path / "models.toml"
    models.write_text('default = "tiny"\n[models.tiny]\nsource = "builtin:tiny"\n')
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=clean_environment(
            DISCORD_TOKEN=TOKEN,
            DATA_DIR=str(data_dir),
            MODELS_FILE=str(models),
            DISCORD_API_BASE_URL="http://127.0.0.1:9/api/v10",
            DISCORD_GATEWAY_URL="ws://127.0.0.1:9",
            HF_HUB_OFFLINE="1",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def stored_data(data_dir: Path) -> Path:
    """A data folder with one image and a database holding records; returns the database."""
    from core.storage import Database

    async def build() -> None:
        async with Database.open_data_dir(data_dir) as db:
            words = [f"word number {n} {'x' * 60}" for n in range(300)]
            await db.guilds.add_banned_words(1, words, added_by=7)
            assert db.files is not None
            await db.files.put(PNG)

    asyncio.run(build())
    return data_dir / "diffusion-chat.sqlite3"


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def blocked(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file" / "data"


def cut_short(tmp_path: Path) -> Path:
    database = stored_data(tmp_path / "data")
    (tmp_path / "data" / "diffusion-chat.sqlite3.v3.bak").write_bytes(database.read_bytes())
    with database.open("r+b") as file:
        file.truncate(database.stat().st_size // 2 // 4096 * 4096)
    return tmp_path / "data"


def emptied(tmp_path: Path) -> Path:
    database = stored_data(tmp_path / "data")
    database.write_bytes(b"")
    return tmp_path / "data"


def too_new(tmp_path: Path) -> Path:
    import sqlite3

    database = stored_data(tmp_path / "data")
    conn = sqlite3.connect(database)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    return tmp_path / "data"


def foreign(tmp_path: Path) -> Path:
    import sqlite3

    (tmp_path / "data").mkdir()
    with sqlite3.connect(tmp_path / "data" / "diffusion-chat.sqlite3") as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (blocked, ["cannot be written", "Not a directory", "write"]),
        (cut_short, ["is damaged", "diffusion-chat.sqlite3.v3.bak", "Restore"]),
        (emptied, ["is empty or missing", "images/", "Restore", "move images/ away"]),
        (too_new, [f"schema version {LATEST_VERSION + 1}", "downgrade"]),
        (foreign, ["not a Diffusion Chat database", "Point DATA_DIR at a directory"]),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_bad_storage_stops_the_bot_with_one_line_naming_data_dir(
    tmp_path: Path, make: Any, says: list[str]
) -> None:
    data_dir = make(tmp_path)
    database = data_dir / "diffusion-chat.sqlite3"
    before = database.read_bytes() if database.is_file() else None
    result = start_bot(tmp_path, data_dir)
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"could not start: DATA_DIR {data_dir}" in lines[0]
    for words in says:
        assert words in lines[0]
    if before is not None:
        assert database.read_bytes() == before  # refused before anything was written


def test_start_up_prints_no_library_noise(tmp_path: Path) -> None:
    result = start_bot(tmp_path, tmp_path / "data")
    output = result.stdout + result.stderr
    assert "logging in" in output  # it got as far as Discord, which cannot be reached
    assert result.returncode == 1
    for noise in LIBRARY_NOISE:
        assert noise not in output
