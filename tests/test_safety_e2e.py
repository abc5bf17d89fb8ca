"""The image check end to end: the bot as its own process, with a tiny random classifier as
NSFW_MODEL and the threshold forced to flag (then not to flag) every image; moderators
choosing blur or block, an age-restricted channel, the audit log and releasing an image."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from api_support import PREFIX, auth, start_api
from e2e_support import (
    World,
    assert_no_problems,
    imagine,
    is_result,
    job_by_message,
    reply_text,
    stand_in,
    start_world,
    stop_world,
)
from fakediscord.faults import Routes
from fakediscord.models import StoredMessage
from foreign_models import save_tiny_nsfw_classifier

pytestmark = pytest.mark.asyncio(loop_scope="module")
FLAG_EVERYTHING = "0.01"  # the tiny classifier scores every image near 0.5


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_nsfw_classifier(tmp_path_factory.mktemp("nsfw") / "tiny-nsfw")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, classifier: Path) -> AsyncIterator[World]:
    started = await start_world(
        tmp_path_factory.mktemp("bot-data"),
        NSFW_MODEL=str(classifier),
        NSFW_THRESHOLD=FLAG_EVERYTHING,
    )
    try:
        yield started
    finally:
        await stop_world(started)


@pytest.fixture(autouse=True)
def no_problems(world: World) -> Any:
    yield
    assert_no_problems(world)


def query(world: World, sql: str, *params: object) -> list[tuple[Any, ...]]:
    database = world.data_dir / "diffusion-chat.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return db.execute(sql, params).fetchall()


def spent_today(world: World, user_id: int) -> int:
    ((spent,),) = query(
        world,
        "SELECT coalesce(sum(CASE entry WHEN 'spend' THEN images WHEN 'refund' THEN -images END),"
        " 0) FROM usage_ledger WHERE user_id = ?",
        user_id,
    )
    return int(spent)


async def moderate(world: World, subcommand: str, **options: object) -> StoredMessage:
    fake = world.fake
    answer = await reply_text(
        await fake.send_slash_command(f"safety {subcommand}", options, user=fake.moderator)
    )
    assert answer.ephemeral
    return answer


def held_back(message: StoredMessage) -> bool:
    return "held back" in message.text()


async def test_flagged_images_are_held_back_by_default_and_not_charged(world: World) -> None:
    fake = world.fake
    before = spent_today(world, fake.alice.id)
    ix = await fake.send_slash_command("imagine", {"prompt": "a quiet beach", "count": 2})
    await ix.response()
    message = await ix.wait_for_original(held_back, timeout=90)
    assert not message.attachments and not message.button_labels
    assert "#1, #2" in message.text() and "not counted against your quota" in message.text()
    job = job_by_message(world.data_dir, message.id)
    assert job["status"] == "done"
    assert spent_today(world, fake.alice.id) == before  # two made, both given back
    assert query(world, "SELECT count(*) FROM images WHERE job_id = ?", job["id"]) == [(0,)]
    logged = query(
        world,
        "SELECT idx, action, user_id, prompt, score FROM safety_log WHERE job_id = ? ORDER BY idx",
        job["id"],
    )
    assert [row[:4] for row in logged] == [
        (0, "blocked", fake.alice.id, "a quiet beach"),
        (1, "blocked", fake.alice.id, "a quiet beach"),
    ]
    assert all(0.0 < row[4] < 1.0 for row in logged)


async def test_moderators_read_the_log_and_release_a_held_back_image(world: World) -> None:
    fake = world.fake
    ix = await fake.send_slash_command("imagine", {"prompt": "a red kite", "count": 1})
    await ix.response()
    message = await ix.wait_for_original(held_back, timeout=90)
    job = job_by_message(world.data_dir, message.id)
    ((entry,),) = query(world, "SELECT id FROM safety_log WHERE job_id = ?", job["id"])

    log = await moderate(world, "log", count=5)
    text = log.text()
    assert f"**#{entry}**" in text and "a red kite" in text and f"<@{fake.alice.id}>" in text
    assert "held back" in text

    refused = await reply_text(
        await fake.send_slash_command("safety log", user=fake.bob, respect_permissions=False)
    )
    assert refused.ephemeral and "Only moderators" in refused.content
    assert "no entry #999999" in (await moderate(world, "release", entry=999999)).content

    released = await moderate(world, "release", entry=entry)
    assert f"Released #{entry}" in released.content
    (file,) = released.attachments
    assert file.filename.startswith("SPOILER_") and file.data.startswith(b"\x89PNG")
    assert query(world, "SELECT idx FROM images WHERE job_id = ?", job["id"]) == [(0,)]
    again = await moderate(world, "release", entry=entry)
    assert "released already" in again.content
    log = await moderate(world, "log", count=5)
    assert f"released by <@{fake.moderator.id}>" in log.text()


async def test_blur_posts_a_spoiler_and_age_restricted_channels_post_as_is(
    world: World,
) -> None:
    fake = world.fake
    answer = await moderate(world, "set", action="blur")
    assert "Elsewhere in this server: blurred, as a spoiler" in answer.content
    try:
        before = spent_today(world, fake.alice.id)
        _, message = await imagine(world, prompt="a green hill", count=2)
        (grid,) = message.attachments
        assert grid.filename.startswith("SPOILER_")
        assert "shown blurred, as a spoiler" in message.text()
        assert {"U1", "U2", "V1", "V2"} <= set(message.button_labels)
        assert spent_today(world, fake.alice.id) == before + 2  # posted, so charged
        job = job_by_message(world.data_dir, message.id)
        assert query(world, "SELECT count(*) FROM images WHERE job_id = ?", job["id"]) == [(2,)]

        # A channel override wins over the server's action.
        quiet = await fake.create_channel(fake.guild, "quiet")
        answer = await moderate(world, "set", action="block", channel=quiet)
        assert f"In <#{quiet.id}>: held back" in answer.content
        ix = await fake.send_slash_command(
            "imagine", {"prompt": "a grey hill", "count": 1}, channel=quiet
        )
        await ix.response()
        await ix.wait_for_original(held_back, timeout=90)

        adults = await fake.create_channel(fake.guild, "after-dark", nsfw=True)
        ix = await fake.send_slash_command(
            "imagine", {"prompt": "a dark hill", "count": 2}, channel=adults
        )
        await ix.response()
        message = await ix.wait_for_original(is_result, timeout=90)
        (grid,) = message.attachments
        assert not grid.filename.startswith("SPOILER_")
        assert "image check" not in message.text()
        job = job_by_message(world.data_dir, message.id)
        assert query(world, "SELECT count(*) FROM safety_log WHERE job_id = ?", job["id"]) == [(0,)]
    finally:
        await moderate(world, "set", action="default")
    assert "Elsewhere in this server: held back" in (await moderate(world, "show")).content


async def test_a_result_shown_again_from_storage_keeps_its_verdicts(world: World) -> None:
    fake = world.fake
    await moderate(world, "set", action="blur")
    refused = fake.faults.error(
        Routes.EDIT_FOLLOWUP,
        status=400,
        message="Invalid Form Body",
        when=lambda info: "dc:1:up:" in str((info.json or {}).get("components")),
    )
    try:
        ix = await fake.send_slash_command("imagine", {"prompt": "a foggy pier", "count": 2})
        await ix.response()
        shown = await ix.wait_for_original(is_result, timeout=90)
        assert refused.hits == 1 and "delivery failed" in world.bot.output
        (grid,) = shown.attachments
        assert grid.filename.startswith("SPOILER_")
        assert "shown blurred, as a spoiler" in shown.text()
    finally:
        refused.times = 0
        await moderate(world, "set", action="default")


async def test_below_the_threshold_images_are_posted_as_they_are(
    world: World, classifier: Path
) -> None:
    async with stand_in(world, NSFW_MODEL=str(classifier), NSFW_THRESHOLD="1"):
        _, message = await imagine(world, prompt="a calm lake", count=2)
        (grid,) = message.attachments
        assert not grid.filename.startswith("SPOILER_")
        assert "image check" not in message.text()


async def test_the_api_says_which_images_were_held_back(tmp_path: Path, classifier: Path) -> None:
    api = await start_api(
        tmp_path / "api-data", NSFW_MODEL=str(classifier), NSFW_THRESHOLD=FLAG_EVERYTHING
    )
    try:
        key = api.new_key()
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{api.base}{PREFIX}/generate",
                json={"prompt": "a windy cliff", "steps": 2, "count": 2},
                headers={**auth(key), "Prefer": "wait=60"},
            ) as answer:
                assert answer.status == 200
                job = await answer.json()
            async with http.get(job["urls"]["get"], headers=auth(key)) as answer:
                again = await answer.json()
    finally:
        await api.stop()
    for seen in (job, again):
        assert seen["status"] == "succeeded"
        assert seen["output"] is None and seen["withheld"] == [0, 1]
    database = tmp_path / "api-data" / "diffusion-chat.sqlite3"
    with contextlib.closing(sqlite3.connect(database)) as db:
        entries = db.execute(
            "SELECT entry, images FROM usage_ledger WHERE job_id = ? ORDER BY entry", (job["id"],)
        ).fetchall()
    assert entries == [("refund", 2), ("spend", 2)]
