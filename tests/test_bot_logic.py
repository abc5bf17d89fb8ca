"""Pure bot logic: settings validation, inline prompt parameters, edit pacing, rendering."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest

from bot.actions import issued_at
from bot.render import clip, duration, progress_bar, progress_line, queued_line, seeds_text
from bot.throttle import ThrottledEditor
from core.config import DISCORD_API, SettingsError, load_settings
from core.errors import UserError
from core.prompts import closest_aspect, parse_inline

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz012345678"


def test_settings_defaults_and_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"DISCORD_TOKEN={TOKEN}\nMAX_QUEUED=7\n")
    settings = load_settings({"DEV_GUILD_ID": "42"}, env_file)
    assert settings.discord_token == TOKEN
    assert settings.discord_api_base_url == DISCORD_API
    assert settings.max_queued == 7
    assert settings.dev_guild_id == 42
    assert TOKEN not in repr(settings)


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"DISCORD_TOKEN={TOKEN}\nMAX_QUEUED=7\n")
    assert load_settings({"MAX_QUEUED": "9"}, env_file).max_queued == 9


def test_every_bad_setting_is_named_with_its_fix() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(
            {
                "DISCORD_TOKEN": "Bot not-a-token",
                "DISCORD_API_BASE_URL": "discord.com",
                "MAX_QUEUED": "many",
                "LOG_FORMAT": "xml",
                "MODELS_FILE": "/nonexistent/models.toml",
            },
            env_file=None,
        )
    message = str(raised.value)
    for name in ("DISCORD_TOKEN", "DISCORD_API_BASE_URL", "MAX_QUEUED", "LOG_FORMAT"):
        assert name in message
    assert "MODELS_FILE" in message
    assert "not-a-token" not in message  # a token, even a wrong one, is never echoed


def test_database_url_selects_postgresql_and_is_never_shown(tmp_path: Path) -> None:
    sqlite = load_settings({"DATA_DIR": str(tmp_path)}, env_file=None, require_token=False)
    assert sqlite.database_url is None
    assert sqlite.database == tmp_path / "diffusion-chat.sqlite3"
    url = "PostgreSQL://bot:hunter2@db:5432/chat"
    settings = load_settings({"DATABASE_URL": url}, env_file=None, require_token=False)
    assert settings.database == "postgresql://bot:hunter2@db:5432/chat"
    assert "hunter2" not in repr(settings)
    with pytest.raises(SettingsError) as raised:
        load_settings(
            {"DATABASE_URL": "mysql://bot:hunter2@db/chat"}, env_file=None, require_token=False
        )
    assert "DATABASE_URL" in str(raised.value) and "hunter2" not in str(raised.value)


def test_owners_and_the_model_size_limit_are_read_and_checked(tmp_path: Path) -> None:
    defaults = load_settings({}, env_file=None, require_token=False)
    assert defaults.owner_ids == () and defaults.model_max_bytes == 8 * 2**30
    assert defaults.custom_models_dir == defaults.data_dir / "models"
    settings = load_settings(
        {"OWNER_IDS": " 123, 456 ,", "MODEL_MAX_BYTES": "500MiB", "DATA_DIR": str(tmp_path)},
        env_file=None,
        require_token=False,
    )
    assert settings.owner_ids == (123, 456) and settings.model_max_bytes == 500 * 2**20
    assert settings.custom_models_dir == tmp_path / "models"
    for raw, size in (("2G", 2 * 2**30), ("1.5GiB", 3 * 2**29), ("4096", 4096), ("64 kb", 2**16)):
        assert (
            load_settings({"MODEL_MAX_BYTES": raw}, None, require_token=False).model_max_bytes
            == size
        )
    with pytest.raises(SettingsError) as raised:
        load_settings(
            {"OWNER_IDS": "me", "MODEL_MAX_BYTES": "-1G"}, env_file=None, require_token=False
        )
    assert "OWNER_IDS" in str(raised.value) and "MODEL_MAX_BYTES" in str(raised.value)


def test_missing_token_says_where_to_get_one() -> None:
    with pytest.raises(SettingsError, match="developer portal"):
        load_settings({}, env_file=None)


def test_inline_parameters_are_parsed() -> None:
    parsed = parse_inline("a red fox in snow --ar 16:9 --no blur, text --seed 42 --steps 20")
    assert parsed.prompt == "a red fox in snow"
    assert parsed.aspect == "16:9"
    assert parsed.negative == "blur, text"
    assert parsed.seed == 42
    assert parsed.steps == 20
    assert parsed.notes == ()


def test_inline_parameters_typed_on_a_phone_with_dashes_are_understood() -> None:
    parsed = parse_inline("a cat \u2014ar 16:9 \u2013no dogs \u2014seed 7")
    assert (parsed.prompt, parsed.aspect, parsed.negative, parsed.seed) == (
        "a cat",
        "16:9",
        "dogs",
        7,
    )
    # A dash with a space after it is punctuation, not a flag.
    assert parse_inline("a cat \u2014 and a dog").prompt == "a cat \u2014 and a dog"


def test_inline_parameters_unknown_flags_and_rounding_are_reported() -> None:
    parsed = parse_inline("castle --v 6 --ar 4:3")
    assert parsed.prompt == "castle"
    assert parsed.aspect == "3:2"
    assert any("--v" in str(note) for note in parsed.notes)
    assert any("4:3" in str(note) for note in parsed.notes)


def test_prompt_without_flags_keeps_double_dashes_inside_words() -> None:
    assert parse_inline("well--known place").prompt == "well--known place"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x --seed abc", "whole number"),
        ("x --steps 0", "between 1 and 150"),
        ("x --ar wide", "aspect ratio"),
        ("x --ar 0:1", "aspect ratio"),
    ],
)
def test_bad_inline_parameters_are_user_errors(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_inline(text)


def test_closest_aspect_exact() -> None:
    assert closest_aspect("9:16") == ("9:16", None)


def test_rendering() -> None:
    assert progress_bar(5, 10, width=10) == "█████░░░░░"
    assert "50%" in progress_line(10, 20, 3.2)
    assert "step 10/20" in progress_line(10, 20, None)
    assert "next in line" in queued_line(1, None)
    assert "position 3" in queued_line(3, 65)
    assert duration(65) == "1 min 5 s"
    assert seeds_text((5, 6, 7, 8)) == "seeds 5–8"
    assert seeds_text((9,)) == "seed 9"
    assert len(clip("x" * 3000, 2000)) == 2000


@pytest.mark.asyncio
async def test_throttled_editor_paces_coalesces_and_never_drops_the_last() -> None:
    sent: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()

    async def send(state: str) -> None:
        sent.append((loop.time(), state))

    editor: ThrottledEditor[str] = ThrottledEditor(send, interval=0.1)
    started = loop.time()
    for i in range(20):
        editor.update(f"step {i}")
        await asyncio.sleep(0.01)
    editor.update("step 19")  # unchanged: no extra edit
    await editor.finish("done")
    states = [state for _, state in sent]
    assert states[-1] == "done"
    # One edit per 0.1 s of however long the updates took on this machine, plus the final one.
    assert len(sent) <= (sent[-1][0] - started) / 0.1 + 2
    assert len(sent) < 20  # coalesced
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(sent)]
    assert all(gap >= 0.095 for gap in gaps)
    assert len(states) == len(set(states))


@pytest.mark.asyncio
async def test_throttled_editor_survives_a_failed_progress_edit() -> None:
    calls: list[str] = []

    tried = asyncio.Event()

    async def send(state: str) -> None:
        calls.append(state)
        if state == "bad":
            tried.set()
            raise RuntimeError("429")

    editor: ThrottledEditor[str] = ThrottledEditor(send, interval=0.01)
    editor.update("bad")
    await asyncio.wait_for(tried.wait(), 10)
    await editor.finish("final")
    assert calls == ["bad", "final"]


def test_interaction_time_falls_back_to_now_when_its_id_disagrees_with_the_clock() -> None:
    now = discord.utils.utcnow()
    recent = SimpleNamespace(created_at=now - dt.timedelta(seconds=0.4))
    assert issued_at(recent) == recent.created_at  # type: ignore[arg-type]
    # Ids from a proxy with its own numbering, or a badly skewed clock: the token's 15
    # minutes are counted from now, not from 2015.
    for skewed in (now - dt.timedelta(days=3000), now + dt.timedelta(hours=2)):
        taken = issued_at(SimpleNamespace(created_at=skewed))  # type: ignore[arg-type]
        assert abs((taken - now).total_seconds()) < 5


@pytest.mark.asyncio
async def test_a_model_download_longer_than_the_interaction_ends_in_a_direct_message() -> None:
    from cogs.moderation import _tell_outcome

    edits: list[str] = []
    direct: list[str] = []

    async def edit(text: str) -> None:
        edits.append(text)

    async def send(text: str) -> None:
        direct.append(text)

    editor: ThrottledEditor[str] = ThrottledEditor(edit, 0)
    now = discord.utils.utcnow()
    fresh: Any = SimpleNamespace(created_at=now, user=SimpleNamespace(send=send))
    await _tell_outcome(fresh, editor, "added")
    assert edits == ["added"] and direct == []
    stale: Any = SimpleNamespace(
        created_at=now - dt.timedelta(minutes=20), user=SimpleNamespace(send=send)
    )
    await _tell_outcome(stale, editor, "added late")
    assert edits == ["added"] and direct == ["added late"]
