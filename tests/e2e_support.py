"""Shared pieces of the end-to-end tests: the bot as its own process against the fake Discord."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from fakediscord.interactions import FakeDiscordTimeout, InteractionHandle
from fakediscord.models import StoredMessage
from fakediscord.process import BotProcess, start_bot_process
from fakediscord.server import FakeDiscord
from fakediscord.spec import OpenAPISpec

ROOT = Path(__file__).resolve().parents[1]
EDIT_INTERVAL_S = 0.3


def hold_dir(data_dir: Path) -> Path:
    """Where a test puts its holds (see ``tests/engine_holds/sitecustomize.py``)."""
    return data_dir.parent / "engine-holds"


def bot_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The bot's settings; its engine honours holds (a ``PYTHONPATH`` in ``extra`` replaces
    the hold aid with another, and then holds do nothing)."""
    return {
        "PYTHONPATH": str(ROOT / "tests" / "engine_holds"),
        "ENGINE_HOLD_DIR": str(hold_dir(data_dir)),
        "DATA_DIR": str(data_dir),
        "DEFAULT_MODEL": "tiny",
        # The image check's tests turn it on with a tiny classifier (foreign_models).
        "NSFW_MODEL": "off",
        "PREVIEW_EVERY": "2",
        "PROGRESS_EDIT_INTERVAL_S": str(EDIT_INTERVAL_S),
        "LOG_LEVEL": "INFO",
        "DEFAULT_DAILY_IMAGES": "400",
        "DEFAULT_CONCURRENT_JOBS": "4",
        **extra,
    }


@dataclass
class World:
    fake: FakeDiscord
    bot: BotProcess
    data_dir: Path


async def wait_until(predicate: Callable[[], Any], bot: BotProcess, limit_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not predicate():
        if bot.returncode is not None:
            raise AssertionError(f"bot exited {bot.returncode}:\n{bot.output[-4000:]}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out; bot output:\n{bot.output[-4000:]}")
        await asyncio.sleep(0.05)


def validating_fake() -> FakeDiscord:
    """A fake Discord that checks every body against Discord's OpenAPI spec (vendored, so it
    is never missing: loading it raises if it is). A body Discord would refuse is a problem,
    and the ``no_problems`` fixture fails the test on it."""
    return FakeDiscord(spec=OpenAPISpec.load())


async def start_world(data_dir: Path, **env: str) -> World:
    fake = validating_fake()
    await fake.start()
    bot = await start_bot_process(fake, env=bot_env(data_dir, **env), cwd=ROOT)
    await wait_until(lambda: fake.sync_count() > 0 and fake.session is not None, bot, 60)
    return World(fake, bot, data_dir)


class StandIn:
    """A bot process with other settings, in the world's bot's place (Discord allows one
    gateway session per token)."""

    def __init__(self, world: World, env: dict[str, str]) -> None:
        self.world = world
        self.env = env
        self.proc: BotProcess | None = None

    async def start(self) -> BotProcess:
        fake = self.world.fake
        self.proc = await start_bot_process(fake, env=self.env, cwd=ROOT)
        await wait_until(lambda: fake.session is not None and fake.session.connected, self.proc, 60)
        return self.proc

    async def crash_and_restart(self) -> BotProcess:
        """SIGKILL, as a power cut would; then start again on the same data."""
        assert self.proc is not None
        self.proc.kill(signal.SIGKILL)
        await self.proc.wait()
        self.proc = await start_bot_process(self.world.fake, env=self.env, cwd=ROOT)
        return self.proc


@contextlib.asynccontextmanager
async def stand_in(world: World, **env: str) -> AsyncIterator[StandIn]:
    """Run the block against a bot started with ``bot_env(**env)``; restore the world's bot."""
    data_dir = Path(env.pop("DATA_DIR", str(world.data_dir.parent / "stand-in-data")))
    bot = StandIn(world, bot_env(data_dir, **env))
    await world.bot.stop()
    try:
        await bot.start()
        yield bot
    finally:
        if bot.proc is not None:
            await bot.proc.stop()
        world.bot = await start_bot_process(world.fake, env=bot_env(world.data_dir), cwd=ROOT)
        fake = world.fake
        await wait_until(lambda: fake.session is not None and fake.session.connected, world.bot, 60)


async def stop_world(world: World) -> None:
    await world.bot.stop()
    await world.fake.stop()


def assert_no_problems(world: World) -> None:
    problems = world.fake.problems
    assert not problems, "\n".join(str(p) for p in problems) + "\n" + world.bot.output[-3000:]


_TROUBLE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


@contextlib.contextmanager
def explained_by(bot: BotProcess | None) -> Iterator[None]:
    """A wait in the block that times out says what ``bot`` logged meanwhile: a job that
    never arrives is then told apart from one that was lost on the way."""
    try:
        yield
    except (FakeDiscordTimeout, TimeoutError) as error:
        if bot is None:
            raise AssertionError(f"{error}\n(no bot)") from error
        # The tail alone can be all heartbeat noise: the warnings before it say what broke.
        troubles = [line for line in bot.output.splitlines() if _TROUBLE.search(line)]
        raise AssertionError(
            f"{error}\n--- the bot's warnings and errors ---\n"
            + "\n".join(troubles[-40:])
            + f"\n--- the bot's output ---\n{bot.output[-6000:]}"
        ) from error


def hold(
    world: World, prompt_piece: str, from_step: int
) -> contextlib.AbstractContextManager[Callable[[], None]]:
    """Hold the world's bot's jobs whose prompt contains ``prompt_piece`` before they report
    ``from_step``; yields the release (also done on leaving the block)."""
    return hold_jobs(world.data_dir, prompt_piece, from_step)


@contextlib.contextmanager
def hold_jobs(data_dir: Path, prompt_piece: str, from_step: int) -> Iterator[Callable[[], None]]:
    """``hold`` for any process started with ``bot_env(data_dir)``."""
    folder = hold_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.hold"
    partial = path.with_suffix(".tmp")
    partial.write_text(f"{prompt_piece}\n{from_step}\n", encoding="utf-8")
    partial.replace(path)  # whole or absent: never read half-written
    try:
        yield lambda: path.unlink(missing_ok=True)
    finally:
        path.unlink(missing_ok=True)


def recorded_message_id(data_dir: Path, prompt: str) -> int | None:
    """The message the bot has recorded, in its database, for its job with this prompt."""
    database = data_dir / "diffusion-chat.sqlite3"
    with contextlib.closing(
        sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    ) as connection:
        row = connection.execute(
            "SELECT message_id FROM jobs WHERE prompt = ? ORDER BY created_at DESC LIMIT 1",
            (prompt,),
        ).fetchone()
    return None if row is None else row[0]


def job_by_message(data_dir: Path, message_id: int) -> dict[str, Any]:
    """The bot's record of the job whose message is ``message_id``: its columns, and its
    request decoded as ``input``."""
    database = data_dir / "diffusion-chat.sqlite3"
    with contextlib.closing(
        sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    ) as connection:
        connection.row_factory = sqlite3.Row
        row = connection.execute(
            "SELECT * FROM jobs WHERE message_id = ?", (message_id,)
        ).fetchone()
    assert row is not None, f"no job has message {message_id}"
    return {**dict(row), "input": json.loads(row["request"])}


def is_grid(message: StoredMessage | None) -> bool:
    return bool(message and message.attachments and "U1" in message.button_labels)


def is_single(message: StoredMessage | None) -> bool:
    """A single-image result (its Vary (Subtle) button, whatever language labels it)."""
    return bool(
        message
        and message.attachments
        and any(":vsub:" in (button.get("custom_id") or "") for button in message.buttons)
    )


def is_result(message: StoredMessage | None) -> bool:
    return is_grid(message) or is_single(message)


def in_progress(message: StoredMessage | None) -> bool:
    """Showing the progress bar: running, not finished (a result says "N steps" too)."""
    return bool(message and "%" in message.text() and not is_result(message))


async def imagine(
    world: World, user: Any = None, **options: Any
) -> tuple[InteractionHandle, StoredMessage]:
    """Run /imagine and wait for its finished result message."""
    ix = await world.fake.send_slash_command("imagine", options, user=user)
    await ix.response()
    message = await ix.wait_for_original(is_result, timeout=90)
    return ix, message


async def reply_text(ix: InteractionHandle) -> StoredMessage:
    await ix.response()
    return await ix.wait_for_message(timeout=15)


async def click_id(world: World, message: StoredMessage, custom_id: str, user: Any) -> Any:
    """Click a button id that is not (or no longer) on the message: a client showing an older
    version of it, or a crafted interaction."""
    fake = world.fake
    data = {"custom_id": custom_id, "component_type": 2}
    handle, _ = fake._component_payload(message, fake._resolve_user(user), "en-US", data)
    return await fake._dispatch(handle, wait_connected=True, timeout=10)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def local_server(routes: dict[str, Handler], method: str = "GET") -> AsyncIterator[str]:
    """A real HTTP server on 127.0.0.1 answering ``routes`` (path: handler); yields its
    origin (``http://127.0.0.1:PORT``): an image host, a chat endpoint..."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
