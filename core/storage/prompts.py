"""Prompt history: what users asked for, for autocomplete and "most used in this server".

Matching is case-insensitive (Unicode case folding) by substring, with prefix matches
ranked first. Prompts of private jobs are remembered for their author but never suggested to
anyone else. Lookups read a bounded window of recent rows so autocomplete stays fast.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ._base import UNSET, Context, _Unset, ensure_user, guild_key
from .clock import from_db, to_db
from .errors import InvalidInput
from .records import PromptUse

USER_WINDOW = 2000  # a user's most recent prompts searched by ``recent``
GUILD_WINDOW = 5000  # a guild's most recent prompts counted by ``popular``
MAX_QUERY = 500


def fold(text: str | None) -> str | None:
    """SQL function ``dc_fold``: the comparison form of a text."""
    return None if text is None else text.casefold()


def _query(text: str) -> str:
    # A search text is never stored: make it safe rather than refuse it.
    text = text[:MAX_QUERY].encode("utf-8", "replace").decode("utf-8")
    return text.casefold() if text.strip() else ""


class PromptHistoryRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def record(
        self, user_id: int, guild_id: int | None, prompt: str, *, private: bool = False
    ) -> None:
        """Remember a prompt. Prefer ``jobs.create(..., remember_prompt=True)``: it records the
        prompt in the job's own transaction and keeps private jobs' prompts private."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInput("An empty prompt is not remembered.")
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            await ensure_user(tx, user_id, now)
            await tx.run(
                "INSERT INTO prompt_history (user_id, guild_key, prompt, private, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (user_id, guild_key(guild_id), prompt, int(private), now),
            )

    async def recent(
        self,
        user_id: int,
        query: str = "",
        *,
        limit: int = 25,
        guild_id: int | _Unset | None = UNSET,
    ) -> list[str]:
        """The user's own distinct prompts matching ``query``, prefix matches first, then most
        recently used first. ``guild_id``: omit for everywhere, ``None`` for DMs only."""
        needle = _query(query)
        params: dict[str, Any] = {"user": user_id, "needle": needle, "limit": limit}
        guild_filter = ""
        if guild_id is not UNSET:
            guild_filter = "AND guild_key = :guild"
            params["guild"] = guild_key(guild_id)
        async with self._ctx.read() as tx:
            rows = await tx.all(
                f"""SELECT prompt, max(created_at) AS last_used FROM (
                        SELECT prompt, created_at FROM prompt_history
                        WHERE user_id = :user {guild_filter}
                        ORDER BY created_at DESC LIMIT {USER_WINDOW}
                    ) AS recent
                    WHERE :needle = '' OR instr(dc_fold(prompt), :needle) > 0
                    GROUP BY prompt
                    ORDER BY (:needle <> '' AND instr(dc_fold(prompt), :needle) = 1) DESC,
                             last_used DESC
                    LIMIT :limit""",
                params,
            )
        return [row[0] for row in rows]

    async def popular(
        self,
        guild_id: int | None,
        query: str = "",
        *,
        limit: int = 25,
        since: dt.datetime | None = None,
    ) -> list[PromptUse]:
        """The guild's most used prompts (private ones excluded), matching ``query``.
        Direct messages (``None``) have none: they are nobody else's business."""
        if guild_id is None:
            return []
        needle = _query(query)
        params: dict[str, Any] = {
            "guild": guild_key(guild_id),
            "needle": needle,
            "limit": limit,
            "since": "" if since is None else to_db(since),
        }
        async with self._ctx.read() as tx:
            rows = await tx.all(
                f"""SELECT prompt, count(*) AS uses, max(created_at) AS last_used FROM (
                        SELECT prompt, created_at FROM prompt_history
                        WHERE guild_key = :guild AND private = 0 AND created_at >= :since
                        ORDER BY created_at DESC LIMIT {GUILD_WINDOW}
                    ) AS recent
                    WHERE :needle = '' OR instr(dc_fold(prompt), :needle) > 0
                    GROUP BY prompt
                    ORDER BY uses DESC, last_used DESC
                    LIMIT :limit""",
                params,
            )
        return [PromptUse(row[0], row[1], from_db(row[2])) for row in rows]

    async def shared(self, query: str = "", *, limit: int = 10) -> list[str]:
        """Prompts of results their owners shared (public by their choice), most shared
        first: the popular prompts offered to people outside any server."""
        needle = _query(query)
        async with self._ctx.read() as tx:
            rows = await tx.all(
                """SELECT prompt, count(*) AS uses, max(created_at) AS last FROM jobs
                   WHERE shared_at IS NOT NULL AND private = 0 AND hidden_at IS NULL
                     AND gallery_removed_at IS NULL AND kind = 'txt2img'
                     AND (:needle = '' OR instr(dc_fold(prompt), :needle) > 0)
                   GROUP BY prompt ORDER BY uses DESC, last DESC LIMIT :limit""",
                {"needle": needle, "limit": limit},
            )
        return [row[0] for row in rows]

    async def suggestions(
        self, user_id: int, guild_id: int | None, query: str = "", *, limit: int = 25
    ) -> list[str]:
        """Autocomplete for ``prompt``: the user's recent prompts, then the guild's most used."""
        mine = await self.recent(user_id, query, limit=limit)
        if len(mine) >= limit:
            return mine
        seen = set(mine)
        theirs = [
            use.prompt
            for use in await self.popular(guild_id, query, limit=limit)
            if use.prompt not in seen
        ]
        return (mine + theirs)[:limit]
