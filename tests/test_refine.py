"""Conversational refinement: the rule, and an OpenAI-compatible endpoint (a real local HTTP
server) with the rule answering whenever the endpoint does not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from e2e_support import Handler, local_server

from core.errors import InvalidField
from core.refine import Refiner, refine_by_rule

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize(
    ("instruction", "prompt", "negative"),
    [
        ("make it night", "a fox in the snow, night", "blurry"),
        ("Please make it look foggy.", "a fox in the snow, foggy", "blurry"),
        ("add a red hat", "a fox in the snow, a red hat", "blurry"),
        ("more red", "a fox in the snow, (red:1.3)", "blurry"),
        ("no snow", "a fox in the", "blurry, snow"),
        ("더 밝게", "a fox in the snow, (bright:1.3)", "blurry"),
        ("밤으로 바꿔줘", "a fox in the snow, night", "blurry"),
        ("모자를 빼줘", "a fox in the snow", "blurry, hat"),
    ],
)
async def test_the_rule_turns_an_instruction_into_the_next_prompt(
    instruction: str, prompt: str, negative: str
) -> None:
    refined = refine_by_rule("a fox in the snow", "blurry", instruction)
    assert (refined.prompt, refined.negative_prompt, refined.by) == (prompt, negative, "rule")


async def test_an_empty_or_huge_instruction_is_refused_on_its_field() -> None:
    for instruction in ("  ", "please", "x" * 501):
        with pytest.raises(InvalidField) as refused:
            refine_by_rule("a fox", "", instruction)
        assert refused.value.field == "instruction"


@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    async with contextlib.AsyncExitStack() as servers:

        async def start(handler: Handler) -> str:
            routes = {"/v1/chat/completions": handler}
            return f"{await servers.enter_async_context(local_server(routes, 'POST'))}/v1"

        yield start


def chat_reply(content: str) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


async def test_an_llm_endpoint_rewrites_the_prompt(
    endpoint: Callable[[Handler], Awaitable[str]],
) -> None:
    asked: list[tuple[dict[str, Any], str | None]] = []

    async def rewrite(request: web.Request) -> web.Response:
        body = await request.json()
        asked.append((body, request.headers.get("Authorization")))
        change = json.loads(body["messages"][1]["content"])
        answer = {"prompt": f"{change['prompt']}, at night, moonlit", "negative_prompt": "day"}
        # Models often fence their JSON: read either way.
        return web.json_response(chat_reply(f"```json\n{json.dumps(answer)}\n```"))

    refiner = Refiner(await endpoint(rewrite), model="local", api_key="sk-test-1234")
    refined = await refiner.refine("a fox", "", "밤으로 바꿔줘")
    assert (refined.prompt, refined.negative_prompt, refined.by) == (
        "a fox, at night, moonlit",
        "day",
        "llm",
    )
    body, authorization = asked[0]
    assert body["model"] == "local" and authorization == "Bearer sk-test-1234"
    assert json.loads(body["messages"][1]["content"])["change"] == "밤으로 바꿔줘"


async def test_the_rule_answers_when_the_endpoint_is_slow_broken_or_talks_nonsense(
    endpoint: Callable[[Handler], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.json_response(chat_reply('{"prompt": "too late"}'))

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="upstream down")

    async def nonsense(request: web.Request) -> web.Response:
        return web.json_response(chat_reply("Sure! Here is a lovely prompt about foxes."))

    async def empty(request: web.Request) -> web.Response:
        return web.json_response(chat_reply('{"prompt": ""}'))

    caplog.set_level(logging.WARNING, logger="core.refine")
    for handler in (slow, broken, nonsense, empty):
        refiner = Refiner(await endpoint(handler), api_key="sk-secret-5678", timeout_s=0.5)
        refined = await refiner.refine("a fox", "", "make it night")
        assert (refined.prompt, refined.by) == ("a fox, night", "rule"), handler.__name__
    down = Refiner("http://127.0.0.1:9/v1", timeout_s=0.5)  # nothing listens there
    assert (await down.refine("a fox", "", "make it night")).by == "rule"
    logged = caplog.text
    assert "using the rule" in logged and "sk-secret-5678" not in logged and "a fox" not in logged
