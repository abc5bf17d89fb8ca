"""Styles (issue 17, first part): built-in and server styles applied by /imagine's style
option, shown on the result and stored with the job; moderators manage the server's own."""

from __future__ import annotations

import re

import pytest
from e2e_support import World, imagine, is_result, reply_text, stand_in

from engine.images import read_png_parameters
from tests.engine.helpers import write_tiny_lora

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("no_problems")]


async def drawn_png(world: World, **options: object) -> tuple[str, bytes, str]:
    """One image drawn by /imagine: the result's text, its full PNG (from ℹ) and the PNG's
    generation parameters."""
    _, result = await imagine(world, count=1, **options)
    info = await reply_text(await world.fake.click_button(result, emoji="ℹ"))
    data = info.attachments[0].data
    return result.text(), data, read_png_parameters(data) or ""


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
    async def full_png(**options: object) -> tuple[str, bytes, str]:
        return await drawn_png(world, seed=1234, steps=3, **options)

    _, plain, _ = await full_png(prompt="a fox in the snow")
    _, weighted, parameters = await full_png(prompt="a (fox:1.6) in the [snow]")
    assert weighted != plain  # the same seed, other weights: another image
    assert parameters.startswith("a (fox:1.6) in the [snow]")  # kept as written
    long_prompt = "a fox in the snow, " + ", ".join(f"detail {n}" for n in range(25))
    text, _, parameters = await full_png(prompt=long_prompt)
    assert "longer than the model reads" not in text
    assert parameters.startswith(long_prompt)  # all ~230 tokens of it, none cut


async def test_choices_make_one_labelled_image_each_and_the_cap_is_explained(
    world: World,
) -> None:
    fake = world.fake
    ix, result = await imagine(world, prompt="a {red|blue} fox", steps=2)
    assert "**1** · a red fox" in result.text() and "**2** · a blue fox" in result.text()
    info = await reply_text(await fake.click_button(result, emoji="ℹ"))
    drawn = [read_png_parameters(a.data) or "" for a in info.attachments]
    assert [p.split("\n")[0] for p in drawn] == ["a red fox", "a blue fox"]
    varied = await fake.click_button(result, label="V2")
    await varied.response()
    child = await varied.wait_for_original(is_result, timeout=90)
    assert child.embeds[0]["title"].startswith("a blue fox")  # the second image's own prompt
    # Five combinations, four images per job: the first four, and why.
    ix, result = await imagine(world, prompt="a {red|blue|green|gold|grey} owl", steps=2)
    assert "**4** · a gold owl" in result.text() and "a grey owl" not in result.text()
    note = await ix.wait_for_followup()
    assert note.ephemeral and "makes 5 combinations; this job draws 4" in note.content
    # Two at random instead, with count.
    _, result = await imagine(
        world, prompt="a {red|blue|green|gold|grey} owl", steps=2, count=2, expand="random"
    )
    assert "**2** ·" in result.text() and "**3** ·" not in result.text()
    broken = await reply_text(
        await fake.send_slash_command("imagine", {"prompt": "a {red|blue fox"})
    )
    assert broken.ephemeral and "not closed" in broken.content


async def test_moderators_add_wildcards_that_prompts_draw_from(world: World) -> None:
    fake = world.fake
    refused = await reply_text(
        await fake.send_slash_command(
            "wildcard add",
            {"name": "animal", "values": "cat, owl"},
            user=fake.bob,
            respect_permissions=False,
        )
    )
    assert refused.ephemeral and "moderators" in refused.content.lower()
    added = await reply_text(
        await fake.send_slash_command(
            "wildcard add", {"name": "Animal", "values": "cat, owl, cat,"}, user=fake.moderator
        )
    )
    assert "`__animal__` with 2 values: cat, owl" in added.content
    listed = await reply_text(await fake.send_slash_command("wildcard list"))
    assert "`__animal__` (2): cat, owl" in listed.content
    _, result = await imagine(world, prompt="a __animal__ in {snow|rain}", steps=2, user=fake.bob)
    for n, text in enumerate(("a cat in snow", "a cat in rain", "a owl in snow"), start=1):
        assert f"**{n}** · {text}" in result.text()
    unknown = await reply_text(await fake.send_slash_command("imagine", {"prompt": "a __dragon__"}))
    assert unknown.ephemeral and "no wildcard `__dragon__`" in unknown.content
    removed = await reply_text(
        await fake.send_slash_command("wildcard remove", {"name": "animal"}, user=fake.moderator)
    )
    assert "Removed the wildcard `__animal__`" in removed.content


async def test_a_lora_from_the_registry_changes_the_image_and_is_refused_when_it_does_not_fit(
    world: World,
) -> None:
    fake = world.fake
    root = world.data_dir.parent
    write_tiny_lora("tiny", root / "loras" / "ink.safetensors", seed=1)
    models = root / "loras.toml"
    models.write_text(
        '[models.tiny]\nsource = "builtin:tiny"\n[models.tiny-xl]\nsource = "builtin:tiny-xl"\n'
        '[loras.ink]\nsource = "./loras/ink.safetensors"\nfamily = "sd15"\n'
        'description = "ink lines"\ntriggers = ["inky"]\n'
    )

    async def full_png(**options: object) -> tuple[str, bytes]:
        _, data, parameters = await drawn_png(world, seed=99, steps=2, **options)
        return parameters, data

    async with stand_in(world, MODELS_FILE=str(models), DEFAULT_MODEL="tiny"):
        choices = await fake.autocomplete(
            "imagine", {"prompt": "a fox", "lora": "in"}, focused="lora"
        )
        assert [c["value"] for c in choices] == ["ink"]
        none_for_xl = await fake.autocomplete(
            "imagine", {"prompt": "a fox", "model": "tiny-xl", "lora": ""}, focused="lora"
        )
        assert none_for_xl == []
        _, plain = await full_png(prompt="a fox, inky")
        parameters, inked = await full_png(prompt="a fox", lora="ink")
        assert inked != plain and parameters.startswith("a fox, inky <lora:ink:0.8>")
        tagged, _ = await full_png(prompt="a fox <lora:ink:0.5>")
        assert "<lora:ink:0.5>" in tagged
        wrong = await reply_text(
            await fake.send_slash_command(
                "imagine", {"prompt": "a fox", "model": "tiny-xl", "lora": "ink"}
            )
        )
        assert wrong.ephemeral and "made for SD 1.5 models" in wrong.content
        unknown = await reply_text(
            await fake.send_slash_command("imagine", {"prompt": "a fox <lora:oil>"})
        )
        assert unknown.ephemeral and "no LoRA called 'oil'" in unknown.content


async def test_a_korean_user_sees_korean_commands_and_messages(world: World) -> None:
    fake = world.fake
    registered = {c["name"]: c for c in fake.registered_commands(fake.guild)}
    imagine_command = registered["imagine"]
    assert imagine_command["name_localizations"]["ko"] == "그리기"
    assert imagine_command["description_localizations"]["ko"].startswith("텍스트 프롬프트")
    options = {o["name"]: o for o in imagine_command["options"]}
    assert options["prompt"]["name_localizations"]["ko"] == "프롬프트"
    assert registered["wildcard"]["name_localizations"]["ko"] == "와일드카드"
    korean = fake.add_member("minji")
    ix = await fake.send_slash_command(
        "imagine", {"prompt": "한옥 마을의 여우", "count": 1, "steps": 2}, user=korean, locale="ko"
    )
    await ix.response()
    result = await ix.wait_for_original(is_result, timeout=90)
    shown = [v.embeds[0].get("description", "") for v in result.versions if v.embeds]
    assert any(text.startswith("⏳ 대기 중") or "스텝" in text for text in shown[:-1]), shown
    assert "2 스텝 · 가이던스" in result.text()
    assert "오늘 남은 이미지" in result.embeds[0]["footer"]["text"]
    refused = await reply_text(
        await fake.send_slash_command("imagine", {"prompt": "--ar 16:9"}, user=korean, locale="ko")
    )
    assert refused.ephemeral and refused.content == "무엇을 그릴지 적어 주세요."
    # An error of the core (the same in the API, in English) is Korean here too.
    unknown = await reply_text(
        await fake.send_slash_command(
            "imagine", {"prompt": "a __dragon__"}, user=korean, locale="ko"
        )
    )
    assert unknown.content.startswith("여기에는 `__dragon__` 와일드카드가 없습니다")
    queue = await reply_text(await fake.send_slash_command("queue", user=korean, locale="ko"))
    assert "생성 중" in queue.content and "대기열에 내 작업이 없습니다." in queue.content
    # Someone else's English stays English.
    _, english = await imagine(world, prompt="a fox", count=1, steps=2)
    assert "2 steps · guidance" in english.text() and "left for you today" in english.text()


async def test_a_korean_user_sees_korean_buttons_pages_and_numbers(world: World) -> None:
    fake = world.fake
    korean = fake.add_member("jiho")
    ix = await fake.send_slash_command(
        "imagine", {"prompt": "눈 내리는 절", "count": 1, "steps": 2}, user=korean, locale="ko"
    )
    await ix.response()
    result = await ix.wait_for_original(is_result, timeout=90)
    starred = await reply_text(
        await fake.click_button(result, emoji="⭐", user=korean, locale="ko")
    )
    assert starred.content == "⭐ 이 이미지를 즐겨찾기에 추가했습니다."
    # A variation is a job of its own: its buttons are in its requester's language.
    varied = await fake.click_button(result, label="V1", user=korean, locale="ko")
    await varied.response()
    single = await varied.wait_for_original(is_result, timeout=90)
    labels = set(single.button_labels)
    assert {"변형 (약하게)", "변형 (강하게)", "2배 축소", "편집", "비교"} <= labels, labels
    history = await reply_text(await fake.send_slash_command("history", user=korean, locale="ko"))
    page = history.embeds[0]
    assert (
        page["title"] == "🕘 내 생성 기록 (2)"
        and "번호를 누르면 열립니다" in page["footer"]["text"]
    )
    assert "이미지 1장" in page["description"]
    labels = set(history.button_labels)
    assert {"◀ 이전", "다음 ▶"} <= labels
    # Numbers and dates in the reader's way: 2026. 12. 4. in Korean, Dec 4, 2026 in English.
    stats = await reply_text(
        await fake.send_slash_command("stats", user=fake.moderator, locale="ko")
    )
    assert re.search(r"\*\*오늘 \(\d{4}\. \d{1,2}\. \d{1,2}\., UTC 00:00부터\)\*\*", stats.content)
    assert "완료 " in stats.content and "요청부터 결과까지" in stats.content
    english = await reply_text(await fake.send_slash_command("stats", user=fake.moderator))
    assert re.search(
        r"\*\*Today \([A-Z][a-z]{2} \d{1,2}, \d{4}, since 00:00 UTC\)\*\*", english.content
    )
    refused = await reply_text(
        await fake.send_slash_command("stats", user=korean, locale="ko", respect_permissions=False)
    )
    assert refused.ephemeral and refused.content == (
        "통계는 서버 관리 권한이 있는 관리자만 볼 수 있습니다."
    )
    # The model engine's own checks answer in Korean too (English in the API and the logs).
    too_many = await reply_text(
        await fake.send_slash_command(
            "imagine", {"prompt": "여우", "steps": 150}, user=korean, locale="ko"
        )
    )
    assert too_many.ephemeral and re.fullmatch(
        r"\S+ 모델의 스텝 수는 1에서 \d+ 사이여야 합니다\.", too_many.content
    ), too_many.content
    # A note about the request (a capped expansion, its reason inside it) in Korean too.
    capped = await fake.send_slash_command(
        "imagine",
        {"prompt": "{빨간|파란|초록|금색|회색} 부엉이", "steps": 2},
        user=korean,
        locale="ko",
    )
    await capped.response()
    told = await capped.wait_for_followup()
    assert told.ephemeral and told.content == (
        "프롬프트가 만드는 조합은 5개입니다. 이 작업은 그중 4개를 그립니다 (작업당 최대 4장)."
    )
    await capped.wait_for_original(is_result, timeout=90)
