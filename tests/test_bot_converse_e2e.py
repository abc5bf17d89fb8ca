"""Talking to a result: replies that mention the bot refine it (cogs/converse.py), with the
bot as its own process, the tiny model and the fake Discord, which hands a bot without the
message content intent a message's text only when the message mentions it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from e2e_support import World, imagine, is_result, job_by_message, local_server, stand_in
from fakediscord.models import StoredMessage
from fakediscord.server import FakeDiscord

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("no_problems")]


async def answer_to(
    fake: FakeDiscord,
    message: StoredMessage,
    shows: Callable[[StoredMessage], bool] = is_result,
    limit_s: float = 90,
) -> StoredMessage:
    """The bot's message that replies to ``message`` once it ``shows`` what is wanted."""

    def found() -> StoredMessage | None:
        return next(
            (
                posted
                for posted in fake.messages(message.channel_id)
                if posted.author.id == fake.bot_user.id
                and (posted.message_reference or {}).get("message_id") == str(message.id)
                and shows(posted)
            ),
            None,
        )

    return await fake.wait_for(found, timeout=limit_s, description=f"an answer to {message.id}")


def job_count(data_dir: Path) -> int:
    database = data_dir / "diffusion-chat.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])


def prompt_of(job: dict[str, Any]) -> str:
    return str(job["input"]["prompt"])


async def test_three_replies_each_refine_the_result_they_answer(world: World) -> None:
    fake = world.fake
    _, first = await imagine(world, prompt="a fox in a meadow", count=1, seed=11)
    bot = f"<@{fake.bot_user.id}>"
    # A reply pings the author of what it answers (Discord's default): the bot is mentioned.
    night = await fake.post_message("make it night", reply_to=first)
    second = await answer_to(fake, first)
    # With the ping off, an explicit mention does it; Korean works as English does.
    brighter = await fake.post_message(f"{bot} 더 밝게", reply_to=second, ping=False)
    third = await answer_to(fake, second)
    hat = await fake.post_message("add a red hat", reply_to=third, user=fake.bob)
    fourth = await answer_to(fake, third)

    jobs = [job_by_message(world.data_dir, m.id) for m in (first, second, third, fourth)]
    for parent, child in itertools.pairwise(jobs):
        assert child["parent_job_id"] == parent["id"]  # each chained to the one it answers
    assert prompt_of(jobs[1]) == "a fox in a meadow, night"
    assert "bright" in prompt_of(jobs[2]) and "night" in prompt_of(jobs[2])
    assert prompt_of(jobs[3]).endswith("a red hat")
    assert all(job["input"]["operation"] == "img2img" for job in jobs[1:])
    # Each new job is its writer's: quota and history follow who asked.
    assert jobs[3]["user_id"] == fake.bob.user.id and jobs[1]["user_id"] == fake.alice.user.id
    assert second.content.startswith(f"<@{fake.alice.user.id}>")
    assert fourth.content.startswith(f"<@{fake.bob.user.id}>")
    assert {night.id, brighter.id, hat.id}.isdisjoint(m.id for m in fake.messages() if m.deleted)


async def test_messages_that_do_not_mention_the_bot_are_neither_read_nor_answered(
    world: World,
) -> None:
    fake = world.fake
    _, result = await imagine(world, prompt="a quiet lake", count=1, seed=12)
    before = job_count(world.data_dir)
    unmentioned = await fake.post_message("make it night", reply_to=result, ping=False)
    # Discord's rule, applied by the fake: without the message content intent the bot gets
    # the event with an empty text.
    session = fake.session
    assert session is not None
    delivered = [
        data
        for _, name, data in session.events
        if name == "MESSAGE_CREATE" and data["id"] == str(unmentioned.id)
    ]
    assert delivered and delivered[0]["content"] == ""
    # A mention that answers nothing the bot made gets a hint, in a reply, without a ping.
    hello = await fake.post_message(f"<@{fake.bot_user.id}> hello there")
    hint = await answer_to(fake, hello, lambda m: "Reply to one of my results" in m.content, 30)
    assert hint.mentions == []
    # A reply to the hint (a message of the bot's that is no result) gets the same hint.
    again = await fake.post_message("make it night", reply_to=hint)
    await answer_to(fake, again, lambda m: "Reply to one of my results" in m.content, 30)
    # An instruction that says nothing is refused with what to write; nothing is charged.
    empty = await fake.post_message("please", reply_to=result)
    refusal = await answer_to(fake, empty, lambda m: "make it night" in m.content, 30)
    assert "Say what to change" in refusal.content
    # The unmentioned reply went the same way as this one, earlier, had it been read: it
    # made no job and got no answer.
    assert job_count(world.data_dir) == before
    answered = {(m.message_reference or {}).get("message_id") for m in fake.messages()}
    assert str(unmentioned.id) not in answered


async def test_an_llm_endpoint_refines_replies_and_the_rule_covers_its_timeouts(
    world: World,
) -> None:
    fake = world.fake
    slow = {"on": False}

    async def chat(request: web.Request) -> web.Response:
        if slow["on"]:
            await asyncio.sleep(3)
        asked = json.loads((await request.json())["messages"][1]["content"])
        answer = {"prompt": f"{asked['prompt']}, under a full moon", "negative_prompt": "sun"}
        reply = {"choices": [{"message": {"role": "assistant", "content": json.dumps(answer)}}]}
        return web.json_response(reply)

    async with (
        local_server({"/v1/chat/completions": chat}, method="POST") as origin,
        stand_in(world, LLM_BASE_URL=f"{origin}/v1", LLM_TIMEOUT_S="1") as bot,
    ):
        data_dir = Path(bot.env["DATA_DIR"])
        _, first = await imagine(world, prompt="an owl on a branch", count=1, seed=13)
        await fake.post_message("make it night", reply_to=first)
        second = await answer_to(fake, first)
        by_llm = job_by_message(data_dir, second.id)
        assert prompt_of(by_llm) == "an owl on a branch, under a full moon"
        slow["on"] = True
        await fake.post_message("add a lantern", reply_to=second)
        third = await answer_to(fake, second)
        by_rule = job_by_message(data_dir, third.id)
        assert by_rule["parent_job_id"] == by_llm["id"]
        assert prompt_of(by_rule) == "an owl on a branch, under a full moon, a lantern"
        slow["on"] = False  # back: the third reply of the chain is the model's again
        await fake.post_message("더 밝게", reply_to=third)
        fourth = await answer_to(fake, third)
        again = job_by_message(data_dir, fourth.id)
        assert again["parent_job_id"] == by_rule["id"]
        assert (
            prompt_of(again)
            == "an owl on a branch, under a full moon, a lantern, under a full moon"
        )
