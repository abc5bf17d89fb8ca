"""API keys: the HTTP API's accounts. A key is shown once, when it is made; only its SHA-256 is
kept (the key is 256 random bits, so a fast hash is as good as a slow one). Each key is an
account of its own, with a user id below zero that no Discord user can have, so quotas,
history and the fair queue treat it like any user."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from ._base import Context, Row, ensure_user
from .clock import from_db, from_db_opt, to_db
from .errors import InvalidInput, NotFound

KEY_PREFIX = "dc_"
SHOWN_PREFIX = 10  # "dc_" and 7 characters: enough to tell keys apart in a listing


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    name: str
    user_id: int
    prefix: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    operator: bool = False  # may read the operator dashboard (usage of every server)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


NEW_ACCOUNT_LOCK = -(2**62)  # a Tx.lock key no user id takes (API accounts count down from -1)


class ApiKeyRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def create(
        self, name: str, *, user_id: int | None = None, operator: bool = False
    ) -> tuple[ApiKey, str]:
        """A new key; returns the record and the key itself (shown once). ``user_id``: the
        Discord user it acts for (one account everywhere); None: an account of its own.
        ``operator``: it may read the operator dashboard."""
        name = " ".join(name.split())
        if not name or len(name) > 100:
            raise InvalidInput("A key needs a name of 1 to 100 characters.")
        if user_id is not None and user_id <= 0:
            raise InvalidInput("A personal key belongs to a Discord user id.")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            if user_id is None:
                # Two processes drawing at once would share an account (on PostgreSQL).
                await tx.lock(NEW_ACCOUNT_LOCK)
                lowest = await tx.scalar("SELECT min(user_id) FROM api_keys WHERE user_id < 0")
                user_id = min(-1, (lowest or 0) - 1)
            await ensure_user(tx, user_id, now)
            row = await tx.one(
                "INSERT INTO api_keys (name, user_id, prefix, hash, created_at, operator)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
                (name, user_id, secret[:SHOWN_PREFIX], hash_key(secret), now, int(operator)),
            )
        assert row is not None
        return _key_from_row(row), secret

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The active key ``secret`` is, or None (unknown or revoked)."""
        if not secret.startswith(KEY_PREFIX):
            return None
        async with self._ctx.read() as tx:
            row = await tx.one(
                "SELECT * FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
                (hash_key(secret),),
            )
        return None if row is None else _key_from_row(row)

    async def all(self) -> list[ApiKey]:
        async with self._ctx.read() as tx:
            rows = await tx.all("SELECT * FROM api_keys ORDER BY id")
        return [_key_from_row(row) for row in rows]

    async def for_user(self, user_id: int) -> list[ApiKey]:
        """The keys that act for this account, active or not."""
        async with self._ctx.read() as tx:
            rows = await tx.all("SELECT * FROM api_keys WHERE user_id = ? ORDER BY id", (user_id,))
        return [_key_from_row(row) for row in rows]

    async def revoke_all(self, user_id: int) -> int:
        """Revoke every active key of the account; returns how many."""
        async with self._ctx.write() as tx:
            return await tx.run(
                "UPDATE api_keys SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
                (to_db(self._ctx.now()), user_id),
            )

    async def revoke(self, key_id: int) -> ApiKey:
        """Revoke a key (at once: its next request is refused). Revoking twice is harmless."""
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            row = await tx.one(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? RETURNING *",
                (now, key_id),
            )
        if row is None:
            raise NotFound(f"There is no API key {key_id}.")
        return _key_from_row(row)


def _key_from_row(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        user_id=row["user_id"],
        prefix=row["prefix"],
        created_at=from_db(row["created_at"]),
        revoked_at=from_db_opt(row["revoked_at"]),
        operator=bool(row["operator"]),
    )


IDEMPOTENCY_WINDOW = dt.timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Claim:
    """What an ``Idempotency-Key`` holds: ``job_id`` None means its first request is still
    being accepted; ``same_body`` False means the key was used with another body."""

    job_id: str | None
    same_body: bool


class IdempotencyRepository:
    """``Idempotency-Key``: the first request with a key makes the job; a retry with the
    same key and body gets that job again; the same key with another body is refused."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def claim(self, user_id: int, key: str, body_hash: str) -> Claim | None:
        """Take the key for a new job (None), or say what it already holds."""
        now = self._ctx.now()
        async with self._ctx.write() as tx:
            await tx.run(
                "DELETE FROM idempotency_keys WHERE user_id = ? AND key = ? AND created_at < ?",
                (user_id, key, to_db(now - IDEMPOTENCY_WINDOW)),
            )
            if await tx.run(
                "INSERT INTO idempotency_keys (user_id, key, body_hash, job_id, created_at)"
                " VALUES (?, ?, ?, NULL, ?) ON CONFLICT DO NOTHING",
                (user_id, key, body_hash, to_db(now)),
            ):
                return None
            row = await tx.one(
                "SELECT body_hash, job_id FROM idempotency_keys WHERE user_id = ? AND key = ?",
                (user_id, key),
            )
        assert row is not None
        return Claim(row["job_id"], row["body_hash"] == body_hash)

    async def bind(self, user_id: int, key: str, job_id: str) -> None:
        async with self._ctx.write() as tx:
            await tx.run(
                "UPDATE idempotency_keys SET job_id = ? WHERE user_id = ? AND key = ?",
                (job_id, user_id, key),
            )

    async def release(self, user_id: int, key: str) -> None:
        """The first request failed before making a job: a retry may try again."""
        async with self._ctx.write() as tx:
            await tx.run(
                "DELETE FROM idempotency_keys WHERE user_id = ? AND key = ? AND job_id IS NULL",
                (user_id, key),
            )
