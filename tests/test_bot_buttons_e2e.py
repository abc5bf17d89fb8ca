"""Every button on result and progress messages, and Discord failures around a running job."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import sqlite3
import zipfile

import pytest
from e2e_support import (
    World,
    click_id,
    hold,
    imagine,
    in_progress,
    is_grid,
    is_result,
    is_single,
    reply_text,
)
from fakediscord.faults import Routes
from fakediscord.models import StoredMessage
from PIL import Image

from engine.images import parse_parameters, read_png_parameters

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("no_problems")]


def size_of(message: object) -> tuple[int, int]:
    image = Image.open(io.BytesIO(message.attachments[0].data))  # type: ignore[attr-defined]
    return image.size


async def test_upscale_variation_and_their_own_buttons(world: World) -> None:
    fake = world.fake
    _, grid = await imagine(world, prompt="a tiny robot", seed=7)
    upscale = await fake.click_button(grid, label="U1")
    await upscale.response()
    upscaled = await upscale.wait_for_message(is_single, timeout=60)
    assert size_of(upscaled) == (128, 128)
    assert replies_to(upscaled, grid)
    assert set(upscaled.button_labels) >= {"Vary (Subtle)", "Vary (Strong)", "Upscale", "⭐"}
    variation = await fake.click_button(grid, label="V2")
    await variation.response()
    varied = await variation.wait_for_message(is_single, timeout=60)
    assert size_of(varied) == (64, 64)
    subtle = await fake.click_button(upscaled, label="Vary (Subtle)")
    await subtle.response()
    assert size_of(await subtle.wait_for_message(is_single, timeout=60)) == (128, 128)
    again = await fake.click_button(upscaled, label="Upscale")
    await again.response()
    bigger = await again.wait_for_message(is_single, timeout=60)
    assert size_of(bigger) == (256, 256)
    # 256 px is the most the tiny model draws at once: beyond it the upscale goes in tiles.
    tiled = await fake.click_button(bigger, label="Upscale")
    await tiled.response()
    biggest = await tiled.wait_for_message(is_single, timeout=120)
    assert size_of(biggest) == (512, 512)
    assert "Upscale" in biggest.button_labels  # up to 1024 px, 4x what it draws at once


async def test_reroll_gives_new_seeds_with_the_same_settings(world: World) -> None:
    fake = world.fake
    _, grid = await imagine(world, prompt="a paper boat", seed=1000, count=2, steps=3)
    reroll = await fake.click_button(grid, emoji="🔄")
    await reroll.response()
    rerolled = await reroll.wait_for_message(is_grid, timeout=60)
    description = rerolled.embeds[0]["description"]
    assert "3 steps" in description and "seeds 1000–1001" not in description


async def test_favourite_picks_from_a_grid_and_favorites_lists_them(world: World) -> None:
    fake = world.fake
    _, grid = await imagine(world, prompt="a golden pear", count=2, user=fake.bob)
    asked = await reply_text(await fake.click_button(grid, emoji="⭐", user=fake.bob))
    assert asked.ephemeral and "Which of these images" in asked.content
    chosen = await fake.select(asked, ["0", "1"], user=fake.bob)
    await chosen.response()
    await chosen.wait_for_message(lambda m: "Starred from this grid: 1, 2" in m.content)
    listing = await reply_text(await fake.send_slash_command("favorites", user=fake.bob))
    assert listing.ephemeral and "(1)" in listing.embeds[0]["title"]
    assert "golden pear" in listing.text() and "2 images" in listing.text()
    # The page is one picture of numbered thumbnails, a button per entry.
    sheet = Image.open(io.BytesIO(listing.attachments[0].data))
    assert sheet.format == "WEBP" and listing.embeds[0]["image"]["url"] == "attachment://page.webp"
    assert [label for label in listing.button_labels if label.isdigit()] == ["1"]
    again = await reply_text(await fake.click_button(grid, emoji="⭐", user=fake.bob))
    picker = next(c for c in again.all_components if c.get("type") == 3)
    assert {o["value"] for o in picker["options"] if o.get("default")} == {"0", "1"}
    none = await fake.select(again, [], user=fake.bob)
    await none.response()
    await none.wait_for_message(lambda m: "Starred from this grid: none" in m.content)
    emptied = await reply_text(await fake.send_slash_command("favorites", user=fake.bob))
    assert "golden pear" not in emptied.text()


async def test_info_shows_settings_and_full_pngs_with_metadata(world: World) -> None:
    fake = world.fake
    _, grid = await imagine(world, prompt="an ink drawing of a heron", seed=99, count=2)
    info = await reply_text(await fake.click_button(grid, emoji="ℹ", user=fake.bob))
    assert info.ephemeral and "heron" in info.content and "99" in info.content
    assert len(info.attachments) == 2
    parameters = read_png_parameters(info.attachments[0].data)
    assert parameters is not None
    parsed = parse_parameters(parameters)
    assert parsed.seed == 99 and parsed.prompt == "an ink drawing of a heron"


async def test_delete_is_for_the_owner_or_a_moderator(world: World) -> None:
    fake = world.fake
    _, grid = await imagine(world, prompt="a quick sketch", count=1)
    refused = await reply_text(await fake.click_button(grid, emoji="🗑", user=fake.bob))
    assert refused.ephemeral and "Only the person" in refused.content
    assert not grid.deleted
    click = await fake.click_button(grid, emoji="🗑", user=fake.moderator)
    await click.response()
    await fake.wait_for(lambda: grid.deleted, timeout=10, description="the grid deleted")


async def test_cancel_button_works_for_owner_and_refuses_others(world: World) -> None:
    fake = world.fake
    # Held at its second step: a fast machine must not finish it before the clicks.
    with hold(world, "a long job", 2):
        ix = await fake.send_slash_command("imagine", {"prompt": "a long job", "steps": 50})
        await ix.response()
        running = await ix.wait_for_original(lambda m: "Cancel" in m.button_labels, timeout=30)
        refused = await reply_text(await fake.click_button(running, label="Cancel", user=fake.bob))
        assert refused.ephemeral and "Only the person" in refused.content
        done = await reply_text(await fake.click_button(running, label="Cancel"))
        assert done.ephemeral and "Cancelled" in done.content
    final = await ix.wait_for_original(lambda m: "Cancelled" in m.text(), timeout=30)
    assert not final.buttons and not is_result(final)
    assert not final.attachments  # no stale preview under "Cancelled"


async def test_history_opens_an_entry_that_runs_again(world: World) -> None:
    fake = world.fake
    await imagine(world, prompt="a history lesson", count=1, user=fake.owner)
    page = await reply_text(await fake.send_slash_command("history", user=fake.owner))
    assert page.ephemeral and "history lesson" in page.text()
    opening = await fake.click_button(page, label="1", user=fake.owner)
    await opening.response()
    entry = await opening.wait_for_message(lambda m: bool(m.attachments), timeout=30)
    run_again = await fake.click_button(entry, emoji="🔄", user=fake.owner)
    await run_again.response()
    assert is_result(await run_again.wait_for_message(is_result, timeout=60))


async def test_page_buttons_from_before_saved_views_still_turn(world: World) -> None:
    fake = world.fake
    old_timer = fake.add_member("oldtimer")
    for n in range(6):
        await imagine(world, prompt=f"vintage page {n}", count=1, steps=2, user=old_timer)
    page = await reply_text(await fake.send_slash_command("history", user=old_timer))
    # A /history message posted by the last version: five to a page, the search in the id.
    search = base64.urlsafe_b64encode(b"vintage").decode().rstrip("=")
    click = await click_id(world, page, f"dc:1:pg:hist:{old_timer.user.id}:1:{search}", old_timer)
    await click.response()
    turned = await click.wait_for_message(lambda m: "vintage" in m.text() and m.edits, timeout=15)
    assert "“vintage”" in turned.text() and "(6)" in turned.embeds[0]["title"]


async def test_queue_shows_positions_and_stats_count_todays_jobs(world: World) -> None:
    fake = world.fake

    async def stats() -> dict[str, int]:
        reply = await reply_text(await fake.send_slash_command("stats", user=fake.moderator))
        assert reply.ephemeral and "p95" in reply.content
        chart = Image.open(io.BytesIO(reply.attachment("stats.png").data))
        assert chart.format == "PNG" and chart.width > chart.height
        found = re.search(
            r"(?P<jobs>\d+) jobs, (?P<images>\d+) images\nDone (?P<done>\d+) · failed "
            r"(?P<failed>\d+) · cancelled (?P<cancelled>\d+) · in progress (?P<active>\d+)",
            reply.content,
        )
        assert found, reply.content
        return {key: int(value) for key, value in found.groupdict().items()}

    before = await stats()
    with hold(world, "first in line", 1) as release:
        first = await fake.send_slash_command("imagine", {"prompt": "first in line", "count": 1})
        await first.response()
        await first.wait_for_original(in_progress, timeout=30)  # generating, held
        second = await fake.send_slash_command(
            "imagine", {"prompt": "second in line", "count": 2}, user=fake.bob
        )
        await second.response()
        await second.wait_for_original(lambda m: "Queued" in m.text(), timeout=30)
        bobs = await reply_text(await fake.send_slash_command("queue", user=fake.bob))
        assert bobs.ephemeral
        lines = bobs.content.splitlines()
        assert lines[0] == "**1** generating now, **1** waiting."
        assert len(lines) == 2 and "(2 images): position 1" in lines[1]
        alices = await reply_text(await fake.send_slash_command("queue"))
        [_, alices_job] = alices.content.splitlines()
        assert "(1 images): generating now" in alices_job
        during = await stats()
        assert during["jobs"] == before["jobs"] + 2
        assert during["active"] == before["active"] + 2
        release()
        await first.wait_for_original(is_result, timeout=60)
        await second.wait_for_original(is_result, timeout=60)
    after = await stats()
    month = await reply_text(
        await fake.send_slash_command("stats", {"period": "month"}, user=fake.moderator)
    )
    assert "Last 30 days" in month.content and "People:" in month.content
    assert after["jobs"] == before["jobs"] + 2 and after["images"] == before["images"] + 3
    assert after["done"] == before["done"] + 2 and after["active"] == before["active"]
    assert (after["failed"], after["cancelled"]) == (before["failed"], before["cancelled"])


async def test_rate_limited_and_failing_edits_still_deliver_the_result(world: World) -> None:
    fake = world.fake
    fake.faults.rate_limit(Routes.EDIT_FOLLOWUP, times=3, retry_after=0.3)
    fake.faults.server_error(Routes.EDIT_FOLLOWUP)
    _, message = await imagine(world, prompt="through the storm", count=1, steps=8)
    assert is_result(message)
    statuses = [r.status for r in fake.requests_to(Routes.EDIT_FOLLOWUP)]
    assert 429 in statuses and 500 in statuses


async def test_expired_token_delivers_through_the_channel(world: World) -> None:
    fake = world.fake
    ix = await fake.send_slash_command("imagine", {"prompt": "a late result", "steps": 30})
    await ix.response()
    await ix.wait_for_original(in_progress, timeout=30)
    fake.expire_token(ix)
    message = await ix.wait_for_original(is_result, timeout=60)
    assert any(r.status == 200 for r in fake.requests_to(Routes.EDIT_MESSAGE))
    assert is_grid(message)


async def test_deleted_message_gets_a_new_one_with_the_result(world: World) -> None:
    fake = world.fake
    ix = await fake.send_slash_command("imagine", {"prompt": "a vanishing act", "steps": 30})
    await ix.response()
    original = await ix.wait_for_original(in_progress, timeout=30)
    fake.delete_message(original)
    await fake.wait_for(
        lambda: any(
            is_result(m) and "vanishing act" in m.text() for m in fake.messages(original.channel_id)
        ),
        timeout=60,
        description="the result in a new message",
    )
    new = next(
        m
        for m in fake.messages(original.channel_id)
        if is_result(m) and "vanishing act" in m.text()
    )
    assert f"<@{fake.alice.user.id}>" in new.content


async def test_upscale_whose_message_was_deleted_still_replies_to_its_grid(world: World) -> None:
    fake = world.fake
    _, grid = await imagine(world, prompt="a mislaid robot", count=2)
    # The upscale's message is gone by its first edit (deleted by a moderator, say): Discord
    # answers 404 Unknown Message, and the bot has to post the result itself.
    fake.faults.unknown_message(Routes.EDIT_FOLLOWUP)
    upscale = await fake.click_button(grid, label="U2")
    await upscale.response()

    def posted_by_the_bot() -> StoredMessage | None:
        return next(
            (
                m
                for m in fake.messages(grid.channel_id)
                if is_single(m) and "mislaid robot" in m.text() and m.interaction_id is None
            ),
            None,
        )

    await fake.wait_for(lambda: posted_by_the_bot(), timeout=60, description="a new message")
    new = posted_by_the_bot()
    assert new is not None and replies_to(new, grid)


async def test_a_deleted_channel_sends_the_result_by_dm(world: World) -> None:
    fake = world.fake
    studio = fake.add_channel(fake.guild, "studio")
    ix = await fake.send_slash_command(
        "imagine", {"prompt": "a lost channel", "steps": 50}, channel=studio
    )
    await ix.response()
    await ix.wait_for_original(in_progress, timeout=30)
    await fake.delete_channel(studio)
    dm = fake.dm_channel(fake.alice.user)

    def delivered() -> list[StoredMessage]:
        return [m for m in fake.messages(dm) if is_result(m) and "a lost channel" in m.text()]

    await fake.wait_for(lambda: delivered(), timeout=60, description="the result in a DM")
    assert len(delivered()) == 1


async def test_a_button_from_another_version_is_answered(world: World) -> None:
    fake = world.fake
    _, result = await imagine(world, prompt="an old button", count=1)
    # As if the message had been posted by an older release with other custom ids.
    result.components[0]["components"][0]["custom_id"] = "legacy:upscale:1"
    reply = await reply_text(await fake.click_button(result, custom_id="legacy:upscale:1"))
    assert reply.ephemeral and "no longer works" in reply.content


async def test_gateway_disconnect_resumes_and_keeps_serving(world: World) -> None:
    fake = world.fake
    resumes = fake.session.resume_count if fake.session else 0
    await fake.disconnect_gateway(code=4000)
    await fake.wait_for_resume(after=resumes, timeout=30)
    _, message = await imagine(world, prompt="after the reconnect", count=1)
    assert is_result(message)


async def test_private_job_past_its_token_gets_one_dm_that_is_then_edited(world: World) -> None:
    fake = world.fake
    loner = fake.add_member("loner")  # a DM channel of its own: no other test's messages
    prompt = "a private late one"
    # Held before steps 1 and 2: the token expires while the job runs, and the DM the bot
    # then sends shows progress, so the result can only come as an edit of it.
    with hold(world, prompt, 1) as release_first, hold(world, prompt, 2) as release_second:
        ix = await fake.send_slash_command(
            "imagine", {"prompt": prompt, "steps": 4, "private": True}, user=loner
        )
        await ix.response()
        await ix.wait_for_original(in_progress, timeout=30)
        fake.expire_token(ix)
        release_first()
        dm = fake.dm_channel(loner.user)
        await fake.wait_for(lambda: fake.messages(dm), timeout=30, description="a DM")
        [sent] = fake.messages(dm)
        assert prompt in sent.text() and in_progress(sent)
        release_second()
        await fake.wait_for(
            lambda: is_result(fake.get_message(sent.id)), timeout=60, description="the DM edited"
        )
    [delivered] = fake.messages(dm)  # progress and the result edit the DM; never a second one
    assert delivered.id == sent.id and is_grid(delivered) and prompt in delivered.text()
    first = delivered.versions[0]
    assert len(delivered.versions) >= 2 and "step 1/4" in str(first.embeds)


async def test_slow_discord_answers_do_not_stall_other_users(world: World) -> None:
    fake = world.fake
    fake.faults.delay(Routes.EDIT_FOLLOWUP, 2.0, times=2)
    slow = await fake.send_slash_command("imagine", {"prompt": "a slow edit", "count": 1})
    await slow.response()
    # Meanwhile another user's command is still answered within Discord's 3 s.
    other = await fake.send_slash_command("queue", user=fake.bob)
    callback = await other.response()
    assert callback.latency is not None and callback.latency < 3.0
    assert is_result(await slow.wait_for_original(is_result, timeout=60))


def replies_to(message: StoredMessage, parent: StoredMessage) -> bool:
    reference = message.message_reference or {}
    return message.type == 19 and reference.get("message_id") == str(parent.id)


async def test_forget_asks_then_deletes_everything_of_the_user_only(world: World) -> None:
    fake = world.fake
    leaver = fake.add_member("leaver")
    _, grid = await imagine(world, user=leaver, prompt="a farewell lighthouse", count=1)
    await reply_text(await fake.click_button(grid, emoji="⭐", user=leaver))
    _, stays = await imagine(world, prompt="someone else's meadow", count=1)
    asked = await reply_text(await fake.send_slash_command("forget", user=leaver))
    assert asked.ephemeral and "cannot be undone" in asked.content and "1 job" in asked.content
    # Nothing happens until they confirm, and only they can.
    assert job_count(world, leaver.user.id) == 1
    refused = await reply_text(
        await fake.click_button(asked, label="Delete everything", user=fake.bob)
    )
    assert refused.ephemeral and "Only the person who asked" in refused.content
    confirm = await fake.click_button(asked, label="Delete everything", user=leaver)
    await confirm.response()
    done = await confirm.wait_for_original(lambda m: "Deleted" in m.content, timeout=30)
    assert "Deleted 1 job(s) with 1 image(s)" in done.content and "1 favourite(s)" in done.content
    assert not done.buttons
    assert job_count(world, leaver.user.id) == 0
    history = await reply_text(await fake.send_slash_command("history", user=leaver))
    assert "farewell lighthouse" not in history.text()
    assert job_count(world, fake.alice.user.id) >= 1 and stays.attachments


def job_count(world: World, user_id: int) -> int:
    path = world.data_dir / "diffusion-chat.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return int(
            conn.execute("SELECT count(*) FROM jobs WHERE user_id = ?", (user_id,)).fetchone()[0]
        )


async def test_export_sends_the_images_with_their_settings_and_the_job_list(
    world: World,
) -> None:
    fake = world.fake
    keeper = fake.add_member("keeper")
    await imagine(world, user=keeper, prompt="an exported comet", count=2, seed=77)
    ix = await fake.send_slash_command("export", user=keeper)
    await ix.response()
    sent = await ix.wait_for_message(lambda m: bool(m.attachments), timeout=60)
    assert sent.ephemeral and "1 job(s), 2 image(s)" in sent.content
    with zipfile.ZipFile(io.BytesIO(sent.attachments[0].data)) as archive:
        names = archive.namelist()
        manifest = json.loads(archive.read("diffusion-chat-export.json"))
        pngs = [archive.read(name) for name in names if name.endswith(".png")]
    assert [job["prompt"] for job in manifest["jobs"]] == ["an exported comet"]
    assert len(pngs) == 2
    for png in pngs:
        parameters = read_png_parameters(png)
        assert parameters is not None and "an exported comet" in parameters
        assert parse_parameters(parameters).seed in (77, 78)
    nothing = await reply_text(await fake.send_slash_command("export", user=fake.add_member("new")))
    assert "nothing to export" in nothing.content
