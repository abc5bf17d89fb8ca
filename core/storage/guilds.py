"""Guilds, their settings and banned words; users."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ._base import UNSET, Context, Row, _Unset, ensure_guild, ensure_user
from .clock import from_db, to_db
from .errors import InvalidInput
from .records import BannedWord, Guild, GuildSettings, User

MAX_BANNED_WORD_LENGTH = 100
MAX_BANNED_WORDS = 1000
MAX_RETENTION_DAYS = 36500  # the schema's CHECK: a hundred years is "keep"


def normalise_word(word: str) -> str:
    """How banned words are stored and compared: whitespace collapsed, case-folded."""
    if not isinstance(word, str):
        raise InvalidInput("A banned word must be text.")
    normal = " ".join(word.split()).casefold()
    if not normal:
        raise InvalidInput("A banned word cannot be empty.")
    if len(normal) > MAX_BANNED_WORD_LENGTH:
        raise InvalidInput(f"A banned word can be at most {MAX_BANNED_WORD_LENGTH} characters.")
    return normal


def _guild_from_row(row: Row) -> Guild:
    return Guild(
        id=row["id"],
        settings=GuildSettings(
            extra=json.loads(row["extra"]),
            gallery_channel_id=row["gallery_channel_id"],
            retention_days=row["retention_days"],
            default_model=row["default_model"],
            disabled_models=tuple(json.loads(row["disabled_models"])),
        ),
        created_at=from_db(row["created_at"]),
        updated_at=from_db(row["updated_at"]),
    )


class GuildRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def get(self, guild_id: int) -> Guild | None:
        async with self._ctx.read() as tx:
            row = await tx.one("SELECT * FROM guilds WHERE id = ?", (guild_id,))
        return None if row is None else _guild_from_row(row)

    async def ensure(self, guild_id: int) -> Guild:
        """The guild's record, created with default settings if it is new."""
        async with self._ctx.write() as tx:
            await ensure_guild(tx, guild_id, to_db(self._ctx.now()))
            row = await tx.one("SELECT * FROM guilds WHERE id = ?", (guild_id,))
        assert row is not None
        return _guild_from_row(row)

    async def settings(self, guild_id: int | None) -> GuildSettings:
        """The guild's settings; defaults for a guild never seen and for DMs (``None``)."""
        if guild_id is None:
            return GuildSettings()
        guild = await self.get(guild_id)
        return GuildSettings() if guild is None else guild.settings

    async def update_settings(
        self,
        guild_id: int,
        *,
        extra: Mapping[str, Any] | _Unset = UNSET,
        gallery_channel_id: int | _Unset | None = UNSET,
        retention_days: int | _Unset | None = UNSET,
        default_model: str | _Unset | None = UNSET,
        disabled_models: Iterable[str] | _Unset = UNSET,
    ) -> GuildSettings:
        """Change the named settings (others stay); returns the settings now in force."""
        changes: dict[str, Any] = {}
        if extra is not UNSET:
            changes["extra"] = json.dumps(dict(extra), ensure_ascii=False, sort_keys=True)
        if gallery_channel_id is not UNSET:
            changes["gallery_channel_id"] = gallery_channel_id
        if retention_days is not UNSET:
            if retention_days is not None and not 1 <= retention_days <= MAX_RETENTION_DAYS:
                raise InvalidInput(f"Images can be kept for 1 to {MAX_RETENTION_DAYS} days.")
            changes["retention_days"] = retention_days
        if default_model is not UNSET:
            changes["default_model"] = default_model
        if disabled_models is not UNSET:
            changes["disabled_models"] = json.dumps(sorted(set(disabled_models)))
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            await ensure_guild(tx, guild_id, now)
            if changes:
                assignments = ", ".join(f"{name} = ?" for name in changes)
                await tx.run(
                    f"UPDATE guilds SET {assignments}, updated_at = ? WHERE id = ?",
                    (*changes.values(), now, guild_id),
                )
            row = await tx.one("SELECT * FROM guilds WHERE id = ?", (guild_id,))
        assert row is not None
        return _guild_from_row(row).settings

    # -- styles

    async def styles(self, guild_id: int | None) -> list[tuple[str, str, str]]:
        """The server's own styles: (name, template, negative), by name. DMs have none."""
        if guild_id is None:
            return []
        async with self._ctx.read() as tx:
            rows = await tx.all(
                "SELECT name, template, negative FROM styles WHERE guild_id = ? ORDER BY name",
                (guild_id,),
            )
        return [(row[0], row[1], row[2]) for row in rows]

    async def save_style(
        self,
        guild_id: int,
        name: str,
        template: str,
        negative: str,
        *,
        added_by: int | None,
        limit: int,
    ) -> bool:
        """Add a style, or replace the one of that name; returns whether it is new."""
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            await ensure_guild(tx, guild_id, now)
            existed = await tx.scalar(
                "SELECT 1 FROM styles WHERE guild_id = ? AND name = ?", (guild_id, name)
            )
            if not existed and (
                await tx.scalar("SELECT count(*) FROM styles WHERE guild_id = ?", (guild_id,))
                >= limit
            ):
                raise InvalidInput(f"A server can have at most {limit} styles.")
            await tx.run(
                "INSERT INTO styles (guild_id, name, template, negative, added_by, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, name) DO UPDATE SET"
                " template = excluded.template, negative = excluded.negative,"
                " added_by = excluded.added_by",
                (guild_id, name, template, negative, added_by, now),
            )
        return not existed

    async def remove_style(self, guild_id: int, name: str) -> bool:
        async with self._ctx.write() as tx:
            return bool(
                await tx.run("DELETE FROM styles WHERE guild_id = ? AND name = ?", (guild_id, name))
            )

    # -- wildcards

    async def wildcards(self, guild_id: int | None) -> dict[str, tuple[str, ...]]:
        """The server's wildcards: name -> values, by name. DMs have none."""
        if guild_id is None:
            return {}
        async with self._ctx.read() as tx:
            rows = await tx.all(
                "SELECT name, vals FROM wildcards WHERE guild_id = ? ORDER BY name", (guild_id,)
            )
        return {row[0]: tuple(json.loads(row[1])) for row in rows}

    async def save_wildcard(
        self,
        guild_id: int,
        name: str,
        values: tuple[str, ...],
        *,
        added_by: int | None,
        limit: int,
    ) -> bool:
        """Add a wildcard, or replace the values of the one of that name; returns whether
        it is new."""
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            await ensure_guild(tx, guild_id, now)
            existed = await tx.scalar(
                "SELECT 1 FROM wildcards WHERE guild_id = ? AND name = ?", (guild_id, name)
            )
            if not existed and (
                await tx.scalar("SELECT count(*) FROM wildcards WHERE guild_id = ?", (guild_id,))
                >= limit
            ):
                raise InvalidInput(f"A server can have at most {limit} wildcards.")
            await tx.run(
                "INSERT INTO wildcards (guild_id, name, vals, added_by, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id, name) DO UPDATE SET"
                " vals = excluded.vals, added_by = excluded.added_by",
                (guild_id, name, json.dumps(list(values), ensure_ascii=False), added_by, now),
            )
        return not existed

    async def remove_wildcard(self, guild_id: int, name: str) -> bool:
        async with self._ctx.write() as tx:
            return bool(
                await tx.run(
                    "DELETE FROM wildcards WHERE guild_id = ? AND name = ?", (guild_id, name)
                )
            )

    # -- banned words

    async def banned_words(self, guild_id: int | None) -> list[str]:
        """The guild's banned words (normalised, sorted). DMs have none."""
        if guild_id is None:
            return []
        async with self._ctx.read() as tx:
            rows = await tx.all(
                "SELECT word FROM banned_words WHERE guild_id = ? ORDER BY word", (guild_id,)
            )
        return [row[0] for row in rows]

    async def banned_word_records(self, guild_id: int) -> list[BannedWord]:
        async with self._ctx.read() as tx:
            rows = await tx.all(
                "SELECT word, added_by, created_at FROM banned_words WHERE guild_id = ? "
                "ORDER BY word",
                (guild_id,),
            )
        return [BannedWord(row[0], row[1], from_db(row[2])) for row in rows]

    async def add_banned_words(
        self, guild_id: int, words: Iterable[str], *, added_by: int | None = None
    ) -> list[str]:
        """Add words; returns the ones that were new (normalised)."""
        normal = list(dict.fromkeys(normalise_word(word) for word in words))
        now = to_db(self._ctx.now())
        added = []
        async with self._ctx.write() as tx:
            await ensure_guild(tx, guild_id, now)
            for word in normal:
                changed = await tx.run(
                    "INSERT INTO banned_words (guild_id, word, added_by, created_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (guild_id, word, added_by, now),
                )
                if changed:
                    added.append(word)
            total = await tx.scalar(
                "SELECT count(*) FROM banned_words WHERE guild_id = ?", (guild_id,)
            )
            if total > MAX_BANNED_WORDS:
                raise InvalidInput(f"A server can ban at most {MAX_BANNED_WORDS} words.")
        return added

    async def remove_banned_words(self, guild_id: int, words: Iterable[str]) -> list[str]:
        """Remove words; returns the ones that were there (normalised)."""
        normal = list(dict.fromkeys(normalise_word(word) for word in words))
        removed = []
        async with self._ctx.write() as tx:
            for word in normal:
                if await tx.run(
                    "DELETE FROM banned_words WHERE guild_id = ? AND word = ?", (guild_id, word)
                ):
                    removed.append(word)
        return removed

    async def clear_banned_words(self, guild_id: int) -> int:
        async with self._ctx.write() as tx:
            return await tx.run("DELETE FROM banned_words WHERE guild_id = ?", (guild_id,))


class UserRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def get(self, user_id: int) -> User | None:
        async with self._ctx.read() as tx:
            row = await tx.one("SELECT id, created_at FROM users WHERE id = ?", (user_id,))
        return None if row is None else User(row[0], from_db(row[1]))

    async def ensure(self, user_id: int) -> User:
        async with self._ctx.write() as tx:
            await ensure_user(tx, user_id, to_db(self._ctx.now()))
            row = await tx.one("SELECT id, created_at FROM users WHERE id = ?", (user_id,))
        assert row is not None
        return User(row[0], from_db(row[1]))

    async def remix(self, user_id: int) -> bool:
        """Whether the user has remix mode on (off for someone never seen)."""
        async with self._ctx.read() as tx:
            return bool(await tx.scalar("SELECT remix FROM users WHERE id = ?", (user_id,)))

    async def set_remix(self, user_id: int, on: bool) -> None:
        async with self._ctx.write() as tx:
            await ensure_user(tx, user_id, to_db(self._ctx.now()))
            await tx.run("UPDATE users SET remix = ? WHERE id = ?", (int(on), user_id))
