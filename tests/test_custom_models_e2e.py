"""/model add and /model remove as the bot's owners meet them: `python -m bot` in its own
process, the fake Discord, and a real HTTP server on 127.0.0.1 that stands in for a public
https host (``LINK_TEST_HOSTS``). The file it serves is the tiny model written as an
original-layout .safetensors checkpoint, so the model added really draws."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from api_support import PREFIX, free_port
from e2e_support import (
    ROOT,
    World,
    bot_env,
    imagine,
    local_server,
    reply_text,
    stop_world,
    validating_fake,
    wait_until,
)
from fakediscord.interactions import InteractionHandle
from fakediscord.models import StoredMessage
from fakediscord.process import start_bot_process

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("no_problems")]

CHUNKS = 8  # the model file is served in this many pieces, slowly enough to show progress
CHUNK_PAUSE_S = 0.15


@dataclass
class Served:
    origin: str
    model_file: Path
    max_bytes: int
    hits: list[str]


def write_tiny_model(folder: Path) -> tuple[Path, Path]:
    """The tiny SD 1.5 model as a diffusers folder (its configs) and as a single file."""
    from engine.tiny import build_tiny_sd15
    from tests.engine.ldm_export import save_single_file

    pipe = build_tiny_sd15()
    pipe.save_pretrained(folder / "tiny-folder")
    return folder / "tiny-folder", save_single_file(pipe, folder / "tiny.safetensors")


@pytest.fixture(scope="module")
def served_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("custom-model-files")
    config, single = write_tiny_model(folder)
    registry = folder / "models.toml"
    registry.write_text(
        'default = "tiny"\n[models.tiny]\nsource = "builtin:tiny"\n'
        f'[models.tiny-folder]\nsource = "{config}"\nsteps = 2\n',
        encoding="utf-8",
    )
    return config, single, registry


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(served_files: tuple[Path, Path, Path]) -> AsyncIterator[Served]:
    _, single, _ = served_files
    body = single.read_bytes()
    limit = len(body) + 4096
    hits: list[str] = []

    async def slowly(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        response = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await response.prepare(request)
        step = -(-len(body) // CHUNKS)
        for start in range(0, len(body), step):
            await response.write(body[start : start + step])
            await asyncio.sleep(CHUNK_PAUSE_S)
        await response.write_eof()
        return response

    async def endless(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        response = web.StreamResponse()  # no Content-Length: the cap bites while streaming
        await response.prepare(request)
        for _ in range(limit // 2**16 + 2):
            await response.write(b"\0" * 2**16)
        await response.write_eof()
        return response

    def answering(
        make: Callable[[web.Request], web.Response],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            hits.append(request.path)
            return make(request)

        return handler

    def redirect(location: str) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    def fixed(data: bytes) -> web.Response:
        return web.Response(body=data, content_type="application/octet-stream")

    routes = {
        "/tiny.safetensors": slowly,
        "/big.safetensors": answering(lambda r: fixed(b"\0" * (limit + 1))),
        "/endless.safetensors": endless,
        "/model.ckpt": answering(lambda r: fixed(pickle.dumps({"weights": [1, 2, 3]}))),
        "/disguised.safetensors": answering(lambda r: fixed(pickle.dumps({"w": [1, 2]}))),
        "/to-private": answering(lambda r: redirect("http://10.20.30.40/m.safetensors")),
        # A name that resolves to this machine: refused once resolved, before connecting.
        "/to-localhost": answering(
            lambda r: redirect(f"https://localhost:{r.url.port}/tiny.safetensors")
        ),
    }
    async with local_server(routes) as origin:
        yield Served(origin, single, limit, hits)


@pytest.fixture(scope="module")
def api_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def bot_settings() -> dict[str, str]:
    """The world's bot's environment, once it is started (to start it again)."""
    return {}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory,
    served_files: tuple[Path, Path, Path],
    server: Served,
    api_port: int,
    bot_settings: dict[str, str],
) -> AsyncIterator[World]:
    """The bot with owners, the test server allowed, a small size limit and no hub."""
    fake = validating_fake()
    await fake.start()
    data_dir = tmp_path_factory.mktemp("bot-data")
    env = bot_env(
        data_dir,
        MODELS_FILE=str(served_files[2]),
        OWNER_IDS=str(fake.owner_user.id),
        LINK_TEST_HOSTS=server.origin.removeprefix("http://"),
        MODEL_MAX_BYTES=str(server.max_bytes),
        HF_HUB_OFFLINE="1",
        API_PORT=str(api_port),
        API_ALLOW_ANONYMOUS="true",
    )
    bot_settings.update(env)
    bot = await start_bot_process(fake, env=env, cwd=ROOT)
    await wait_until(lambda: fake.sync_count() > 0 and fake.session is not None, bot, 60)
    started = World(fake, bot, data_dir)
    try:
        yield started
    finally:
        await stop_world(started)


async def add_model(world: World, user: object = None, **options: str) -> InteractionHandle:
    fake = world.fake
    return await fake.send_slash_command(
        "model add", options, user=user if user is not None else fake.owner
    )


async def final_answer(ix: InteractionHandle) -> StoredMessage:
    """The answer once the download is over (progress edits come first)."""
    await ix.response()
    return await ix.wait_for_message(
        lambda m: not m.loading and "Downloading" not in m.content, timeout=60
    )


def kept_files(world: World) -> list[str]:
    folder = world.data_dir / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def api_models(port: int) -> list[str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{PREFIX}/models") as answer,
    ):
        assert answer.status == 200, await answer.text()
        return [model["name"] for model in await answer.json()]


async def test_only_the_bots_owners_may_add_or_remove_models(world: World, server: Served) -> None:
    fake = world.fake
    for user in (fake.moderator, fake.bob):
        refused = await reply_text(
            await fake.send_slash_command(
                "model add",
                {"name": "nope", "source": f"{server.origin}/tiny.safetensors"},
                user=user,
                respect_permissions=False,
            )
        )
        assert refused.ephemeral and "Only the bot's owners" in refused.content
        removal = await reply_text(
            await fake.send_slash_command(
                "model remove", {"name": "tiny"}, user=user, respect_permissions=False
            )
        )
        assert removal.ephemeral and "Only the bot's owners" in removal.content
    assert server.hits == []


async def test_unsafe_private_and_oversized_sources_are_refused_and_leave_nothing(
    world: World, server: Served
) -> None:
    origin = server.origin
    refused = {
        f"{origin}/model.ckpt": "pickled checkpoint",
        f"{origin}/disguised.safetensors": "not a .safetensors file",
        "https://192.168.1.20/model.safetensors": "private or local address",
        f"{origin}/to-private": "private or local address",
        f"{origin}/to-localhost": "private or local address",
        f"{origin}/big.safetensors": "larger than the limit",
        f"{origin}/endless.safetensors": "larger than the limit",
        "org/some-model": "could not reach the Hugging Face hub",
        "ftp://example.com/x.safetensors": "neither a Hugging Face hub id",
    }
    for source, reason in refused.items():
        answer = await final_answer(await add_model(world, name="refused", source=source))
        assert answer.ephemeral and reason in answer.content, (source, answer.content)
        assert "Traceback" not in answer.content
    assert "/model.ckpt" not in server.hits  # refused by its name, before any download
    assert "/big.safetensors" in server.hits and "/endless.safetensors" in server.hits
    assert kept_files(world) == []  # partial downloads deleted
    taken = await final_answer(await add_model(world, name="tiny", source="org/x"))
    assert "already a model called `tiny`" in taken.content
    choices = await world.fake.autocomplete("imagine", {"prompt": "x", "model": ""})
    assert "refused" not in [c["value"] for c in choices]


async def test_an_owner_adds_a_model_from_a_link_and_it_draws_at_once(
    world: World, server: Served, api_port: int, bot_settings: dict[str, str]
) -> None:
    fake = world.fake
    ix = await add_model(
        world,
        name="linked",
        source=f"{server.origin}/tiny.safetensors",
        config="tiny-folder",
    )
    answer = await final_answer(ix)
    sha = hashlib.sha256(server.model_file.read_bytes()).hexdigest()
    assert answer.ephemeral and "`linked` (sd15" in answer.content, answer.content
    assert f"SHA-256 `{sha[:12]}…`" in answer.content
    shown = [version.content for version in answer.versions]
    assert any("Downloading `linked`" in text and "%" in text for text in shown), shown
    assert kept_files(world) == [f"linked-{sha[:12]}.safetensors"]

    # Offered everywhere at once, without a restart: autocomplete, /imagine, the API.
    choices = await fake.autocomplete("imagine", {"prompt": "x", "model": "link"})
    assert [c["value"] for c in choices] == ["linked"]
    _, result = await imagine(world, prompt="a linked lighthouse", model="linked", count=1, steps=2)
    assert result.embeds[0]["footer"]["text"].startswith("linked · ")
    assert "linked" in await api_models(api_port)
    again = await final_answer(
        await add_model(world, name="linked", source=f"{server.origin}/tiny.safetensors")
    )
    assert "already a model called `linked`" in again.content

    # The registry lives in the database: a restarted bot offers the model again.
    await world.bot.stop()
    world.bot = await start_bot_process(fake, env=bot_settings, cwd=ROOT)
    await wait_until(lambda: fake.session is not None and fake.session.connected, world.bot, 60)
    await wait_until(lambda: "custom models offered: linked" in world.bot.output, world.bot, 30)
    choices = await fake.autocomplete("imagine", {"prompt": "x", "model": "link"})
    assert [c["value"] for c in choices] == ["linked"]

    # Removed by an owner: gone everywhere, its file deleted; the registry file's stay.
    not_custom = await reply_text(
        await fake.send_slash_command("model remove", {"name": "tiny"}, user=fake.owner)
    )
    assert "not a model added with `/model add`" in not_custom.content
    removed = await reply_text(
        await fake.send_slash_command("model remove", {"name": "linked"}, user=fake.owner)
    )
    assert removed.ephemeral and "`linked` is removed" in removed.content
    assert kept_files(world) == []
    assert "linked" not in await api_models(api_port)
    gone = await reply_text(
        await fake.send_slash_command("imagine", {"prompt": "a lighthouse", "model": "linked"})
    )
    assert gone.ephemeral and "linked" in gone.content
