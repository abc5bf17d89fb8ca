"""/imagine with disguised and invisible text, end to end: `python -m bot` against the fake
Discord. The prompt a user sees and the server's banned words hold whatever characters are
typed."""

from __future__ import annotations

import pytest
from e2e_support import World, imagine, reply_text

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("no_problems")]


async def test_banned_words_disguised_with_invisible_or_look_alike_letters_are_refused(
    world: World,
) -> None:
    fake = world.fake
    await reply_text(
        await fake.send_slash_command("banned add", {"words": "nsfw"}, user=fake.moderator)
    )
    try:
        for prompt in ("a ns\u200bfw scene", "a ns\u00adfw scene", "a n\u0455fw scene"):
            refused = await reply_text(await fake.send_slash_command("imagine", {"prompt": prompt}))
            assert refused.ephemeral and "does not allow" in refused.content, refused.content
        refused = await reply_text(
            await fake.send_slash_command(
                "imagine", {"prompt": "a lake", "negative": "N\u0405F\u200bW"}
            )
        )
        assert refused.ephemeral and "does not allow" in refused.content, refused.content
    finally:
        await reply_text(
            await fake.send_slash_command("banned remove", {"words": "nsfw"}, user=fake.moderator)
        )


async def test_control_and_invisible_characters_never_reach_the_result(world: World) -> None:
    _, message = await imagine(world, prompt="a\x00 quiet\u200b har\u00adbour\u202e", count=1)
    title = message.embeds[0]["title"]
    assert "a quiet harbour" in title, title
    assert not any(c in title for c in "\x00\u200b\u00ad\u202e"), ascii(title)


async def test_a_prompt_of_only_invisible_characters_is_refused_clearly(world: World) -> None:
    ix = await world.fake.send_slash_command("imagine", {"prompt": "\u200b\u200d\u00ad\u2800"})
    reply = await reply_text(ix)
    assert reply.ephemeral and "no visible characters" in reply.content, reply.content


async def test_a_repeated_inline_flag_is_noted_not_silently_overridden(world: World) -> None:
    ix, message = await imagine(world, prompt="a fox --seed 11 --seed 12", count=1)
    assert "12" in str(message.embeds[0])
    note = await ix.wait_for_followup(timeout=10)
    assert note.ephemeral and "--seed" in note.content and "more than once" in note.content
