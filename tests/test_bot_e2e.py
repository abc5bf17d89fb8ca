"""The bot as users meet it: `python -m bot` in its own process, the tiny model, and the fake
Discord over real sockets. Every REST body is checked against Discord's OpenAPI spec."""

from __future__ import annotations

import asyncio
import io
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from fakediscord.process import BotProcess, start_bot_process
from fakediscord.server import FakeDiscord
from PIL import Image

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[1]


def bot_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "DATA_DIR": str(data_dir),
        "DEFAULT_MODEL": "tiny",
        "PREVIEW_EVERY": "2",
        "PROGRESS_EDIT_INTERVAL_S": "0.3",
        "LOG_LEVEL": "INFO",
        "DEFAULT_DAILY_IMAGES": "40",
        **extra,
    }


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[FakeDiscord, BotProcess, Path]]:
    data_dir = tmp_path_factory.mktemp("bot-data")
    fake = FakeDiscord()
    await fake.start()
    bot = await start_bot_process(fake, env=bot_env(data_dir), cwd=ROOT)
    try:
        await wait_for(lambda: fake.sync_count() > 0 and fake.session is not None, bot, 60)
        yield fake, bot, data_dir
    finally:
        await bot.stop()
        await fake.stop()


async def wait_for(predicate: Any, bot: BotProcess, limit_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not predicate():
        if bot.returncode is not None:
            raise AssertionError(f"bot exited {bot.returncode}:\n{bot.output[-4000:]}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out; bot output:\n{bot.output[-4000:]}")
        await asyncio.sleep(0.05)


def has_result(message: Any) -> bool:
    return bool(
        message
        and message.attachments
        and any(
            c
            for row in message.components
            for c in row.get("components", [])
            if c.get("label") == "U1" or c.get("emoji", {}).get("name") == "⭐"
        )
    )


def labels(message: Any) -> list[str]:
    out = []
    for row in message.components:
        for component in row.get("components", []):
            out.append(component.get("label") or component.get("emoji", {}).get("name", ""))
    return out


async def imagine(fake: FakeDiscord, bot: BotProcess, **options: Any) -> Any:
    user = options.pop("user", None)
    member = getattr(fake, user) if isinstance(user, str) else user
    ix = await fake.send_slash_command("imagine", options, user=member)
    await ix.response()
    return ix


async def test_imagine_to_finished_grid(world: tuple[FakeDiscord, BotProcess, Path]) -> None:
    fake, bot, _ = world
    ix = await imagine(fake, bot, prompt="a red fox in snow --ar 3:2", seed=42)
    assert ix.ack_latency is not None and ix.ack_latency < 3.0
    message = await ix.wait_for_original(has_result, timeout=60)
    assert labels(message)[:8] == ["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4"]
    grid = Image.open(io.BytesIO(message.attachments[0].data))
    grid.load()
    assert grid.width > grid.height  # 3:2 images in a 2x2 grid
    versions = message.versions
    assert len(versions) >= 2  # progress edits before the result
    embed = message.embeds[0]
    assert "seeds 42–45" in embed["description"]
    assert "left for you today" in embed["footer"]["text"]


async def test_moderator_sets_quota_and_user_over_it_is_told_when_it_resets(
    world: tuple[FakeDiscord, BotProcess, Path],
) -> None:
    fake, bot, _ = world
    ix = await fake.send_slash_command(
        "quota set", {"user": fake.bob, "daily_images": "4"}, user=fake.moderator
    )
    await ix.response()
    reply = ix.original or await ix.wait_for_original(lambda m: True, timeout=10)
    assert reply.ephemeral and "4 images a day" in reply.content
    first = await imagine(fake, bot, prompt="within quota", count=4, user="bob")
    await first.wait_for_original(has_result, timeout=60)
    second = await imagine(fake, bot, prompt="over quota", count=1, user="bob")
    refusal = second.original or await second.wait_for_original(lambda m: True, timeout=10)
    assert refusal.ephemeral
    assert "all 4 of your images" in refusal.content and "resets" in refusal.content


async def test_non_moderator_cannot_set_quotas(
    world: tuple[FakeDiscord, BotProcess, Path],
) -> None:
    fake, _, _ = world
    ix = await fake.send_slash_command(
        "quota set", {"daily_images": "1000"}, user=fake.alice, respect_permissions=False
    )
    await ix.response()
    reply = ix.original or await ix.wait_for_original(lambda m: True, timeout=10)
    assert reply.ephemeral and "Manage Server" in reply.content


async def test_bad_input_gets_clear_ephemeral_messages(
    world: tuple[FakeDiscord, BotProcess, Path],
) -> None:
    fake, _, _ = world
    ix = await fake.send_slash_command("imagine", {"prompt": "x" * 5000})
    await ix.response()
    reply = ix.original or await ix.wait_for_original(lambda m: True, timeout=10)
    assert reply.ephemeral and "characters" in reply.content
    ix = await fake.send_slash_command("imagine", {"prompt": "castle --seed banana"})
    await ix.response()
    reply = ix.original or await ix.wait_for_original(lambda m: True, timeout=10)
    assert "whole number" in reply.content


async def test_kill_mid_job_and_restart_finishes_once(
    world: tuple[FakeDiscord, BotProcess, Path],
) -> None:
    fake, bot, data_dir = world
    del bot
    second_dir = data_dir.parent / "restart-data"
    env = bot_env(second_dir, PROGRESS_EDIT_INTERVAL_S="0.1")
    proc = await start_bot_process(fake, env=env, cwd=ROOT)
    try:
        await asyncio.sleep(0)
        await wait_for(lambda: fake.session is not None, proc, 60)
        ix = await fake.send_slash_command("imagine", {"prompt": "a slow one", "steps": 40})
        await ix.response()
        await ix.wait_for_original(lambda m: "step" in str(m.embeds), timeout=60)
        proc.kill(signal.SIGKILL)
        await proc.wait()
        proc = await start_bot_process(fake, env=env, cwd=ROOT)
        message = await ix.wait_for_original(has_result, timeout=90)
        channel_results = [
            m
            for m in fake.messages(message.channel_id)
            if has_result(m) and "a slow one" in str(m.embeds)
        ]
        assert len(channel_results) == 1
    finally:
        await proc.stop()
