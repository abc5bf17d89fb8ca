"""The editing loop in Discord (issue 14), through the fake Discord: the single-image view's
Vary (Region), Zoom Out, Custom Zoom, Pan, Upscale and Compare; remix mode; ⭐ choosing a
grid's images; 🗑 hiding a result from its owner's lists; img2img grids. The chain runs on a
model registered with sd-turbo's presets at tiny scale, and on tiny-xl."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from e2e_support import World, is_grid, is_single, reply_text, start_world, stop_world
from fakediscord.models import StoredMessage
from PIL import Image

from engine.images import read_png_parameters

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("no_problems")]

# sd-turbo's presets (steps, guidance, scheduler; sizes in its proportions) on tiny weights.
MODELS = """
default = "turbo-tiny"

[models.turbo-tiny]
source = "builtin:tiny"
description = "sd-turbo's presets on the tiny test weights"
license = "test weights"
steps = 2
max_steps = 8
guidance = 0.0
width = 64
height = 64
min_size = 32
max_size = 96
scheduler = "euler"

[models.tiny-xl]
source = "builtin:tiny-xl"
description = "the tiny SDXL test weights"
license = "test weights"
steps = 2
max_steps = 8
guidance = 5.0
width = 64
height = 64
min_size = 32
max_size = 128
scheduler = "euler_a"
"""


MAX_SIZE = {"turbo-tiny": 96, "tiny-xl": 128}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("editing")
    models = root / "models.toml"
    models.write_text(MODELS)
    started = await start_world(root / "data", MODELS_FILE=str(models), DEFAULT_MODEL="turbo-tiny")
    try:
        yield started
    finally:
        await stop_world(started)


def size_of(message: StoredMessage) -> tuple[int, int]:
    return Image.open(io.BytesIO(message.attachments[0].data)).size


async def pixels(world: World, message: StoredMessage) -> np.ndarray:
    """The full PNG's pixels (ℹ attaches it; the result shows a lighter JPEG)."""
    info = await reply_text(await world.fake.click_button(message, emoji="ℹ"))
    png = next(a.data for a in info.attachments if a.filename.endswith(".png"))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


async def result_of(
    world: World, message: StoredMessage, user: Any = None, **button: Any
) -> StoredMessage:
    """Click a button that starts a job; its finished single image."""
    click = await world.fake.click_button(message, user=user, **button)
    await click.response()
    assert click.ack_latency is not None and click.ack_latency < 3.0
    return await click.wait_for_message(is_single, timeout=120)


async def modal_result(
    world: World, message: StoredMessage, values: dict[str, str], user: Any = None, **button: Any
) -> StoredMessage:
    """Click a button that opens a modal, fill it in, and wait for the job it starts."""
    click = await world.fake.click_button(message, user=user, **button)
    submitted = await world.fake.submit_modal(click, values)
    await submitted.response()
    return await submitted.wait_for_message(is_single, timeout=120)


async def grid_of(
    world: World, model: str, prompt: str, user: Any = None, **options: Any
) -> StoredMessage:
    ix = await world.fake.send_slash_command(
        "imagine", {"prompt": prompt, "model": model, "count": 4, **options}, user=user
    )
    await ix.response()
    return await ix.wait_for_original(is_grid, timeout=120)


@pytest.mark.parametrize("model", ["turbo-tiny", "tiny-xl"])
async def test_the_chain_u2_zoom_pan_region_upscale(world: World, model: str) -> None:
    fake = world.fake
    grid = await grid_of(world, model, f"a lighthouse at dusk on {model}", seed=5)
    picked = await result_of(world, grid, label="U2")
    assert {
        "Vary (Subtle)",
        "Vary (Strong)",
        "Vary (Region)",
        "Upscale",
        "Zoom Out 2x",
        "Zoom Out 1.5x",
        "Custom Zoom",
        "⬅",
        "➡",
        "⬆",
        "⬇",
        "⭐",
        "🗑",
        "ℹ",
        "Compare",
    } <= set(picked.button_labels)
    assert size_of(picked) == (128, 128)  # 2x the 64 px grid image, past its 96 px: tiled

    zoomed = await result_of(world, picked, label="Zoom Out 2x")
    # Zoomed at the upscale's size, or at the most the model paints at once (turbo-tiny's
    # 96 px, like sd-turbo's 768 px against a 1024 px upscale).
    painted = MAX_SIZE[model]
    assert size_of(zoomed) == (painted, painted)
    assert "lighthouse" in zoomed.text()
    panned = await result_of(world, zoomed, emoji="⬅")
    width, height = size_of(panned)
    assert width > height and max(width, height) <= painted  # shrunk to stay paintable
    # Vary (Region): choose where, then say what goes there.
    chooser = await reply_text(await fake.click_button(panned, label="Vary (Region)"))
    assert chooser.ephemeral and "Left half" in chooser.button_labels
    region = await modal_result(world, chooser, {"prompt": "a red door"}, label="Left half")
    before, after = await pixels(world, panned), await pixels(world, region)
    assert before.shape == after.shape
    width = before.shape[1]
    # Only the left half (and its feathered border) may change.
    assert np.array_equal(before[:, width // 2 + 8 :], after[:, width // 2 + 8 :])
    assert not np.array_equal(before[:, : width // 2], after[:, : width // 2])
    final = await result_of(world, region, label="Upscale")
    assert size_of(final)[0] == 2 * size_of(region)[0]
    compare = await reply_text(await fake.click_button(final, label="Compare"))
    assert compare.ephemeral and compare.attachments
    sheet = Image.open(io.BytesIO(compare.attachments[0].data))
    assert sheet.width > sheet.height  # before | after


async def test_custom_zoom_and_box_region_take_their_fields_and_refuse_bad_ones(
    world: World,
) -> None:
    fake = world.fake
    grid = await grid_of(world, "turbo-tiny", "a quiet harbour", seed=9)
    single = await result_of(world, grid, label="U1")
    zoomed = await modal_result(
        world,
        single,
        {"prompt": "a quiet harbour at night", "extra": "1.8"},
        label="Custom Zoom",
    )
    assert size_of(zoomed) == (96, 96)
    info = await reply_text(await fake.click_button(zoomed, emoji="ℹ"))
    assert "at night" in info.content  # the edited prompt was used
    click = await fake.click_button(single, label="Custom Zoom")
    refused = await fake.submit_modal(click, {"extra": "12"})
    answer = await reply_text(refused)
    assert answer.ephemeral and "Zoom out by" in answer.content
    chooser = await reply_text(await fake.click_button(single, label="Vary (Region)"))
    click = await fake.click_button(chooser, label="A box…")
    bad_box = await reply_text(await fake.submit_modal(click, {"extra": "90 0 50 50"}))
    assert bad_box.ephemeral and "inside the image" in bad_box.content
    boxed = await modal_result(world, chooser, {"extra": "0 0 25 25"}, label="A box…")
    assert (
        size_of(boxed) == size_of(single)
        if max(size_of(single)) <= 96
        else size_of(boxed) == (96, 96)
    )


async def test_remix_mode_asks_for_the_prompt_first(world: World) -> None:
    fake = world.fake
    remixer = fake.add_member("remixer")
    on = await reply_text(await fake.send_slash_command("remix", {"mode": "on"}, user=remixer))
    assert "on" in on.content
    grid = await grid_of(world, "turbo-tiny", "a paper crane", user=remixer)
    click = await fake.click_button(grid, label="V1", user=remixer)
    modal = await click.wait_for_modal()
    assert modal["title"] == "Remix"
    submitted = await fake.submit_modal(click, {"prompt": "a paper crane in the rain"})
    await submitted.response()
    varied = await submitted.wait_for_message(is_single, timeout=120)
    info = await reply_text(await fake.click_button(varied, emoji="ℹ", user=remixer))
    parameters = read_png_parameters(info.attachments[0].data)
    assert parameters is not None and parameters.startswith("a paper crane in the rain")
    # Others are unaffected: bob's V1 runs at once.
    bobs = await result_of(world, grid, user=fake.bob, label="V2")
    assert is_single(bobs)
    off = await reply_text(await fake.send_slash_command("remix", {"mode": "off"}, user=remixer))
    assert "off" in off.content


async def test_star_picks_images_and_delete_hides_from_history(world: World) -> None:
    fake = world.fake
    picker = fake.add_member("picker")
    grid = await grid_of(world, "turbo-tiny", "four apples", user=picker)
    asked = await reply_text(await fake.click_button(grid, emoji="⭐", user=picker))
    assert asked.ephemeral
    choose = await fake.select(asked, ["0", "2"], user=picker)
    await choose.response()
    chosen = await choose.wait_for_message(lambda m: "Starred" in m.content, timeout=15)
    assert "1, 3" in chosen.content
    favourites = await reply_text(await fake.send_slash_command("favorites", user=picker))
    assert "2 images" in favourites.text()
    deleted = await fake.click_button(grid, emoji="🗑", user=picker)
    await deleted.response()
    await fake.wait_for(lambda: grid.deleted, timeout=10, description="the grid deleted")
    history = await reply_text(await fake.send_slash_command("history", user=picker))
    assert "four apples" not in history.text()
    assert (
        "four apples"
        not in (await reply_text(await fake.send_slash_command("favorites", user=picker))).text()
    )
    with sqlite3.connect(
        f"file:{world.data_dir / 'diffusion-chat.sqlite3'}?mode=ro", uri=True
    ) as db:
        [(count,)] = db.execute("SELECT count(*) FROM jobs WHERE prompt = 'four apples'")
    assert count == 1  # hidden, not erased: /forget erases


async def test_img2img_with_several_images_gets_a_grid(world: World) -> None:
    fake = world.fake
    source = Image.new("RGB", (64, 64), (30, 120, 200))
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    ix = await fake.send_slash_command(
        "imagine",
        {"prompt": "a blue tile", "count": 3, "image": ("tile.png", buffer.getvalue())},
    )
    await ix.response()
    grid = await ix.wait_for_original(is_grid, timeout=120)
    assert {"U1", "U2", "U3", "V3", "🔄"} <= set(grid.button_labels)


async def full_png(world: World, message: StoredMessage, user: Any = None) -> bytes:
    info = await reply_text(await world.fake.click_button(message, emoji="ℹ", user=user))
    return next(a.data for a in info.attachments if a.filename.endswith(".png"))


async def test_edit_crops_and_filters_into_a_result_of_its_own(world: World) -> None:
    fake = world.fake
    grid = await grid_of(world, "turbo-tiny", "a windmill", seed=21)
    single = await result_of(world, grid, label="U1")
    click = await fake.click_button(single, label="Edit")
    submitted = await fake.submit_modal(click, {"crop": "16:9", "filter": "grayscale"})
    await submitted.response()
    edited = await submitted.wait_for_message(is_single, timeout=60)
    assert "crop 16:9, grayscale" in edited.text()
    png = await full_png(world, edited)
    picture = Image.open(io.BytesIO(png)).convert("RGB")
    assert abs(picture.width / picture.height - 16 / 9) < 0.05
    red, green, blue = picture.getpixel((picture.width // 2, picture.height // 2))
    assert red == green == blue
    parameters = read_png_parameters(png)
    assert parameters is not None and "Edit: " in parameters and "a windmill" in parameters
    compare = await reply_text(await fake.click_button(edited, label="Compare"))
    assert compare.attachments  # its parent is the upscale it was made from
    for fields, complaint in (
        ({"turn": "45"}, "Rotate by 90"),
        ({"tone": "bright"}, "Tone:"),
        ({"filter": "vaporwave"}, "Filter:"),
        ({}, "Nothing to change"),
    ):
        click = await fake.click_button(single, label="Edit")
        answer = await reply_text(await fake.submit_modal(click, fields))
        assert answer.ephemeral and complaint in answer.content, (fields, answer.content)


async def test_edit_region_repaints_only_the_attached_masks_area(world: World) -> None:
    fake = world.fake
    source = Image.fromarray(np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 24, 64))
    files = {}
    for name, picture in (("photo.png", source), ("mask.png", mask)):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        files[name] = buffer.getvalue()
    ix = await fake.send_slash_command(
        "edit region",
        {
            "image": ("photo.png", files["photo.png"]),
            "mask": ("mask.png", files["mask.png"]),
            "prompt": "a green door",
        },
    )
    await ix.response()
    result = await ix.wait_for_original(is_single, timeout=120)
    after = np.asarray(Image.open(io.BytesIO(await full_png(world, result))).convert("RGB"))
    before = np.asarray(source)
    assert np.array_equal(after[:, 24 + 16 :], before[:, 24 + 16 :])
    assert not np.array_equal(after[:, :24], before[:, :24])
    empty = Image.new("L", (64, 64), 0)
    buffer = io.BytesIO()
    empty.save(buffer, format="PNG")
    refused = await reply_text(
        await fake.send_slash_command(
            "edit region",
            {
                "image": ("photo.png", files["photo.png"]),
                "mask": ("mask.png", buffer.getvalue()),
                "prompt": "a green door",
            },
        )
    )
    assert refused.ephemeral and "mask is empty" in refused.content


async def test_params_reads_a_png_and_runs_it_again(world: World) -> None:
    fake = world.fake
    grid = await grid_of(world, "turbo-tiny", "an old clock tower", seed=77, count=1)
    png = await full_png(world, grid)
    shown = await reply_text(await fake.send_slash_command("params", {"image": ("clock.png", png)}))
    assert shown.ephemeral and "an old clock tower" in shown.content and "77" in shown.content
    ix = await fake.send_slash_command("params", {"image": ("clock.png", png), "run": "again"})
    await ix.response()
    again = await ix.wait_for_original(is_grid, timeout=120)
    assert "seed 77" in again.text()
    assert np.array_equal(  # the same settings and seed make the same picture
        np.asarray(Image.open(io.BytesIO(await full_png(world, again)))),
        np.asarray(Image.open(io.BytesIO(png))),
    )
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32)).save(jpeg, format="JPEG")
    refused = await reply_text(
        await fake.send_slash_command("params", {"image": ("photo.jpg", jpeg.getvalue())})
    )
    assert refused.ephemeral and "no generation settings" in refused.content


async def test_thumbs_count_per_model_in_stats(world: World) -> None:
    fake = world.fake
    grid = await grid_of(world, "tiny-xl", "a rated sunset", count=1)
    good = await reply_text(await fake.click_button(grid, emoji="👍", user=fake.bob))
    assert good.ephemeral and "good result" in good.content
    again = await reply_text(await fake.click_button(grid, emoji="👍", user=fake.bob))
    assert "taken back" in again.content
    await reply_text(await fake.click_button(grid, emoji="👎", user=fake.bob))
    stats = await reply_text(await fake.send_slash_command("stats", user=fake.moderator))
    assert "`tiny-xl` 👍 0 👎 1" in stats.content
