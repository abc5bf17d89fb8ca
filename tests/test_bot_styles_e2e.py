"""Styles (issue 17, first part): built-in and server styles applied by /imagine's style
option, shown on the result and stored with the job; moderators manage the server's own."""

from __future__ import annotations

import pytest
from e2e_support import World, imagine, reply_text

from engine.images import read_png_parameters

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("no_problems")]


async def test_a_builtin_style_wraps_the_prompt_and_is_shown(world: World) -> None:
    fake = world.fake
    choices = await fake.autocomplete(
        "imagine", {"prompt": "a fox", "style": "cine"}, focused="style"
    )
    assert [c["value"] for c in choices] == ["cinematic"]
    _, result = await imagine(world, prompt="a fox in the snow", style="cinematic", count=1)
    assert "🎨 Style: cinematic" in result.text()
    assert result.embeds[0]["title"].startswith("a fox in the snow")  # the user's own words
    info = await reply_text(await fake.click_button(result, emoji="ℹ"))
    parameters = read_png_parameters(info.attachments[0].data)
    assert parameters is not None
    assert parameters.startswith("cinematic still of a fox in the snow, dramatic lighting")
    assert "Negative prompt: cartoon, illustration" in parameters
    history = await reply_text(await fake.send_slash_command("history", {"search": "fox snow"}))
    assert "a fox in the snow" in history.text()
    unknown = await reply_text(
        await fake.send_slash_command("imagine", {"prompt": "a fox", "style": "vaporwave"})
    )
    assert unknown.ephemeral and "no style `vaporwave`" in unknown.content


async def test_moderators_add_server_styles_that_others_use(world: World) -> None:
    fake = world.fake
    refused = await reply_text(
        await fake.send_slash_command(
            "style add",
            {"name": "house", "template": "{prompt}, in our house style"},
            user=fake.bob,
            respect_permissions=False,
        )
    )
    assert refused.ephemeral and "moderators" in refused.content.lower()
    bad = await reply_text(
        await fake.send_slash_command(
            "style add", {"name": "house", "template": "no placeholder"}, user=fake.moderator
        )
    )
    assert "{prompt}" in bad.content
    added = await reply_text(
        await fake.send_slash_command(
            "style add",
            {"name": "House", "template": "{prompt}, in our house style", "negative": "text"},
            user=fake.moderator,
        )
    )
    assert "Added the style **house**" in added.content
    listed = await reply_text(await fake.send_slash_command("style list", user=fake.bob))
    assert "**house** (this server)" in listed.content and "**photo**" in listed.content
    _, result = await imagine(world, prompt="a red kite", style="house", count=1, user=fake.bob)
    assert "🎨 Style: house" in result.text()
    info = await reply_text(await fake.click_button(result, emoji="ℹ", user=fake.bob))
    parameters = read_png_parameters(info.attachments[0].data)
    assert parameters is not None and parameters.startswith("a red kite, in our house style")
    in_dm = await reply_text(
        await fake.send_slash_command(
            "imagine",
            {"prompt": "a kite", "style": "house"},
            guild="dm",
            require_registered=False,  # DEV_GUILD_ID syncs to the server only
        )
    )
    assert "no style `house`" in in_dm.content  # a server's style stays in its server
    removed = await reply_text(
        await fake.send_slash_command("style remove", {"name": "house"}, user=fake.moderator)
    )
    assert "Removed the style **house**" in removed.content


async def test_trending_lists_this_weeks_prompts_with_buttons_to_use_them(world: World) -> None:
    fake = world.fake
    for _ in range(2):
        await imagine(world, prompt="a trending teapot", count=1)
    _, starred = await imagine(world, prompt="a starred lantern", count=1, user=fake.bob)
    await reply_text(await fake.click_button(starred, emoji="⭐", user=fake.bob))
    await imagine(world, prompt="a secret diary", count=1, private=True)
    shown = await reply_text(await fake.send_slash_command("trending", user=fake.moderator))
    assert shown.ephemeral and "Most used this week" in shown.content
    used_part, _, starred_part = shown.content.partition("Most favourited")
    assert "a trending teapot" in used_part and "· 2×" in used_part
    assert "a starred lantern" in starred_part
    assert "secret diary" not in shown.content  # private results are nobody else's
    use = await fake.click_button(shown, label="Use 1", user=fake.moderator)
    await use.response()
    again = await use.wait_for_message(lambda m: "U1" in m.button_labels, timeout=90)
    assert "a trending teapot" in again.text()
    offered = await fake.autocomplete("imagine", {"prompt": ""}, focused="prompt", user=fake.bob)
    assert "a trending teapot" in [choice["value"] for choice in offered]


async def test_weighted_and_long_prompts_are_read_as_written(world: World) -> None:
    fake = world.fake

    async def full_png(**options: object) -> tuple[str, bytes, str]:
        _, result = await imagine(world, count=1, seed=1234, steps=3, **options)
        info = await reply_text(await fake.click_button(result, emoji="ℹ"))
        data = info.attachments[0].data
        return result.text(), data, read_png_parameters(data) or ""

    _, plain, _ = await full_png(prompt="a fox in the snow")
    _, weighted, parameters = await full_png(prompt="a (fox:1.6) in the [snow]")
    assert weighted != plain  # the same seed, other weights: another image
    assert parameters.startswith("a (fox:1.6) in the [snow]")  # kept as written
    long_prompt = "a fox in the snow, " + ", ".join(f"detail {n}" for n in range(25))
    text, _, parameters = await full_png(prompt=long_prompt)
    assert "longer than the model reads" not in text
    assert parameters.startswith(long_prompt)  # all ~230 tokens of it, none cut
