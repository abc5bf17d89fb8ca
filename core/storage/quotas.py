"""Quota policies and the usage ledger.

**Policy resolution** (``effective_policy``), first match wins, for the whole policy (limits
and queue priority):

1. the user's own override in this guild;
2. the overrides of the user's roles: if several match, the most generous of each limit
   (unlimited beats any number) and the highest priority, so giving someone a role never
   lowers their limits below another role they hold;
3. the guild's default;
4. the built-in default passed to ``Database.open`` (``DEFAULT_POLICY`` unless configured).

A role override replaces the guild default, so it can also be stricter ("new members: 5 a
day"). Direct messages (``guild_id=None``) have their own guild default and user overrides,
and no roles.

**Usage** is an append-only ledger per (guild, user, UTC day): a ``spend`` per job (written in
the job's creating transaction), at most one ``refund`` per job (when it fails or is
cancelled; the refund counts on the day of the spend), and ``reset`` entries (``/quota
reset``) that forgive every spend before them that day. Images used today =
spends after today's last reset, minus their refunds. The concurrent limit counts the
user's queued and running jobs in every guild: they share one queue and one GPU.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable

from ._base import UNSET, Context, Row, Tx, _Unset, guild_from_key, guild_key
from .clock import from_db, next_utc_midnight, to_db, utc_day
from .errors import InvalidInput
from .records import PolicySource, Priority, QuotaOverride, QuotaPolicy, QuotaScope, Usage

USED_TODAY_SQL = """
SELECT coalesce(sum(spend.images), 0) - coalesce(sum(refund.images), 0)
FROM usage_ledger AS spend
LEFT JOIN usage_ledger AS refund
       ON refund.entry = 'refund' AND refund.job_id = spend.job_id
WHERE spend.guild_key = :guild AND spend.user_id = :user AND spend.day = :day
  AND spend.entry = 'spend'
  AND spend.id > (
      SELECT coalesce(max(id), 0) FROM usage_ledger
      WHERE guild_key = :guild AND user_id = :user AND day = :day AND entry = 'reset'
  )
"""

ACTIVE_JOBS_SQL = "SELECT count(*) FROM jobs WHERE user_id = ? AND status IN ('queued', 'running')"


async def used_today(tx: Tx, guild_id: int | None, user_id: int, day: str) -> int:
    value = await tx.scalar(
        USED_TODAY_SQL, {"guild": guild_key(guild_id), "user": user_id, "day": day}
    )
    return max(0, int(value or 0))


async def active_jobs(tx: Tx, user_id: int) -> int:
    return int(await tx.scalar(ACTIVE_JOBS_SQL, (user_id,)))


async def refund_job(tx: Tx, job_id: str, now: str, images: int | None = None) -> bool:
    """Give a job's images back (``images`` of them; None: all it spent), once. Returns
    whether a refund was written now."""
    changed = await tx.run(
        """INSERT INTO usage_ledger (guild_key, user_id, day, entry, images, job_id, created_at)
           SELECT guild_key, user_id, day, 'refund', coalesce(?, images), job_id, ?
           FROM usage_ledger WHERE job_id = ? AND entry = 'spend'
           ON CONFLICT DO NOTHING""",
        (images, now, job_id),
    )
    return changed > 0


def _more_generous(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return None
    return max(a, b)


def _policy_from_row(row: Row, source: PolicySource = PolicySource.DEFAULT) -> QuotaPolicy:
    return QuotaPolicy(
        row["daily_images"], row["concurrent_jobs"], source, Priority(row["priority"])
    )


def _override_from_row(row: Row) -> QuotaOverride:
    return QuotaOverride(
        guild_id=guild_from_key(row["guild_key"]),
        scope=QuotaScope(row["scope"]),
        target_id=row["target_id"],
        daily_images=row["daily_images"],
        concurrent_jobs=row["concurrent_jobs"],
        updated_at=from_db(row["updated_at"]),
        updated_by=row["updated_by"],
        priority=Priority(row["priority"]),
    )


class QuotaRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    @property
    def default_policy(self) -> QuotaPolicy:
        return self._ctx.default_policy

    # -- policies

    async def set_policy(
        self,
        guild_id: int | None,
        scope: QuotaScope,
        target_id: int | None = None,
        *,
        daily_images: int | _Unset | None = UNSET,
        concurrent_jobs: int | _Unset | None = UNSET,
        priority: Priority | _Unset = UNSET,
        updated_by: int | None = None,
    ) -> QuotaOverride:
        """Create or change an override. ``None`` = unlimited; an omitted limit (or priority)
        keeps the override's current value, or for a new override, the value it would otherwise
        inherit: the guild default for a role or user override (a user's roles are not
        known here), the built-in default for the guild default. So ``/quota set role
        daily:50`` does not silently make the concurrent limit unlimited.

        For ``QuotaScope.GUILD`` leave ``target_id`` out.
        """
        scope = QuotaScope(scope)
        target = self._target(guild_id, scope, target_id)
        for name, value in (("daily_images", daily_images), ("concurrent_jobs", concurrent_jobs)):
            if (
                value is not UNSET
                and value is not None
                and (isinstance(value, bool) or not isinstance(value, int) or value < 0)
            ):
                raise InvalidInput(f"{name} must be a whole number of 0 or more, or unlimited.")
        if priority is not UNSET:
            priority = Priority.checked(priority)
        key = guild_key(guild_id)
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            row = await tx.one(
                "SELECT * FROM quota_policies WHERE guild_key = ? AND scope = ? AND target_id = ?",
                (key, scope.value, target),
            )
            if row is not None:
                base = _policy_from_row(row)
            else:
                base = await self._resolve(tx, guild_id, below=scope, user_id=target)
            daily = base.daily_images if daily_images is UNSET else daily_images
            concurrent = base.concurrent_jobs if concurrent_jobs is UNSET else concurrent_jobs
            tier = base.priority if priority is UNSET else priority
            await tx.run(
                """INSERT INTO quota_policies
                       (guild_key, scope, target_id, daily_images, concurrent_jobs, priority,
                        updated_at, updated_by)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (guild_key, scope, target_id) DO UPDATE SET
                       daily_images = excluded.daily_images,
                       concurrent_jobs = excluded.concurrent_jobs,
                       priority = excluded.priority,
                       updated_at = excluded.updated_at,
                       updated_by = excluded.updated_by""",
                (key, scope.value, target, daily, concurrent, int(tier), now, updated_by),
            )
            stored = await tx.one(
                "SELECT * FROM quota_policies WHERE guild_key = ? AND scope = ? AND target_id = ?",
                (key, scope.value, target),
            )
        assert stored is not None
        return _override_from_row(stored)

    async def clear_policy(
        self, guild_id: int | None, scope: QuotaScope, target_id: int | None = None
    ) -> bool:
        """Remove an override; returns whether there was one."""
        scope = QuotaScope(scope)
        target = self._target(guild_id, scope, target_id)
        async with self._ctx.write() as tx:
            return (
                await tx.run(
                    "DELETE FROM quota_policies "
                    "WHERE guild_key = ? AND scope = ? AND target_id = ?",
                    (guild_key(guild_id), scope.value, target),
                )
                > 0
            )

    async def get_override(
        self, guild_id: int | None, scope: QuotaScope, target_id: int | None = None
    ) -> QuotaOverride | None:
        scope = QuotaScope(scope)
        target = self._target(guild_id, scope, target_id)
        async with self._ctx.read() as tx:
            row = await tx.one(
                "SELECT * FROM quota_policies WHERE guild_key = ? AND scope = ? AND target_id = ?",
                (guild_key(guild_id), scope.value, target),
            )
        return None if row is None else _override_from_row(row)

    async def list_overrides(self, guild_id: int | None) -> list[QuotaOverride]:
        """The guild default first, then roles, then users."""
        async with self._ctx.read() as tx:
            rows = await tx.all(
                """SELECT * FROM quota_policies WHERE guild_key = ?
                   ORDER BY CASE scope WHEN 'guild' THEN 0 WHEN 'role' THEN 1 ELSE 2 END,
                            target_id""",
                (guild_key(guild_id),),
            )
        return [_override_from_row(row) for row in rows]

    async def effective_policy(
        self, guild_id: int | None, user_id: int, role_ids: Iterable[int] = ()
    ) -> QuotaPolicy:
        """The limits that apply to this user here (see the module's docstring for the order)."""
        async with self._ctx.read() as tx:
            return await self._resolve(tx, guild_id, user_id=user_id, role_ids=role_ids)

    async def _resolve(
        self,
        tx: Tx,
        guild_id: int | None,
        *,
        user_id: int | None,
        role_ids: Iterable[int] = (),
        below: QuotaScope | None = None,
    ) -> QuotaPolicy:
        """Resolve the policy; ``below``: ignore that scope and the ones above it (for the
        value a new override starts from)."""
        roles = [] if guild_id is None else sorted({int(r) for r in role_ids})
        rows = await tx.all(
            f"""SELECT scope, target_id, daily_images, concurrent_jobs, priority
               FROM quota_policies
               WHERE guild_key = :guild AND (
                   scope = 'guild'
                   OR (scope = 'user' AND target_id = :user)
                   OR (scope = 'role' AND {tx.sql.id_in_json_list("target_id", "roles")})
               )""",
            {"guild": guild_key(guild_id), "user": user_id, "roles": json.dumps(roles)},
        )
        skip: set[str] = set()
        if below is QuotaScope.USER:
            skip = {"user"}
        elif below is QuotaScope.ROLE:
            skip = {"user", "role"}
        elif below is QuotaScope.GUILD:
            skip = {"user", "role", "guild"}
        by_scope: dict[str, list[QuotaPolicy]] = {}
        for row in rows:
            if row["scope"] not in skip:
                by_scope.setdefault(row["scope"], []).append(
                    _policy_from_row(row, PolicySource(row["scope"]))
                )
        if "user" in by_scope:
            return by_scope["user"][0]
        if "role" in by_scope:
            first, *others = by_scope["role"]
            daily, concurrent, priority = first.daily_images, first.concurrent_jobs, first.priority
            for policy in others:
                daily = _more_generous(daily, policy.daily_images)
                concurrent = _more_generous(concurrent, policy.concurrent_jobs)
                priority = max(priority, policy.priority)
            return QuotaPolicy(daily, concurrent, PolicySource.ROLE, priority)
        if "guild" in by_scope:
            return by_scope["guild"][0]
        return dataclasses.replace(self._ctx.default_policy, source=PolicySource.DEFAULT)

    @staticmethod
    def _target(guild_id: int | None, scope: QuotaScope, target_id: int | None) -> int:
        if scope is QuotaScope.GUILD:
            if target_id not in (None, guild_key(guild_id)):
                raise ValueError("the guild default takes no target id")
            return guild_key(guild_id)
        if target_id is None:
            raise ValueError(f"a {scope.value} override needs the {scope.value}'s id")
        return target_id

    # -- usage

    async def usage(
        self,
        guild_id: int | None,
        user_id: int,
        *,
        role_ids: Iterable[int] = (),
        policy: QuotaPolicy | None = None,
    ) -> Usage:
        """Today's standing. Pass ``policy`` if you already resolved it."""
        now = self._ctx.now()
        day = utc_day(now)
        async with self._ctx.read(snapshot=True) as tx:
            if policy is None:
                policy = await self._resolve(tx, guild_id, user_id=user_id, role_ids=role_ids)
            used = await used_today(tx, guild_id, user_id, day)
            active = await active_jobs(tx, user_id)
        limit = policy.daily_images
        return Usage(
            guild_id=guild_id,
            user_id=user_id,
            day=dt.date.fromisoformat(day),
            used=used,
            daily_limit=limit,
            remaining=None if limit is None else max(0, limit - used),
            resets_at=next_utc_midnight(now),
            active_jobs=active,
            concurrent_limit=policy.concurrent_jobs,
            policy=policy,
        )

    async def reset_usage(
        self, guild_id: int | None, user_id: int, *, reset_by: int | None = None
    ) -> int:
        """Forgive today's spending (``/quota reset``); returns the images forgiven."""
        now = self._ctx.now()
        day = utc_day(now)
        async with self._ctx.write() as tx:
            await tx.lock(user_id)  # no spend between the count and the reset
            used = await used_today(tx, guild_id, user_id, day)
            await tx.run(
                """INSERT INTO usage_ledger
                       (guild_key, user_id, day, entry, images, job_id, created_at, created_by)
                   VALUES (?, ?, ?, 'reset', ?, NULL, ?, ?)""",
                (guild_key(guild_id), user_id, day, used, to_db(now), reset_by),
            )
        return used

    async def refund(self, job_id: str) -> bool:
        """Give a job's images back (idempotent: ``False`` if it was refunded already, or
        spent nothing). Failing or cancelling a job does this by itself."""
        async with self._ctx.write() as tx:
            return await refund_job(tx, job_id, to_db(self._ctx.now()))
