"""/imagine as users meet it: `python -m bot` in its own process, the tiny model, and the fake
Discord over real sockets. Every REST body is checked against Discord's OpenAPI spec."""

from __future__ import annotations

import asyncio
import io
import socket
import tomllib
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from e2e_support import (
    EDIT_INTERVAL_S,
    ROOT,
    World,
    hold,
    imagine,
    in_progress,
    is_grid,
    is_result,
    local_server,
    recorded_message_id,
    reply_text,
    stand_in,
    wait_until,
)
from fakediscord.models import StoredMessage
from foreign_models import save_test_style_sd
from PIL import Image

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("no_problems")]


async def test_start_up_syncs_commands_once_and_asks_for_no_privileged_intents(
    world: World,
) -> None:
    fake = world.fake
    assert fake.spec is not None  # every body the bot sends is checked against Discord's spec
    names = {c["name"] for c in fake.registered_commands(fake.guild)}
    assert {"imagine", "queue", "quota", "stats", "favorites", "history", "banned"} <= names
    assert fake.sync_count() == 1
    assert fake.session is not None
    privileged = (1 << 1) | (1 << 8) | (1 << 15)  # members, presences, message content
    assert fake.session.intents & privileged == 0


async def test_imagine_to_finished_grid_with_progress_and_previews(world: World) -> None:
    ix, message = await imagine(world, prompt="a red fox in snow --ar 3:2", seed=42, steps=40)
    assert ix.ack_latency is not None and ix.ack_latency < 3.0
    assert message.button_labels[:8] == ["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4"]
    assert set(message.button_labels[8:]) == {"🔄", "⭐", "🗑", "ℹ", "📤", "👍", "👎"}
    grid = Image.open(io.BytesIO(message.attachments[0].data))
    grid.load()
    assert grid.width > grid.height  # 3:2 images in a 2x2 grid
    embed = message.embeds[0]
    assert "seeds 42–45" in embed["description"]
    assert "left for you today" in embed["footer"]["text"]
    texts = [str(v.embeds) for v in message.versions]
    assert any("Queued" in t for t in texts)
    assert any("step" in t and "%" in t for t in texts)
    assert any(a.filename == "preview.jpg" for v in message.versions for a in v.attachments)
    gap = message.min_edit_interval()
    assert gap is None or gap >= EDIT_INTERVAL_S * 0.9


async def test_inline_parameters_and_unsupported_flags_are_explained(world: World) -> None:
    ix, message = await imagine(world, prompt="a castle --no fog --steps 3 --v 6", count=1)
    assert "3 steps" in message.embeds[0]["description"]
    note = await ix.wait_for_followup(timeout=10)
    assert note.ephemeral and "--v" in note.content


async def test_moderator_sets_quota_and_user_over_it_is_told_when_it_resets(
    world: World,
) -> None:
    fake = world.fake
    ix = await fake.send_slash_command(
        "quota set", {"user": fake.bob, "daily_images": "4"}, user=fake.moderator
    )
    reply = await reply_text(ix)
    assert reply.ephemeral and "4 images a day" in reply.content
    await imagine(world, user=fake.bob, prompt="within quota", count=4)
    second = await fake.send_slash_command(
        "imagine", {"prompt": "over quota", "count": 1}, user=fake.bob
    )
    refusal = await reply_text(second)
    assert refusal.ephemeral
    assert "all 4 of your images" in refusal.content and "resets" in refusal.content
    show = await reply_text(
        await fake.send_slash_command("quota show", {"user": fake.bob}, user=fake.moderator)
    )
    assert "4 of 4" in show.content
    reset = await reply_text(
        await fake.send_slash_command("quota reset", {"user": fake.bob}, user=fake.moderator)
    )
    assert "back 4 images" in reset.content


async def test_moderator_gives_a_role_high_queue_priority(world: World) -> None:
    fake = world.fake
    patron = fake.add_role("Patron", 0)
    carol = fake.add_member("carol", roles=[patron])
    ix = await fake.send_slash_command(
        "quota set", {"role": patron, "priority": 1}, user=fake.moderator
    )
    reply = await reply_text(ix)
    assert reply.ephemeral and "Patron: high queue priority" in reply.content
    show = await reply_text(
        await fake.send_slash_command("quota show", {"user": carol}, user=fake.moderator)
    )
    assert "from role settings" in show.content and "Queue priority: high" in show.content
    # Jobs of the role's members are queued with it (the order itself: tests/test_service.py).
    _, message = await imagine(world, user=carol, prompt="a patron's picture", count=1)
    assert is_result(message)


async def test_quota_for_the_everyone_role_is_the_server_default(world: World) -> None:
    fake = world.fake
    ix = await fake.send_slash_command(
        "quota set", {"role": fake.guild.everyone, "daily_images": "400"}, user=fake.moderator
    )
    assert "everyone in this server" in (await reply_text(ix)).content
    newcomer = fake.add_member("newcomer")
    show = await reply_text(
        await fake.send_slash_command("quota show", {"user": newcomer}, user=fake.moderator)
    )
    assert "from guild settings" in show.content and "of 400" in show.content


async def test_non_moderator_cannot_manage_quotas(world: World) -> None:
    fake = world.fake
    ix = await fake.send_slash_command(
        "quota set", {"daily_images": "1000"}, user=fake.alice, respect_permissions=False
    )
    reply = await reply_text(ix)
    assert reply.ephemeral and "Manage Server" in reply.content


async def test_banned_words_are_refused_clearly(world: World) -> None:
    fake = world.fake
    added = await reply_text(
        await fake.send_slash_command(
            "banned add", {"words": "dragon, sea serpent"}, user=fake.moderator
        )
    )
    assert "dragon" in added.content
    refused = await reply_text(await fake.send_slash_command("imagine", {"prompt": "A DRAGON"}))
    assert refused.ephemeral and "does not allow" in refused.content
    refused = await reply_text(
        await fake.send_slash_command("imagine", {"prompt": "a boat", "negative": "sea serpent"})
    )
    assert refused.ephemeral and "sea serpent" in refused.content
    await reply_text(
        await fake.send_slash_command(
            "banned remove", {"words": "dragon, sea serpent"}, user=fake.moderator
        )
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"prompt": "x" * 5000}, "characters"),
        ({"prompt": "castle --seed banana"}, "whole number"),
        ({"prompt": "   --ar 16:9"}, "describe what to draw"),
        ({"prompt": "🦊 مرحبا \u202e'); DROP TABLE jobs;--"}, None),
        ({"prompt": "a cat", "image": ("notes.txt", b"not an image at all")}, "image"),
        ({"prompt": "a cat", "strength": 0.5}, "only applies"),
        ({"prompt": "a cat", "model": "no-such-model"}, "no model called"),
    ],
    ids=["huge", "bad-seed", "empty", "hostile", "not-an-image", "strength-alone", "model"],
)
async def test_bad_input_gets_a_clear_ephemeral_message(
    world: World, options: dict[str, object], expected: str | None
) -> None:
    ix = await world.fake.send_slash_command("imagine", options)
    await ix.response()
    if expected is None:  # hostile but valid: it simply works
        message = await ix.wait_for_original(is_result, timeout=60)
        assert "DROP TABLE" in message.embeds[0]["title"]
        return
    reply = await ix.wait_for_message(timeout=15)
    assert reply.ephemeral and expected in reply.content, reply.content


async def test_image_attachment_starts_an_img2img_job(world: World) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, "PNG")
    ix = await world.fake.send_slash_command(
        "imagine",
        {
            "prompt": "a red square",
            "count": 1,
            "image": ("start.png", buffer.getvalue()),
            "strength": 0.3,
        },
    )
    await ix.response()
    message = await ix.wait_for_original(is_result, timeout=60)
    assert message.attachments


async def test_a_starting_image_can_be_a_link_and_private_links_are_refused(
    world: World,
) -> None:
    fake = world.fake
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 40, 200)).save(buffer, "PNG")

    async def square(request: web.Request) -> web.Response:
        return web.Response(body=buffer.getvalue(), content_type="image/png")

    async with local_server({"/square.png": square}) as origin:
        link = f"{origin}/square.png"
        # The world's bot has no test hosts: a link to this machine is a private address.
        refused = await reply_text(
            await fake.send_slash_command("imagine", {"prompt": "a square", "image_url": link})
        )
        assert refused.ephemeral and "private or local address" in refused.content
        both = await reply_text(
            await fake.send_slash_command(
                "imagine",
                {"prompt": "a square", "image_url": link, "image": ("a.png", buffer.getvalue())},
            )
        )
        assert both.ephemeral and "not both" in both.content
        neither = await reply_text(
            await fake.send_slash_command("edit adjust", {"filter": "grayscale"})
        )
        assert neither.ephemeral and "give a link to one with `image_url`" in neither.content
        # With the test setting this server stands in for a public https one.
        async with stand_in(world, LINK_TEST_HOSTS=origin.removeprefix("http://")):
            ix = await fake.send_slash_command(
                "imagine",
                {"prompt": "a blue square", "count": 1, "image_url": link, "strength": 0.3},
            )
            await ix.response()
            message = await ix.wait_for_original(is_result, timeout=90)
            assert message.attachments
            # The edits take a link as well: a grey copy of the blue square.
            edited = await fake.send_slash_command(
                "edit adjust", {"image_url": link, "filter": "grayscale"}
            )
            await edited.response()
            grey = await edited.wait_for_message(lambda m: bool(m.attachments), timeout=60)
            shown = Image.open(io.BytesIO(grey.attachments[0].data)).convert("RGB")
            red, green, blue = shown.getpixel((32, 32))  # type: ignore[misc]
            assert red == green == blue and 40 < red < 200


async def test_private_results_are_ephemeral(world: World) -> None:
    ix, message = await imagine(world, prompt="a secret garden", count=2, private=True)
    callback = await ix.response()
    assert callback.ephemeral
    assert message.ephemeral and is_grid(message)


async def test_model_and_prompt_autocomplete(world: World) -> None:
    fake = world.fake
    choices = await fake.autocomplete("imagine", {"prompt": "x", "model": "tin"})
    names = [c["value"] for c in choices]
    assert "tiny" in names
    assert any("noise" in c["name"] for c in choices)
    await imagine(world, prompt="a lighthouse at dusk", count=1)
    choices = await fake.autocomplete("imagine", {"prompt": "lighth"}, focused="prompt")
    assert "a lighthouse at dusk" in [c["value"] for c in choices]


async def test_killed_mid_job_restart_finishes_exactly_once(world: World) -> None:
    fake = world.fake
    async with stand_in(world, DATA_DIR=str(world.data_dir.parent / "restart-data")) as bot:
        ix = await fake.send_slash_command("imagine", {"prompt": "a slow one", "steps": 40})
        await ix.response()
        await ix.wait_for_original(in_progress, timeout=60)
        syncs = fake.sync_count()
        await bot.crash_and_restart()
        message = await ix.wait_for_original(is_result, timeout=90)
        assert fake.sync_count() == syncs  # same definitions: no second sync
        results = [
            m
            for m in fake.messages(message.channel_id)
            if is_result(m) and "a slow one" in str(m.embeds)
        ]
        assert len(results) == 1
        # A button from before the restart works on the new process.
        info = await fake.click_button(message, emoji="ℹ")
        reply = await reply_text(info)
        assert reply.ephemeral and "a slow one" in reply.content


async def test_commands_removed_behind_the_bots_back_are_synced_again(world: World) -> None:
    fake = world.fake
    syncs = fake.sync_count()
    fake.forget_commands(fake.guild)
    async with stand_in(world, DATA_DIR=str(world.data_dir)):  # its state file says "synced"
        assert fake.sync_count() == syncs + 1
        names = {command["name"] for command in fake.registered_commands(fake.guild)}
        assert {"imagine", "quota"} <= names


async def test_global_commands_work_in_direct_messages(world: World) -> None:
    fake = world.fake
    async with stand_in(world, DATA_DIR=str(world.data_dir.parent / "global"), DEV_GUILD_ID=""):
        names = {command["name"] for command in fake.commands.get(None, [])}
        assert {"imagine", "queue", "history"} <= names
        ix = await fake.send_slash_command(
            "imagine", {"prompt": "a letter by post", "count": 1}, guild="dm"
        )
        await ix.response()
        message = await ix.wait_for_original(is_result, timeout=60)
        # Direct messages have a daily quota of their own, shown like a server's.
        assert "left for you today" in message.embeds[0]["footer"]["text"]
        refused = await reply_text(
            await fake.send_slash_command(
                "quota show", guild="dm", require_registered=False, respect_permissions=False
            )
        )
        assert refused.ephemeral and "only works in a server" in refused.content


async def test_a_model_never_seen_before_works_from_its_folder(world: World) -> None:
    fake = world.fake
    root = world.data_dir.parent
    folder = save_test_style_sd(root / "stranger")
    models = root / "stranger.toml"
    models.write_text(f'[models.stranger]\nsource = "{folder}"\ndescription = "A stranger"\n')
    async with stand_in(world, MODELS_FILE=str(models), DEFAULT_MODEL="stranger"):
        _, grid = await imagine(world, prompt="a stranger's cat", count=2)
        assert "64×64" in grid.text() and "stranger" in grid.embeds[0]["footer"]["text"]
        upscale = await fake.click_button(grid, label="U1")
        await upscale.response()
        upscaled = await upscale.wait_for_message(is_result, timeout=60)
        assert "128×128" in upscaled.text()
        # Twice its own size is the most it paints at once; upscales beyond go in tiles.
        assert "Upscale" in upscaled.button_labels
        variation = await fake.click_button(grid, label="V2")
        await variation.response()
        assert "64×64" in (await variation.wait_for_message(is_result, timeout=60)).text()


async def test_restart_after_a_reposted_message_keeps_one_message(world: World) -> None:
    fake = world.fake
    data_dir = world.data_dir.parent / "repost-data"
    prompt = "a moved one"
    # Held twice, so nothing here races the model: before its first step is shown (the test
    # deletes the message then), and before its second (the bot has reposted by then).
    with hold(world, prompt, 1) as release_first, hold(world, prompt, 2) as release_second:
        async with stand_in(world, DATA_DIR=str(data_dir)) as bot:
            ix = await fake.send_slash_command("imagine", {"prompt": prompt, "steps": 4})
            await ix.response()
            original = await ix.wait_for_original(in_progress, timeout=60)
            fake.delete_message(original)
            release_first()  # step 1 is shown: the edit finds the message gone, and reposts

            def mine() -> list[StoredMessage]:
                return [m for m in fake.messages(original.channel_id) if prompt in m.text()]

            await fake.wait_for(lambda: mine(), timeout=30, description="the reposted message")
            [reposted] = mine()
            assert in_progress(reposted) and not reposted.interaction_id
            await wait_until(
                lambda: recorded_message_id(data_dir, prompt) == reposted.id, bot.proc, 30
            )
            await bot.crash_and_restart()  # still held: the job was running
            release_second()
            await fake.wait_for(
                lambda: any(is_result(m) for m in mine()), timeout=90, description="the result"
            )
            [result] = mine()  # the reposted message was edited, not posted again
            assert result.id == reposted.id
            assert f"<@{fake.alice.user.id}>" in result.content


async def test_a_slow_database_still_gets_an_answer_within_three_seconds(world: World) -> None:
    fake = world.fake
    slowpoke = fake.add_member("slowpoke")
    await reply_text(
        await fake.send_slash_command(
            "quota set", {"user": slowpoke, "daily_images": "0"}, user=fake.moderator
        )
    )
    slow = {
        "DATA_DIR": str(world.data_dir),
        "PYTHONPATH": str(ROOT / "tests" / "slow_storage"),
        "SLOW_JOB_CREATE_S": "3.5",
    }
    async with stand_in(world, **slow):
        ix = await fake.send_slash_command("imagine", {"prompt": "a patient snail", "count": 1})
        await ix.response()
        assert ix.ack_latency is not None and ix.ack_latency < 3.0
        message = await ix.wait_for_original(is_result, timeout=60)
        assert "a patient snail" in message.text()
        # Buttons that start a job write the same slow record, and answer in time too.
        for click in (
            await fake.click_button(message, emoji="🔄"),
            await fake.click_button(message, label="U1"),
        ):
            await click.response()
            assert click.ack_latency is not None and click.ack_latency < 3.0
            follow = await click.wait_for_message(is_result, timeout=60)
            assert "a patient snail" in follow.text() and follow.id != message.id
        # A refusal that comes late replaces the public placeholder with a private answer.
        refused = await fake.send_slash_command("imagine", {"prompt": "no"}, user=slowpoke)
        await refused.response()
        assert refused.ack_latency is not None and refused.ack_latency < 3.0
        note = await refused.wait_for_followup(timeout=15)
        assert note.ephemeral and "images" in note.content
        placeholder = fake.get_message(refused.original_message_id or 0)
        assert placeholder is not None and placeholder.deleted


async def test_logs_have_one_line_per_job_event_and_no_secrets(world: World) -> None:
    fake = world.fake
    ix, _ = await imagine(world, prompt="a logged job", count=1)
    await wait_until(lambda: world.bot.output.count("job done") >= 1, world.bot, 10)
    output = world.bot.output
    assert fake.token not in output
    assert ix.token not in output
    job_lines = [line for line in output.splitlines() if "job done" in line]
    assert job_lines and all("job_id=" in line and "model=tiny" in line for line in job_lines)
    assert any("generate_s=" in line for line in job_lines)


async def test_models_lists_every_registry_entry(world: World) -> None:
    with (ROOT / "engine" / "models.toml").open("rb") as registry:
        names = set(tomllib.load(registry)["models"])
    reply = await reply_text(await world.fake.send_slash_command("models"))
    assert reply.ephemeral
    listed = {line.split("`")[1] for line in reply.content.splitlines() if line.startswith("•")}
    assert listed == names
    assert "`tiny` (sd15)" in reply.content and "`tiny-xl` (sdxl)" in reply.content


async def test_banned_list_shows_the_words_added_and_no_more_once_removed(world: World) -> None:
    fake = world.fake

    async def banned(command: str, words: str | None = None) -> str:
        options = {"words": words} if words is not None else None
        ix = await fake.send_slash_command(f"banned {command}", options, user=fake.moderator)
        return (await reply_text(ix)).content

    await banned("add", "kraken, sea witch")
    listing = await banned("list")
    assert "`kraken`" in listing and "`sea witch`" in listing
    await banned("remove", "kraken, sea witch")
    assert await banned("list") == "No words are banned here."


async def test_failed_generation_reaches_the_user_and_health_and_metrics_are_served(
    world: World,
) -> None:
    fake = world.fake
    root = world.data_dir.parent
    models = root / "broken.toml"
    models.write_text(
        '[models.tiny]\nsource = "builtin:tiny"\ndescription = "tiny"\n'
        f'[models.broken]\nsource = "{root / "no-such-folder"}"\ndescription = "gone"\n'
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {"MODELS_FILE": str(models), "METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1"}
    async with stand_in(world, **env), aiohttp.ClientSession() as http:
        health = await poll(http, f"{base}/healthz", lambda status, _: status == 200)
        assert health == (200, '{"gateway_connected": true, "worker_alive": true, "status": "ok"}')
        ix = await fake.send_slash_command("imagine", {"prompt": "a lost model", "model": "broken"})
        await ix.response()
        failed = await ix.wait_for_original(lambda m: "❌" in m.text(), timeout=60)
        assert not failed.buttons and not failed.attachments
        assert failed.embeds[0]["color"] == 0xE74C3C  # red: discord.Colour.red()
        assert "broken" in failed.text()
        # The failure is counted just after it is shown.
        failed_series = 'diffusion_chat_jobs_total{status="failed"} 1.0'
        status, text = await poll(http, f"{base}/metrics", lambda _, body: failed_series in body)
        assert status == 200 and failed_series in text
        assert 'diffusion_chat_jobs_total{status="done"} 0.0' in text
        assert 'diffusion_chat_failures_total{reason="model_load"} 1.0' in text


async def poll(
    http: aiohttp.ClientSession, url: str, until: Callable[[int, str], bool]
) -> tuple[int, str]:
    """GET ``url`` until ``until(status, body)`` or 30 s; the last answer. (Another process's
    HTTP endpoint has no event to wait on.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        async with http.get(url) as answer:
            status, body = answer.status, await answer.text()
        if until(status, body) or loop.time() > deadline:
            return status, body
        await asyncio.sleep(0.1)


async def test_moderators_choose_the_servers_default_model_and_the_models_it_offers(
    world: World,
) -> None:
    fake = world.fake

    async def moderate(subcommand: str, options: dict[str, object] | None = None) -> str:
        answer = await reply_text(
            await fake.send_slash_command(f"model {subcommand}", options, user=fake.moderator)
        )
        assert answer.ephemeral
        return answer.content

    refused = await reply_text(
        await fake.send_slash_command(
            "model default", {"name": "tiny-xl"}, user=fake.bob, respect_permissions=False
        )
    )
    assert refused.ephemeral and "Only moderators" in refused.content
    unknown = await moderate("default", {"name": "no-such-model"})
    assert "There is no model called `no-such-model`" in unknown
    assert "There is no model called" in await moderate("enable", {"name": "no-such-model"})
    try:
        assert "now draws with `tiny-xl` when" in await moderate("default", {"name": "tiny-xl"})
        _, result = await imagine(world, prompt="a lighthouse", count=1, steps=2)
        assert result.embeds[0]["footer"]["text"].startswith("tiny-xl · ")
        assert "default model" in await moderate("disable", {"name": "tiny-xl"})
        assert "no longer offered" in await moderate("disable", {"name": "tiny"})
        choices = await fake.autocomplete("imagine", {"prompt": "x", "model": "tiny"})
        assert [c["value"] for c in choices] == ["tiny-xl"]
        turned_off = await reply_text(
            await fake.send_slash_command("imagine", {"prompt": "a lighthouse", "model": "tiny"})
        )
        assert turned_off.ephemeral and "turned off in this server" in turned_off.content
        listed = await reply_text(await fake.send_slash_command("models"))
        assert "`tiny`" not in listed.content and "`tiny-xl`" in listed.content
        assert "the default here" in listed.content
    finally:
        await moderate("enable", {"name": "tiny"})
        assert "bot's default model, `tiny`" in await moderate("default")
    _, result = await imagine(world, prompt="a lighthouse", count=1, steps=2)
    assert result.embeds[0]["footer"]["text"].startswith("tiny · ")
