"""Prompts as typed by someone trying to slip past the banned words or break what is shown:
invisible characters, controls, look-alike letters, repeated flags."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot import render
from core import textguard
from core.errors import UserError
from core.prompts import parse_inline
from core.service import JobService
from core.storage import Database, LocalImageStore
from engine.engine import Engine, EngineSettings
from engine.registry import ModelRegistry
from tests.fake_backend import FakeBackend

GUILD = 100

BYPASSES = [
    "a ns\u200bfw scene",  # zero-width space
    "a ns\u00adfw scene",  # soft hyphen
    "a n\u200dsfw scene",  # zero-width joiner
    "a \u2060nsfw\ufeff scene",  # word joiner, byte-order mark
    "a n\u0455fw scene",  # Cyrillic dze
    "a N\u0405FW scene",  # Cyrillic capital dze
    "a \u0274sfw scene",  # Latin small capital N
    "a \u039dSFW scene",  # Greek capital nu
    "a \uff4e\uff53\uff46\uff57 scene",  # full-width
    "a n\u0161fw scene",  # accented
    "a n\u0301sfw scene",  # combining accent
    "a ns\x00fw scene",  # NUL
    "a nsf\u200bw\u200b\u200b scene",
]


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[JobService]:
    images = LocalImageStore(tmp_path / "images")
    async with Database.open(tmp_path / "db.sqlite3", images=images) as db:
        engine = Engine(FakeBackend(), EngineSettings())
        yield JobService(db, images, engine, ModelRegistry.load())


@pytest.mark.asyncio
@pytest.mark.parametrize("prompt", BYPASSES)
async def test_disguised_banned_words_are_refused(service: JobService, prompt: str) -> None:
    await service.db.guilds.add_banned_words(GUILD, ["nsfw", "sea serpent"])
    with pytest.raises(UserError, match="nsfw"):
        await service.check_banned_words(GUILD, prompt, None)
    with pytest.raises(UserError, match="nsfw"):
        await service.check_banned_words(GUILD, "a calm lake", prompt)  # in the negative too


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "prompt", ["a sea\u00a0\u00a0serpent", "a s\u0435a s\u0435rp\u0435nt", "a SEA\tSERPENT"]
)
async def test_disguised_banned_phrases_are_refused(service: JobService, prompt: str) -> None:
    await service.db.guilds.add_banned_words(GUILD, ["sea serpent"])
    with pytest.raises(UserError, match="sea serpent"):
        await service.check_banned_words(GUILD, prompt)


@pytest.mark.asyncio
async def test_innocent_prompts_and_other_scripts_still_pass_and_match(
    service: JobService,
) -> None:
    await service.db.guilds.add_banned_words(GUILD, ["nsfw", "\u03bc\u03b7\u03bb\u03bf"])
    for prompt in ("a nsfwish", "unsafe for work", "\U0001f468\u200d\U0001f469 family", "Ν"):
        await service.check_banned_words(GUILD, prompt)
    # A word banned in Greek is found in capitals too.
    with pytest.raises(UserError):
        await service.check_banned_words(GUILD, "\u039c\u0397\u039b\u039f")


@pytest.mark.asyncio
async def test_a_banned_word_of_only_invisible_characters_blocks_nothing(
    service: JobService,
) -> None:
    await service.db.guilds.add_banned_words(GUILD, ["\u200b\u200d"])
    await service.check_banned_words(GUILD, "a quiet harbour")


def test_clean_removes_controls_and_invisible_characters_and_keeps_joined_emoji() -> None:
    assert textguard.clean("a\x00 quiet\x07 har\u200bbour\u202e\u00ad") == "a quiet harbour"
    assert textguard.clean("line one\nline\ttwo\r") == "line one\nline\ttwo"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert textguard.clean(f"{family} at home") == f"{family} at home"
    assert textguard.clean("\u200da cat\u200d \u200d") == "a cat "
    assert textguard.clean("\ud800 lone surrogate") == " lone surrogate"


@pytest.mark.parametrize(
    "prompt", ["\u200b", "\u200b\u200d\u00ad\ufeff", " \u2800 \u3164 ", "\x00\x01", "\u0301\u0301"]
)
def test_a_prompt_of_only_invisible_characters_has_nothing_visible(prompt: str) -> None:
    assert not textguard.has_visible(textguard.clean(prompt))


@pytest.mark.parametrize("prompt", ["a", "🦊", "٣", "?", "مرحبا"])
def test_visible_prompts_are_visible(prompt: str) -> None:
    assert textguard.has_visible(textguard.clean(prompt))


def test_a_nul_never_reaches_the_embed_title_even_from_an_old_stored_prompt() -> None:
    title = render.embed_title("a\x00 quiet\u200b harbour\u202e")
    assert title == "a quiet harbour"
    assert render.embed_title("\x00\u200b") == "…"


def test_a_repeated_inline_flag_is_noted_with_the_value_used() -> None:
    parsed = parse_inline("a fox --seed 1 --seed 2 --ar 1:1 --aspect 16:9 --steps 4")
    assert (parsed.seed, parsed.aspect, parsed.steps) == (2, "16:9", 4)
    notes = [str(n) for n in parsed.notes]
    assert any("--seed" in n and "more than once" in n and "2" in n for n in notes)
    assert any("--ar" in n and "more than once" in n and "16:9" in n for n in notes)
    assert not any("--steps" in n for n in notes)
    # Several --no are meant to add up, and one unsupported flag is noted once.
    parsed = parse_inline("a fox --no fog --no rain --v 5 --v 6")
    assert parsed.negative == "fog, rain"
    assert [str(n) for n in parsed.notes] == ["`--v` is not supported here and was ignored."]
