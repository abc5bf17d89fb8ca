"""``diffusion-chat doctor``: what it reports, what it never prints, and its exit code."""

from __future__ import annotations

import io
import re
import sqlite3
from pathlib import Path

import pytest

from bot.doctor import TorchInfo, hub_cache_dir, run_doctor
from core.storage.migrations import APPLICATION_ID, LATEST_VERSION

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GhIjKl.abcdefghijklmnopqrstuvwxyz012345678"
CPU = TorchInfo(version="2.13.0+cpu")
GPU = TorchInfo(version="2.13.0+cu124", cuda_build="12.4", gpus=(("NVIDIA T4", 16 * 2**30),))


def tiny_registry(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        'default = "tiny"\n\n[models.tiny]\nsource = "builtin:tiny"\n' + extra, encoding="utf-8"
    )
    return path


def doctor(tmp_path: Path, torch: TorchInfo = CPU, models: str = "", **env: str) -> tuple[int, str]:
    environ = {
        "DISCORD_TOKEN": TOKEN,
        "DATA_DIR": str(tmp_path / "data"),
        "MODELS_FILE": str(tiny_registry(tmp_path, models)),
        "HF_HOME": str(tmp_path / "hf"),
        **env,
    }
    out = io.StringIO()
    code = run_doctor(environ, None, out=out, torch_probe=lambda: torch)
    return code, out.getvalue()


def test_a_good_configuration_passes_and_lists_the_checks(tmp_path: Path) -> None:
    code, output = doctor(tmp_path, GPU)
    assert code == 0, output
    for expected in (
        "✔ DISCORD_TOKEN is set and shaped like a bot token",
        "bot user id 1234567890123456789",
        "✔ every other setting is valid",
        "GPU 0: NVIDIA T4, 16.0 GiB",
        "tiny: builtin:tiny, built in (random noise, for testing)",
        "will be created at first start",
        "ready to run",
    ):
        assert expected in output
    assert TOKEN not in output


def test_cpu_only_is_a_warning_not_an_error(tmp_path: Path) -> None:
    code, output = doctor(tmp_path, CPU)
    assert code == 0
    assert "⚠ torch 2.13.0+cpu sees no GPU" in output


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("", "DISCORD_TOKEN is not set"),
        ("not-a-token-at-all-but-quite-long-indeed-yes", "does not look like a bot token"),
        (f"Bot {TOKEN}", "starts with 'Bot '"),
        (f'"{TOKEN}"', "wrapped in quotes"),
    ],
)
def test_a_bad_token_fails_without_being_printed(tmp_path: Path, token: str, words: str) -> None:
    code, output = doctor(tmp_path, DISCORD_TOKEN=token)
    assert code == 1
    assert "✘ DISCORD_TOKEN" in output
    assert words in output
    assert "fix:" in output
    if token:
        assert token not in output
        assert token.strip('"').removeprefix("Bot ") not in output


def test_other_bad_settings_show_the_settings_error(tmp_path: Path) -> None:
    code, output = doctor(tmp_path, MAX_QUEUED="lots", LOG_FORMAT="xml")
    assert code == 1
    assert "✘ MAX_QUEUED='lots' is not valid: use a whole number above 0" in output
    assert "LOG_FORMAT" in output


def test_asking_for_a_missing_gpu_fails(tmp_path: Path) -> None:
    code, output = doctor(tmp_path, CPU, DEVICE="cuda")
    assert code == 1
    assert "DEVICE=cuda, but torch 2.13.0+cpu sees no such GPU" in output


def test_a_missing_local_model_is_reported_with_a_fix(tmp_path: Path) -> None:
    code, output = doctor(tmp_path, models='\n[models.mine]\nsource = "./not-here"\n')
    assert code == 1
    assert f"✘ mine: the folder {tmp_path / 'not-here'} does not exist" in output
    assert "fix: fix 'source' in MODELS_FILE" in output


def test_a_folder_without_model_index_is_reported(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    code, output = doctor(tmp_path, models='\n[models.mine]\nsource = "./weights"\n')
    assert code == 1
    assert "is not a diffusers folder (no model_index.json)" in output


def test_a_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    code, output = doctor(tmp_path, models='\n[models.old]\nsource = "./old.ckpt"\n')
    assert code == 1
    assert "pickled checkpoint" in output
    assert ".safetensors" in output


def test_hub_models_report_whether_they_are_downloaded(tmp_path: Path) -> None:
    models = (
        '\n[models.turbo]\nsource = "stabilityai/sd-turbo"\nfamily = "sd15"\nvariant = "fp16"\n'
    )
    code, output = doctor(tmp_path, models=models)
    assert code == 0
    assert "⚠ turbo: stabilityai/sd-turbo is not downloaded yet" in output
    assert 'hf download stabilityai/sd-turbo --include "*.json"' in output

    # Lay out the cache the way huggingface_hub does, under HF_HOME.
    snapshot = tmp_path / "hf" / "hub" / "models--stabilityai--sd-turbo" / "snapshots" / "abc"
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}", encoding="utf-8")
    (snapshot / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"0" * 10)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc", encoding="utf-8")
    code, output = doctor(tmp_path, models=models)
    assert "✔ turbo: stabilityai/sd-turbo is downloaded" in output

    code, output = doctor(
        tmp_path, models=models.replace("sd-turbo", "sdxl-turbo"), **{"HF_HUB_OFFLINE": "1"}
    )
    assert code == 1
    assert "HF_HUB_OFFLINE is set" in output


def test_a_models_own_unet_file_is_checked(tmp_path: Path) -> None:
    models = (
        '[models.fast]\nsource = "builtin:tiny"\nunet = "./gone.safetensors"\n'
        '[models.hub-fast]\nsource = "builtin:tiny-xl"\nunet = "someone/fast"\n'
        'unet_weight_name = "fast_unet.safetensors"\n'
    )
    code, output = doctor(tmp_path, models=models)
    assert code == 1
    assert "✘ fast: its UNet file" in output and "gone.safetensors does not exist" in output
    assert "⚠ hub-fast: its UNet fast_unet.safetensors (someone/fast) is not downloaded" in output
    assert "hf download someone/fast fast_unet.safetensors" in output


def test_hub_cache_follows_the_huggingface_variables(tmp_path: Path) -> None:
    assert hub_cache_dir({"HF_HOME": "/models"}) == Path("/models/hub")
    assert hub_cache_dir({"HF_HOME": "/models", "HF_HUB_CACHE": "/c"}) == Path("/c")
    assert hub_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")


def _database(tmp_path: Path, version: int, app_id: int = APPLICATION_ID) -> None:
    path = tmp_path / "data" / "diffusion-chat.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute(f"PRAGMA application_id = {app_id}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    conn.commit()
    conn.close()


def test_a_newer_database_schema_is_reported(tmp_path: Path) -> None:
    _database(tmp_path, LATEST_VERSION + 1)
    code, output = doctor(tmp_path)
    assert code == 1
    assert f"database schema version {LATEST_VERSION + 1} is newer than this code" in output
    assert "restore the backup" in output


def test_an_older_database_schema_is_a_warning(tmp_path: Path) -> None:
    _database(tmp_path, 1)
    code, output = doctor(tmp_path)
    assert code == 0
    assert f"database schema version 1; this code needs {LATEST_VERSION}" in output
    assert "diffusion-chat migrate" in output


def test_a_current_schema_and_a_foreign_database(tmp_path: Path) -> None:
    _database(tmp_path, LATEST_VERSION)
    assert "database schema is up to date" in doctor(tmp_path)[1]
    _database(tmp_path, 3, app_id=0x1234)
    code, output = doctor(tmp_path)
    assert code == 1
    assert "is not a Diffusion Chat database" in output


def test_a_postgres_database_is_named_without_its_password(tmp_path: Path) -> None:
    code, output = doctor(tmp_path, DATABASE_URL="postgresql://bot:hunter2@db:5432/chat")
    assert code == 0, output
    assert "database: PostgreSQL at postgresql://bot:***@db:5432/chat (DATABASE_URL)" in output
    assert "hunter2" not in output


def test_data_dir_that_is_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    code, output = doctor(tmp_path, DATA_DIR=str(tmp_path / "file"))
    assert code == 1
    assert "is a file" in output


def test_ascii_output_when_the_terminal_cannot_show_symbols(tmp_path: Path) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    code = run_doctor(
        {
            "DISCORD_TOKEN": "",
            "DATA_DIR": str(tmp_path),
            "MODELS_FILE": str(tiny_registry(tmp_path)),
        },
        None,
        out=stream,
        torch_probe=lambda: CPU,
    )
    stream.flush()
    assert code == 1
    assert b"[XX] DISCORD_TOKEN is not set" in raw.getvalue()


def _bot_database(tmp_path: Path) -> Path:
    """A database written by the bot's own storage, closed, with one stored image."""
    import asyncio

    from core.storage import Database

    async def build() -> None:
        async with Database.open_data_dir(tmp_path / "data") as db:
            await db.guilds.add_banned_words(1, [f"w{n} {'x' * 60}" for n in range(300)])
            assert db.files is not None
            await db.files.put(b"\x89PNG\r\n\x1a\n" + b"0" * 64, ext="png")

    asyncio.run(build())
    return tmp_path / "data" / "diffusion-chat.sqlite3"


def test_the_doctor_writes_nothing_beside_the_database(tmp_path: Path) -> None:
    path = _bot_database(tmp_path)
    before = sorted(p.name for p in path.parent.iterdir()), path.read_bytes()
    code, output = doctor(tmp_path)
    assert code == 0, output
    assert "database schema is up to date" in output
    assert (sorted(p.name for p in path.parent.iterdir()), path.read_bytes()) == before


def test_the_doctor_reads_a_database_the_bot_has_open(tmp_path: Path) -> None:
    path = _bot_database(tmp_path)
    bot = sqlite3.connect(path)  # as the running bot: in WAL mode, holding the -wal file
    bot.execute("PRAGMA journal_mode = WAL")
    bot.execute("INSERT INTO banned_words (guild_id, word, created_at) VALUES (1, 'new', 'now')")
    bot.commit()
    try:
        code, output = doctor(tmp_path)
    finally:
        bot.close()
    assert code == 0, output
    assert "database schema is up to date" in output


def test_a_damaged_or_emptied_database_fails(tmp_path: Path) -> None:
    path = _bot_database(tmp_path)
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2 // 4096 * 4096)
    code, output = doctor(tmp_path)
    assert code == 1
    assert "is damaged" in output or "cannot be read" in output
    path.write_bytes(b"")
    code, output = doctor(tmp_path)
    assert code == 1
    assert "is empty or missing, but" in output and "holds stored images" in output


def test_the_documented_doctor_output_matches_this_code() -> None:
    from engine.registry import ModelRegistry

    docs = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text("utf-8")
    sample = docs.split("Diffusion Chat doctor (settings", 1)[1].split("```", 1)[0]
    assert f"database schema is up to date (version {LATEST_VERSION})" in sample
    shown = re.findall(r"^  [✔⚠✘] ([\w-]+): ", sample, re.MULTILINE)
    assert list(dict.fromkeys(shown)) == ModelRegistry.load().names()  # a model may take 2 lines


def test_the_api_alone_needs_no_discord_token(tmp_path: Path) -> None:
    code, output = doctor(tmp_path, DISCORD_TOKEN="", API_PORT="8080")
    assert code == 0, output
    assert "only the HTTP API runs" in output
    assert "HTTP API on http://127.0.0.1:8080/api/docs" in output
    code, output = doctor(tmp_path, DISCORD_TOKEN="")
    assert code == 1 and "DISCORD_TOKEN is not set" in output


def test_the_image_check_model_is_checked(tmp_path: Path) -> None:
    _, output = doctor(tmp_path, NSFW_MODEL="off")
    assert "⚠ image check: off (NSFW_MODEL=off)" in output
    _, output = doctor(tmp_path, NSFW_MODEL=str(tmp_path / "no-such-folder"))
    assert "✘ image check: " in output and "no-such-folder is not a transformers model" in output
    _, output = doctor(tmp_path, NSFW_MODEL="someone/nsfw", HF_HUB_OFFLINE="1")
    assert "✘ image check: someone/nsfw is not downloaded, and HF_HUB_OFFLINE is set" in output
    _, output = doctor(tmp_path, NSFW_MODEL="someone/nsfw")
    assert "⚠ image check: someone/nsfw is not downloaded yet" in output


def test_an_image_bucket_is_described_without_its_keys(tmp_path: Path) -> None:
    s3 = {"S3_BUCKET": "chat-images", "S3_ENDPOINT_URL": "http://127.0.0.1:9000"}
    code, output = doctor(
        tmp_path, GPU, **s3, S3_ACCESS_KEY_ID="AKIAEXAMPLE", S3_SECRET_ACCESS_KEY="s3cr3t"
    )
    assert code == 0, output
    assert "· images in S3 bucket 'chat-images' at http://127.0.0.1:9000;" in output
    assert "AKIAEXAMPLE" not in output and "s3cr3t" not in output
    code, output = doctor(tmp_path, GPU, **s3, S3_SECRET_ACCESS_KEY="s3cr3t")
    assert code == 1 and "only one of S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY" in output
    assert "s3cr3t" not in output
    _, output = doctor(tmp_path, GPU)
    assert "images in S3" not in output
