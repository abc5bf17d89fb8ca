"""The library: pages of history, favourites and a server's gallery with search, filters and
sort; the saved views page buttons point at; sharing and moderators' gallery removals."""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from typing import Any

from ._base import (
    IMAGE_COLUMNS,
    JOB_COLUMNS,
    Context,
    image_from_row,
    job_from_row,
    placeholders,
)
from .clock import from_db, to_db
from .dialect import SQLITE, Dialect
from .errors import InvalidInput
from .records import (
    Image,
    LibraryEntry,
    LibraryQuery,
    LibraryScope,
    LibrarySort,
    LibraryView,
    Page,
)

VIEW_LIFETIME = dt.timedelta(days=30)  # then a page button says to ask again

# The jobs holding an image the viewer starred, and when they last starred one of them.
_VIEWER_STARS = (
    "(SELECT images.job_id AS job_id, max(favourites.created_at) AS starred_at"
    " FROM favourites JOIN images ON images.id = favourites.image_id"
    " WHERE favourites.user_id = ? GROUP BY images.job_id)"
)


def match_words(text: str) -> str:
    """An FTS5 query for prompts holding every word of ``text`` (the last as a prefix, as
    someone types); quoted, so nothing in ``text`` is read as query syntax."""
    return SQLITE.search_query(re.findall(r"\w+", text))


def query_conditions(query: LibraryQuery, dialect: Dialect = SQLITE) -> tuple[list[str], list[Any]]:
    """SQL conditions on ``jobs`` for the query's filters (not its scope or sort)."""
    where: list[str] = []
    params: list[Any] = []
    if query.text is not None:
        where.append(dialect.search_prompts())
        params.append(dialect.search_query(re.findall(r"\w+", query.text)))
    if query.model:
        where.append("jobs.model = ?")
        params.append(query.model)
    if query.operation:
        where.append("jobs.kind = ?")
        params.append(query.operation)
    if query.status is not None:
        where.append("jobs.status = ?")
        params.append(query.status.value)
    if query.since is not None:
        where.append("jobs.created_at >= ?")
        params.append(to_db(query.since))
    if query.until is not None:
        where.append("jobs.created_at < ?")
        params.append(to_db(query.until))
    return where, params


def _order(scope: LibraryScope, sort: LibrarySort) -> str:
    if sort is LibrarySort.MOST_FAVOURITED:
        return "jobs.favourite_count DESC, jobs.created_at DESC, jobs.id DESC"
    direction = "ASC" if sort is LibrarySort.OLDEST else "DESC"
    if scope is LibraryScope.FAVOURITES:
        return f"mine.starred_at {direction}, jobs.id {direction}"
    return f"jobs.created_at {direction}, jobs.id {direction}"


class LibraryRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def page(
        self,
        scope: LibraryScope,
        viewer_id: int,
        query: LibraryQuery | None = None,
        *,
        guild_id: int | None = None,
        offset: int = 0,
        limit: int = 10,
    ) -> Page[LibraryEntry]:
        """A page of ``scope`` as ``viewer_id`` may see it.

        History: the viewer's own jobs everywhere. Favourites: jobs holding an image the
        viewer starred, with only those images. Gallery: the finished public results of
        ``guild_id`` (never a DM's, a private one, or one a moderator removed).
        """
        if offset < 0 or not 1 <= limit <= 100:
            raise ValueError("offset must be >= 0 and limit in 1..100")
        query = query or LibraryQuery()
        where, params = query_conditions(query, self._ctx.dialect)
        where.append("jobs.hidden_at IS NULL")
        source, source_params = "jobs", []
        if scope is LibraryScope.HISTORY:
            where.insert(0, "jobs.user_id = ?")
            params.insert(0, viewer_id)
        elif scope is LibraryScope.FAVOURITES:
            # Driven from the viewer's stars (few), not a test on every job (many).
            source = f"{_VIEWER_STARS} AS mine JOIN jobs ON jobs.id = mine.job_id"
            source_params = [viewer_id]
        else:
            if guild_id is None:
                raise InvalidInput("A gallery belongs to a server.")
            # The conditions of the jobs_gallery indexes, word for word, so they are used.
            where[:0] = [
                "jobs.guild_id = ?",
                "jobs.private = 0",
                "jobs.status = 'done'",
                "jobs.gallery_removed_at IS NULL",
            ]
            params.insert(0, guild_id)
        if query.favourites_only and scope is not LibraryScope.FAVOURITES:
            where.append(
                "jobs.id IN (SELECT images.job_id FROM favourites JOIN images"
                " ON images.id = favourites.image_id WHERE favourites.user_id = ?)"
            )
            params.append(viewer_id)
        condition = " AND ".join(where) or "1"
        order = _order(scope, query.sort)
        all_params = (*source_params, *params)
        async with self._ctx.read(snapshot=True) as tx:
            total = await tx.scalar(f"SELECT count(*) FROM {source} WHERE {condition}", all_params)
            rows = await tx.all(
                f"SELECT {JOB_COLUMNS} FROM {source} WHERE {condition} "
                f"ORDER BY {order} LIMIT ? OFFSET ?",
                (*all_params, limit, offset),
            )
            jobs = [job_from_row(row) for row in rows]
            images: dict[str, list[Image]] = {job.id: [] for job in jobs}
            if jobs:
                only_starred = (
                    " AND images.id IN (SELECT image_id FROM favourites WHERE user_id = ?)"
                    if scope is LibraryScope.FAVOURITES
                    else ""
                )
                ids = [job.id for job in jobs]
                for row in await tx.all(
                    f"SELECT {IMAGE_COLUMNS} FROM images "
                    f"WHERE images.job_id IN ({placeholders(len(ids))}){only_starred} "
                    "ORDER BY images.job_id, images.idx",
                    (*ids, viewer_id) if only_starred else ids,
                ):
                    images[row["job_id"]].append(image_from_row(row))
        entries = tuple(
            LibraryEntry(job, tuple(images[job.id]), job.favourite_count) for job in jobs
        )
        return Page(entries, int(total), offset, limit)

    async def trending(
        self, guild_id: int, since: dt.datetime, *, limit: int = 5
    ) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]]:
        """The server's public prompts since ``since``: the most used, and the most
        favourited, each as (prompt, count, the newest finished job with it)."""
        base = """FROM jobs WHERE guild_id = ? AND private = 0 AND status = 'done'
                  AND hidden_at IS NULL AND gallery_removed_at IS NULL AND created_at >= ?
                  AND kind = 'txt2img'"""
        params = (guild_id, to_db(since))
        # The example job is looked up for the listed prompts only: as a column of the
        # grouped query it would be computed for every prompt of the week before the LIMIT.
        example = """SELECT id FROM jobs WHERE prompt = ? AND guild_id = ? AND private = 0
                     AND status = 'done' ORDER BY {order} LIMIT 1"""
        async with self._ctx.read(snapshot=True) as tx:
            lists = []
            for total, having, order in (
                ("count(*)", "", "created_at DESC"),
                ("sum(favourite_count)", "HAVING n > 0", "favourite_count DESC, created_at DESC"),
            ):
                rows = await tx.all(
                    f"""SELECT prompt, {total} AS n, max(created_at) AS last
                        {base} GROUP BY prompt {having} ORDER BY n DESC, last DESC LIMIT ?""",
                    (*params, limit),
                )
                lists.append(
                    [
                        (
                            row[0],
                            int(row[1]),
                            await tx.scalar(example.format(order=order), (row[0], guild_id)),
                        )
                        for row in rows
                    ]
                )
        return lists[0], lists[1]

    # -- saved views

    async def save_view(
        self, scope: LibraryScope, user_id: int, guild_id: int | None, query: LibraryQuery
    ) -> LibraryView:
        view = LibraryView(
            id=secrets.token_urlsafe(9),
            user_id=user_id,
            guild_id=guild_id,
            scope=scope,
            query=query,
            created_at=self._ctx.now(),
        )
        async with self._ctx.write() as tx:
            await tx.run(
                "INSERT INTO library_views (id, user_id, guild_id, scope, query, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    view.id,
                    user_id,
                    guild_id,
                    scope.value,
                    json.dumps(query.to_json(), ensure_ascii=False),
                    to_db(view.created_at),
                ),
            )
        return view

    async def view(self, view_id: str) -> LibraryView | None:
        """A saved view, or ``None`` once it has expired (or never existed)."""
        async with self._ctx.read() as tx:
            row = await tx.one(
                "SELECT id, user_id, guild_id, scope, query, created_at FROM library_views "
                "WHERE id = ? AND created_at >= ?",
                (view_id, to_db(self._ctx.now() - VIEW_LIFETIME)),
            )
        if row is None:
            return None
        return LibraryView(
            id=row["id"],
            user_id=row["user_id"],
            guild_id=row["guild_id"],
            scope=LibraryScope(row["scope"]),
            query=LibraryQuery.from_json(json.loads(row["query"])),
            created_at=from_db(row["created_at"]),
        )

    # -- sharing and the gallery

    async def claim_share(self, job_id: str) -> bool:
        """Mark the job as being shared; ``False`` if it was shared (or is being) already."""
        async with self._ctx.write() as tx:
            return bool(
                await tx.run(
                    "UPDATE jobs SET shared_at = ? WHERE id = ? AND shared_at IS NULL",
                    (to_db(self._ctx.now()), job_id),
                )
            )

    async def record_share(
        self, job_id: str, channel_id: int | None, message_id: int | None
    ) -> None:
        """The share went out: the result is public from now on, and we know where it is."""
        async with self._ctx.write() as tx:
            await tx.run(
                "UPDATE jobs SET private = 0, share_channel_id = ?, share_message_id = ?"
                " WHERE id = ?",
                (channel_id, message_id, job_id),
            )

    async def release_share(self, job_id: str) -> None:
        """Posting the share failed: the job can be shared again."""
        async with self._ctx.write() as tx:
            await tx.run(
                "UPDATE jobs SET shared_at = NULL WHERE id = ? AND share_message_id IS NULL"
                " AND share_channel_id IS NULL",
                (job_id,),
            )

    async def unshare(self, job_id: str) -> None:
        """Its owner revoked the public link: the share page is gone (a post already in a
        server's gallery channel stays; moderators remove those)."""
        async with self._ctx.write() as tx:
            await tx.run("UPDATE jobs SET shared_at = NULL WHERE id = ?", (job_id,))

    async def hide(self, job_id: str) -> None:
        """Its owner deleted the result: it leaves their lists and the gallery (its record
        and images stay until /forget or retention)."""
        async with self._ctx.write() as tx:
            await tx.run(
                "UPDATE jobs SET hidden_at = ? WHERE id = ? AND hidden_at IS NULL",
                (to_db(self._ctx.now()), job_id),
            )

    async def remove_from_gallery(self, job_id: str, moderator_id: int) -> bool:
        """A moderator takes a result out of the server's gallery (and its share page);
        ``False`` if it was out already."""
        async with self._ctx.write() as tx:
            return bool(
                await tx.run(
                    "UPDATE jobs SET gallery_removed_at = ?, gallery_removed_by = ?"
                    " WHERE id = ? AND gallery_removed_at IS NULL",
                    (to_db(self._ctx.now()), moderator_id, job_id),
                )
            )
