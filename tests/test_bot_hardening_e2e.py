"""Jobs that are never stranded or generated twice, and buttons that always answer and act only
for those who may see their job: the bot as its own process against the fake Discord."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    ROOT,
    World,
    click_id,
    imagine,
    is_grid,
    is_result,
    reply_text,
    stand_in,
)
from fakediscord.faults import RequestInfo, Routes
from fakediscord.interactions import InteractionHandle
from fakediscord.models import StoredMessage

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("no_problems")]

FAULTS = str(ROOT / "tests" / "storage_faults")


def job_row(data_dir: Path, prompt: str) -> sqlite3.Row:
    """The job's record, read as another process would (read-only, beside the bot)."""
    with sqlite3.connect(f"file:{data_dir / 'diffusion-chat.sqlite3'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT jobs.*, (SELECT count(*) FROM images WHERE job_id = jobs.id) AS stored,"
            " (SELECT count(*) FROM usage_ledger WHERE job_id = jobs.id AND entry = 'refund')"
            " AS refunded FROM jobs WHERE prompt = ?",
            (prompt,),
        ).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


async def recorded(world: World, data_dir: Path, prompt: str) -> sqlite3.Row:
    """The job's record once its outcome is recorded as shown to the user."""
    await world.fake.wait_for(
        lambda: job_row(data_dir, prompt)["delivered_at"],
        timeout=30,
        description=f"{prompt!r} recorded as delivered",
    )
    return job_row(data_dir, prompt)


def job_id_of(message: StoredMessage) -> str:
    for row in message.components:
        for button in row.get("components", []):
            if match := re.fullmatch(r"dc:1:[a-z]+:([A-Za-z0-9_-]+)(:\d)?", button["custom_id"]):
                return match[1]
    raise AssertionError(f"no job button on {message!r}")


def shows_progress(embeds: list[dict[str, Any]]) -> bool:
    lines = [str(embed.get("description")) for embed in embeds]
    return any("%" in line or "Loading" in line for line in lines)


def is_result_edit(info: RequestInfo) -> bool:
    components = str((info.json or {}).get("components"))
    return "dc:1:up:" in components or "dc:1:vsub:" in components


# --- jobs and delivery ---------------------------------------------------------------------


async def test_a_result_waits_for_a_full_disk_and_arrives_once_it_has_room(world: World) -> None:
    fake = world.fake
    full = world.data_dir.parent / "disk-full"
    full.touch()
    data_dir = world.data_dir.parent / "full-disk-data"
    async with stand_in(
        world, DATA_DIR=str(data_dir), PYTHONPATH=FAULTS, FAULT_FULL_DISK_WHILE=str(full)
    ):
        ix = await fake.send_slash_command("imagine", {"prompt": "a full disk", "count": 1})
        await ix.response()
        saving = await ix.wait_for_original(lambda m: "Saving your images" in m.text(), timeout=60)
        assert not saving.buttons  # nothing left to cancel: the images exist
        assert job_row(data_dir, "a full disk")["status"] == "running"
        full.unlink()
        result = await ix.wait_for_original(is_result, timeout=60)
        assert "a full disk" in result.text()
        row = await recorded(world, data_dir, "a full disk")
        assert row["status"] == "done" and row["stored"] == 1


async def test_giving_up_on_storage_tells_the_user_and_records_it_when_storage_is_back(
    world: World,
) -> None:
    fake = world.fake
    full, locked = world.data_dir.parent / "full-2", world.data_dir.parent / "locked-2"
    full.touch()
    data_dir = world.data_dir.parent / "give-up-data"
    async with stand_in(
        world,
        DATA_DIR=str(data_dir),
        PYTHONPATH=FAULTS,
        FAULT_FULL_DISK_WHILE=str(full),
        FAULT_LOCKED_DB_WHILE=str(locked),
        RESULT_SAVE_GIVE_UP_S="1.5",
    ) as bot:
        ix = await fake.send_slash_command("imagine", {"prompt": "a lost cause", "count": 1})
        await ix.response()
        await ix.wait_for_original(lambda m: "Saving your images" in m.text(), timeout=60)
        locked.touch()  # the database goes too, before the bot gives up
        told = await ix.wait_for_original(lambda m: "could not be saved" in m.text(), timeout=60)
        assert not told.buttons and told.attachments  # what was made is still shown
        ref = re.search(r"ref ([0-9a-f]{8})", told.text())
        assert ref is not None and ref[1] in bot.proc.output  # type: ignore[union-attr]
        # Nothing could be recorded yet: the outcome waits for storage.
        assert job_row(data_dir, "a lost cause")["status"] == "running"
        full.unlink()
        locked.unlink()
        row = await recorded(world, data_dir, "a lost cause")
        assert row["status"] == "failed" and row["refunded"] == 1 and row["stored"] == 0


async def test_killed_as_its_result_is_posted_it_is_shown_again_not_generated(
    world: World,
) -> None:
    fake = world.fake
    data_dir = world.data_dir.parent / "posted-data"
    for route in (Routes.EDIT_ORIGINAL, Routes.EDIT_FOLLOWUP):
        fake.faults.delay(route, 20, when=is_result_edit)
    held = fake.faults.rules[-2:]
    try:
        async with stand_in(world, DATA_DIR=str(data_dir)) as bot:
            ix = await fake.send_slash_command("imagine", {"prompt": "posted once", "count": 2})
            await ix.response()
            await fake.wait_for(
                lambda: any(rule.hits for rule in held), timeout=60, description="the result"
            )
            # The result is on its way to Discord: by now it is recorded, images and all.
            row = job_row(data_dir, "posted once")
            assert row["status"] == "done" and row["stored"] == 2
            message = fake.get_message(ix.original_message_id or 0)
            assert message is not None
            versions = len(message.versions)
            await bot.crash_and_restart()
            shown = await ix.wait_for_original(is_result, timeout=60)
            after = shown.versions[versions:]
            assert after and not any(shows_progress(v.embeds) for v in after), after
            row = await recorded(world, data_dir, "posted once")
            assert row["attempts"] == 1
            assert "job started" not in bot.proc.output  # type: ignore[union-attr]
    finally:
        for rule in held:
            rule.times = 0


async def test_an_edit_discord_never_answers_does_not_hold_back_the_result(
    world: World,
) -> None:
    fake = world.fake
    # One progress edit gets no answer for ten minutes (aiohttp would wait five).
    stalled = fake.faults.delay(
        Routes.EDIT_FOLLOWUP, 600, when=lambda info: not is_result_edit(info)
    )
    try:
        ix = await fake.send_slash_command("imagine", {"prompt": "one edit stalls", "count": 1})
        await ix.response()
        shown = await ix.wait_for_original(is_result, timeout=90)
        assert stalled.hits == 1 and shown.attachments
    finally:
        stalled.times = 0


async def test_a_result_edit_that_fails_unexpectedly_is_shown_from_storage(world: World) -> None:
    fake = world.fake
    data_dir = world.data_dir
    refused = fake.faults.error(
        Routes.EDIT_FOLLOWUP, status=400, message="Invalid Form Body", when=is_result_edit
    )
    try:
        ix = await fake.send_slash_command("imagine", {"prompt": "refused once", "count": 1})
        await ix.response()
        shown = await ix.wait_for_original(is_result, timeout=60)
        assert refused.hits == 1 and shown.attachments
        row = await recorded(world, data_dir, "refused once")
        assert row["status"] == "done" and row["stored"] == 1
        assert "delivery failed" in world.bot.output
    finally:
        refused.times = 0


async def test_killed_right_after_the_answer_its_message_is_the_one_edited(world: World) -> None:
    fake = world.fake
    data_dir = world.data_dir.parent / "ack-data"
    async with stand_in(
        world, DATA_DIR=str(data_dir), PYTHONPATH=FAULTS, FAULT_SLOW_SET_MESSAGE_S="600"
    ) as bot:
        ix = await fake.send_slash_command("imagine", {"prompt": "answered then killed"})
        await ix.response()
        queued = await ix.wait_for_original(lambda m: "Cancel" in m.button_labels, timeout=30)
        # The answer is out, its message id not yet recorded.
        assert job_row(data_dir, "answered then killed")["message_id"] is None
        bot.env.pop("FAULT_SLOW_SET_MESSAGE_S")
        await bot.crash_and_restart()
        result = await ix.wait_for_original(is_grid, timeout=90)
        assert result.id == queued.id
        mine = [m for m in fake.messages(queued.channel_id) if "answered then killed" in m.text()]
        assert mine == [result]  # no second message, no ping
        assert job_row(data_dir, "answered then killed")["message_id"] == queued.id


async def test_a_button_no_longer_on_its_message_still_gets_an_answer(world: World) -> None:
    _, finished = await imagine(world, prompt="a stale cancel", count=1)
    assert "Cancel" not in finished.button_labels
    # As a client still showing the first version of the message would send it.
    [cancel] = [
        button["custom_id"]
        for row in finished.versions[0].components
        for button in row.get("components", [])
        if button.get("label") == "Cancel"
    ]
    reply = await reply_text(await click_id(world, finished, cancel, world.fake.alice))
    assert reply.ephemeral and "already finished" in reply.content


# --- who may see what ------------------------------------------------------------------------


async def test_crafted_buttons_cannot_reach_someone_elses_private_job(world: World) -> None:
    fake = world.fake
    _, secret = await imagine(world, prompt="a private diary", private=True, count=1)
    assert secret.ephemeral
    secret_id = job_id_of(secret)
    _, mine = await imagine(world, prompt="bob's own picture", count=1, user=fake.bob)
    for action in ("info", "fav", "re", "up", "var", "open", "see", "share", "unlist"):
        suffix = ":0" if action in ("up", "var", "open", "see") else ""
        click: InteractionHandle = await click_id(
            world, mine, f"dc:1:{action}:{secret_id}{suffix}", fake.bob
        )
        reply = await reply_text(click)
        assert reply.ephemeral and "no longer exists" in reply.content, action
        assert not reply.attachments and "diary" not in reply.content
    favourites = await reply_text(await fake.send_slash_command("favorites", user=fake.bob))
    assert "diary" not in str(favourites.embeds)
    leaked = [m for m in fake.messages(mine.channel_id) if "a private diary" in m.text()]
    assert [m.id for m in leaked] == [secret.id]  # only its own, ephemeral answer


async def test_delete_acts_only_on_its_own_jobs_message(world: World) -> None:
    fake = world.fake
    _, alices = await imagine(world, prompt="alice's keeper", count=1)
    _, bobs = await imagine(world, prompt="bob's throwaway", count=1, user=fake.bob)
    forged = f"dc:1:del:{job_id_of(bobs)}"
    refused = await reply_text(await click_id(world, alices, forged, fake.bob))
    assert refused.ephemeral and "does not belong to this message" in refused.content
    assert not alices.deleted
    own = await fake.click_button(bobs, emoji="🗑", user=fake.bob)
    await own.response()
    await fake.wait_for(lambda: bobs.deleted, timeout=10, description="bob's message deleted")


async def test_a_locked_database_says_busy_and_a_broken_one_gives_a_reference_to_quote(
    world: World,
) -> None:
    fake = world.fake
    locked = world.data_dir.parent / "locked-busy"
    broken = world.data_dir.parent / "broken-reads"
    data_dir = world.data_dir.parent / "busy-data"
    async with stand_in(
        world,
        DATA_DIR=str(data_dir),
        PYTHONPATH=FAULTS,
        FAULT_LOCKED_DB_WHILE=str(locked),
        FAULT_BROKEN_READS_WHILE=str(broken),
    ) as bot:
        _, grid = await imagine(world, prompt="before the lock", count=1)
        locked.touch()
        try:
            refused = await reply_text(
                await fake.send_slash_command("imagine", {"prompt": "during the lock"})
            )
            assert refused.ephemeral and "try again in a moment" in refused.content
            assert "Something went wrong" not in refused.content
            click = await fake.click_button(grid, emoji="🔄")
            await click.response()
            again = await click.wait_for_message(timeout=15)
            assert again.ephemeral and "try again in a moment" in again.content
        finally:
            locked.unlink()
        _, after = await imagine(world, prompt="after the lock", count=1)
        assert is_grid(after)
        # A failure nobody can fix by waiting: the user gets a reference, the log the cause.
        broken.touch()
        try:
            told = await reply_text(await fake.send_slash_command("favorites"))
        finally:
            broken.unlink()
        assert told.ephemeral and "Something went wrong" in told.content
        assert "disk I/O" not in told.content  # the cause is for the operator
        ref = re.search(r"quote `([0-9a-f]{8})`", told.content)
        assert ref is not None, told.content
        output = bot.proc.output  # type: ignore[union-attr]
        logged = output[output.index(f"unexpected error (ref {ref[1]})") :]
        assert "disk I/O error" in logged.split("unexpected error (ref", 2)[1]
        listing = await reply_text(await fake.send_slash_command("favorites"))
        assert "Something went wrong" not in listing.content


# --- every button on every shipped model's presets -------------------------------------------


def shipped_presets_on_tiny_weights(path: Path) -> list[str]:
    """The bundled registry's entries with their presets kept (steps, guidance, scheduler:
    what decides whether a derived job works) on the tiny weights of their family, at sizes
    the tiny weights draw quickly (an upscale still fits under max_size)."""
    import tomllib

    shipped = tomllib.loads((ROOT / "engine" / "models.toml").read_text())["models"]
    lines, names = [], []
    for name, entry in shipped.items():
        if str(entry["source"]).startswith("builtin:"):
            continue
        names.append(name)
        tiny = "builtin:tiny-xl" if entry.get("family") == "sdxl" else "builtin:tiny"
        lines += [
            f'[models."{name}"]',
            f'source = "{tiny}"',
            f"steps = {entry['steps']}",
            f"max_steps = {entry['max_steps']}",
            f"guidance = {entry['guidance']}",
            f'scheduler = "{entry["scheduler"]}"',
            "width = 64",
            "height = 64",
            "min_size = 64",
            "max_size = 256",
            "",
        ]
    path.write_text("\n".join(lines))
    return names


async def outcome_of(world: World, message: StoredMessage, **button: str) -> StoredMessage:
    """Click, then the job's result, or the refusal that came instead."""
    click = await world.fake.click_button(message, **button)
    await click.response()
    shown = await click.wait_for_message(lambda m: is_result(m) or m.ephemeral, timeout=120)
    assert is_result(shown) and not shown.ephemeral, (button, shown.text())
    return shown


async def test_every_button_works_on_every_shipped_models_presets(world: World) -> None:
    fake = world.fake
    models = world.data_dir.parent / "shipped-presets.toml"
    names = shipped_presets_on_tiny_weights(models)
    assert {"sd-turbo", "sdxl", "sd15"} <= set(names)
    data_dir = world.data_dir.parent / "presets-data"
    async with stand_in(
        world, DATA_DIR=str(data_dir), MODELS_FILE=str(models), DEFAULT_MODEL=names[0]
    ):
        for name in names:
            ix = await fake.send_slash_command(
                "imagine", {"prompt": f"presets of {name}", "count": 1, "model": name}
            )
            await ix.response()
            grid = await ix.wait_for_original(is_result, timeout=120)
            upscaled = await outcome_of(world, grid, label="U1")
            await outcome_of(world, grid, label="V1")  # the strong variation
            for label in ("Vary (Subtle)", "Upscale"):
                await outcome_of(world, upscaled, label=label)
