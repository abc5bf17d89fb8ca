"""Korean and English. English is the source language: every text the bot shows is written
in English in the code and is its own message id; a translator edits the gettext catalog
``bot/locales/<language>/LC_MESSAGES/diffusion_chat.po`` (Poedit, Weblate, or any text editor),
and the bot reads it at start (Babel's PO reader: no compile step).

Slash commands (names, descriptions, options, choices) are localised through discord.py's
translator, so a Korean client shows them in Korean; messages follow the reader's locale
(``interaction.locale``, else the server's), through ``translate``.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol

import discord
from babel.dates import format_date
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent
from discord import app_commands

from core.errors import Note

LOCALES_DIR: Final = Path(__file__).resolve().parent / "locales"
DOMAIN: Final = "diffusion_chat"
# Discord's locales with a catalog, and the catalog's language.
LANGUAGES: Final[Mapping[discord.Locale, str]] = {discord.Locale.korean: "ko"}


@functools.cache
def catalog(language: str) -> Mapping[str, str]:
    """The translations of ``language``: English text -> translated text (fuzzy and empty
    entries left out, so an unfinished translation shows English, never a blank)."""
    path = LOCALES_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as file:
        parsed = read_po(file, locale=language, domain=DOMAIN)
    return {
        str(message.id): str(message.string)
        for message in parsed
        if message.id and message.string and not message.fuzzy
    }


def language_of(locale: discord.Locale | None) -> str | None:
    return None if locale is None else LANGUAGES.get(locale)


def locale_named(value: str | None) -> discord.Locale | None:
    """The Discord locale a job stored (``Locale.value``), None when unknown or unset."""
    try:
        return None if value is None else discord.Locale(value)
    except ValueError:
        return None


def reader_locale(interaction: discord.Interaction[Any]) -> discord.Locale | None:
    """The locale to answer in: the reader's client, else the server's, when either has a
    catalog (None: English)."""
    for locale in (interaction.locale, interaction.guild_locale):
        if language_of(locale) is not None:
            return locale
    return None


def message_locale(message: discord.Message) -> discord.Locale | None:
    """``reader_locale`` for a plain message, which carries no reader locale: the server's,
    when it has a catalog."""
    guild = message.guild
    if guild is not None and language_of(guild.preferred_locale) is not None:
        return guild.preferred_locale
    return None


def translate(text: str, locale: discord.Locale | None, **values: object) -> str:
    """``text`` in ``locale``'s language (English when there is no translation), with its
    ``{name}`` placeholders filled from ``values``."""
    language = language_of(locale)
    chosen = catalog(language).get(text, text) if language else text
    return chosen.format(**values) if values else chosen


class Templated(Protocol):
    """A user error or a note: an English template (marked ``N_``) and its values."""

    @property
    def template(self) -> str: ...

    @property
    def values(self) -> Mapping[str, object]: ...


def translate_template(text: Templated, locale: discord.Locale | None) -> str:
    """A user's error or note in their language: its template's translation (English when
    there is none), filled with its values, themselves translated where they are notes."""
    values = {
        name: translate_template(value, locale) if isinstance(value, Note) else value
        for name, value in text.values.items()
    }
    language = language_of(locale)
    chosen = catalog(language).get(text.template, text.template) if language else text.template
    return chosen.format(**values) if values else chosen


class CommandTranslator(app_commands.Translator):
    """Slash command texts for Discord's localisations."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        language = language_of(locale)
        if language is None:
            return None
        return catalog(language).get(string.message)


def translate_marked(text: str, locale: discord.Locale | None, **values: object) -> str:
    """``translate`` for a text that is not written at the call (a label from a table): the
    table marks each English text with ``N_`` where it is written, so the catalog test sees it."""
    return translate(text, locale, **values)


def number(value: float, locale: discord.Locale | None) -> str:
    """A count written the reader's way (digit grouping of their language)."""
    return format_decimal(value, locale=language_of(locale) or "en")


def percent(fraction: float | None, locale: discord.Locale | None) -> str:
    """A share written the reader's way; "—" when there is nothing to divide."""
    if fraction is None:
        return "—"
    return format_percent(fraction, locale=language_of(locale) or "en")


def date(day: dt.date, locale: discord.Locale | None) -> str:
    """A calendar date written the reader's way (Dec 4, 2026; 2026. 12. 4.)."""
    return format_date(day, format="medium", locale=language_of(locale) or "en")
