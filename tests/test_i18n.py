"""Korean and English: every slash command text has its Korean translation, the names are
valid Discord names, and messages follow the reader's locale."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from bot.client import EXTENSIONS
from bot.i18n import CommandTranslator, catalog, reader_locale, translate, translate_template
from core.errors import UserError

# Discord's rule for command and option names (lowercase where the script has case).
NAME = re.compile(r"^[-_\w]{1,32}$")
KOREAN = discord.Locale.korean
ROOT = Path(__file__).resolve().parents[1]


class Recorder(app_commands.Translator):
    """Every text discord.py would send for translation, with where it is used."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        self.seen.setdefault(string.message, context.location.name)
        return None


async def command_payloads(translator: app_commands.Translator) -> list[dict[str, Any]]:
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.none())
    for extension in EXTENSIONS:
        await bot.load_extension(extension)
    return [
        await command.get_translated_payload(bot.tree, translator)
        for command in bot.tree.get_commands()
    ]


@pytest.mark.asyncio
async def test_every_command_text_has_a_korean_translation() -> None:
    recorder = Recorder()
    await command_payloads(recorder)
    korean = catalog("ko")
    missing = sorted(text for text in recorder.seen if text not in korean)
    assert not missing, f"add these to bot/locales/ko/LC_MESSAGES/diffusion_chat.po: {missing}"
    assert len(recorder.seen) > 150  # the walk reached every command, option and choice


def names_in(payload: dict[str, Any]) -> list[dict[str, Any]]:
    found = [payload]
    for option in payload.get("options", []):
        found += names_in(option)
    return found


@pytest.mark.asyncio
async def test_korean_names_are_valid_and_distinct_where_discord_requires_it() -> None:
    payloads = await command_payloads(CommandTranslator())
    for payload in payloads:
        for item in names_in(payload):
            korean_name = item.get("name_localizations", {}).get("ko")
            if korean_name is not None:
                assert NAME.match(korean_name) and korean_name == korean_name.lower(), item
            description = item.get("description_localizations", {}).get("ko")
            assert description is None or 1 <= len(description) <= 100, item
        # Siblings (commands of one type; a command's options) need distinct names in each
        # language. A context menu may share a slash command's name: Discord keeps them apart.
        same_type = [p for p in payloads if p.get("type", 1) == payload.get("type", 1)]
        for group in [same_type, *(p.get("options", []) for p in names_in(payload))]:
            names = [o.get("name_localizations", {}).get("ko", o["name"]) for o in group]
            assert len(names) == len(set(names)), names
    imagine = next(p for p in payloads if p["name"] == "imagine")
    assert imagine["name_localizations"] == {"ko": "그리기"}
    assert imagine["options"][0]["name_localizations"] == {"ko": "프롬프트"}


def test_messages_follow_the_reader_then_the_server() -> None:
    assert translate("imagine", KOREAN) == "그리기"
    assert translate("imagine", discord.Locale.american_english) == "imagine"
    assert translate("not in any catalog", KOREAN) == "not in any catalog"

    def interaction(locale: discord.Locale, guild: discord.Locale | None) -> Any:
        return SimpleNamespace(locale=locale, guild_locale=guild)

    assert reader_locale(interaction(KOREAN, None)) is KOREAN
    assert reader_locale(interaction(discord.Locale.french, KOREAN)) is KOREAN
    assert reader_locale(interaction(discord.Locale.french, discord.Locale.german)) is None


@pytest.mark.parametrize("language", ["ko"])
def test_translations_keep_their_placeholders(language: str) -> None:
    field = re.compile(r"\{[a-z_]*\}")
    for english, translated in catalog(language).items():
        assert sorted(field.findall(english)) == sorted(field.findall(translated)), english


def translated_texts() -> list[tuple[str, str]]:
    """Every text the bot passes to ``translate`` or marks with ``N_`` (an error shown
    translated), with where it is."""
    found = []
    for path in [*ROOT.glob("bot/*.py"), *ROOT.glob("cogs/*.py"), *ROOT.glob("core/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            in_core = path.is_relative_to(ROOT / "core")
            wanted = ("N_",) if in_core else ("translate", "N_")
            if name not in wanted or path.name == "i18n.py":
                continue
            first = node.args[0] if node.args else None
            # A literal, so that this test (and a translator's tools) can find every text.
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                f"{path.name}:{node.lineno}: {name}() needs the English text itself"
            )
            found.append((first.value, f"{path.name}:{node.lineno}"))
    return found


def test_every_message_has_a_korean_translation() -> None:
    texts = translated_texts()
    korean = catalog("ko")
    missing = sorted({f"{where}: {text!r}" for text, where in texts if text not in korean})
    assert not missing, "add these to bot/locales/ko/LC_MESSAGES/diffusion_chat.po:\n" + "\n".join(
        missing
    )
    assert len(texts) > 20


def test_errors_are_shown_from_their_template_in_the_readers_language() -> None:
    plain = UserError("Please describe what to draw.")
    assert translate_template(plain, KOREAN) == "무엇을 그릴지 적어 주세요."
    assert translate_template(plain, None) == "Please describe what to draw."
    filled = UserError(
        "Something went wrong on our side. If it keeps happening, quote `{ref}`.", ref="ab12"
    )
    assert str(filled).endswith("quote `ab12`.") and filled.values == {"ref": "ab12"}
    assert (
        translate_template(filled, KOREAN)
        == "저희 쪽에서 문제가 생겼습니다. 계속되면 `ab12`를 알려 주세요."
    )
    # Not in the catalog (a core message not yet marked): English, never a blank.
    assert translate_template(UserError("Seed {n} is odd.", n=3), KOREAN) == "Seed 3 is odd."
    assert str(UserError("a {brace} left alone")) == "a {brace} left alone"


SENDS = {"send_message", "send", "edit_message", "edit_original_response", "edit"}
SHOWN_KEYWORDS = {"content", "label", "placeholder", "title", "description", "text"}
ERRORS = {"UserError", "PermissionDenied", "InvalidField", "QuotaRefused", "ValidationError"}
ENGLISH = re.compile(r"[A-Za-z]{3,}")


def untranslated(node: ast.expr | None) -> bool:
    """An English text written into the call itself, not through ``translate`` or ``N_``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(ENGLISH.search(node.value))
    if isinstance(node, ast.JoinedStr):
        return any(untranslated(part) for part in node.values)
    if isinstance(node, ast.BinOp):
        return untranslated(node.left) or untranslated(node.right)
    if isinstance(node, ast.IfExp):
        return untranslated(node.body) or untranslated(node.orelse)
    return False


def english_left_in(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            texts: list[ast.expr | None] = []
            if name in SENDS:
                texts += node.args[:1]
                texts += [k.value for k in node.keywords if k.arg in SHOWN_KEYWORDS]
            elif name in ERRORS:
                # InvalidField's first argument is the field's name; the message follows.
                texts += node.args[1:2] if name == "InvalidField" else node.args[:1]
            elif name in {"Button", "TextInput", "Select", "SelectOption", "Embed", "Modal"}:
                texts += [k.value for k in node.keywords if k.arg in SHOWN_KEYWORDS]
            found += [
                f"{path.parent.name}/{path.name}:{node.lineno}: {name}()"
                for text in texts
                if untranslated(text)
            ]
    return found


def test_no_english_text_reaches_a_user_untranslated() -> None:
    paths = [
        *ROOT.glob("bot/*.py"),
        *ROOT.glob("cogs/*.py"),
        *ROOT.glob("core/**/*.py"),
        *ROOT.glob("engine/**/*.py"),
    ]
    operator_only = {"cli.py", "doctor.py", "i18n.py"}  # the operator's terminal: English
    left = english_left_in([path for path in paths if path.name not in operator_only])
    assert not left, "wrap these texts in translate() or N_():\n" + "\n".join(left)


def test_the_untranslated_text_check_bites(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "async def f(i, n):\n"
        "    await i.response.send_message(f'You have {n} images left.')\n"
        "    await i.followup.send(translate('You have {n} images left.', None, n=n))\n"
        "    raise UserError('Nope, not that.')\n"
        "    raise UserError(N_('Nope, not that.'))\n"
        "    Button(label='Upscale')\n"
        "    Button(label=f'U{n}')\n",
        encoding="utf-8",
    )
    left = english_left_in([sample])
    assert sorted(line.split(": ")[-1] for line in left) == [
        "Button()",
        "UserError()",
        "send_message()",
    ]
