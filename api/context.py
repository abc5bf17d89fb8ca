"""What every route of the HTTP adapter shares: the context (core service, registry,
settings, rate limiter, the recorders of jobs taken here), the caller's account, and errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from api.accounts import ANONYMOUS_USER_ID, Account, RateLimiter, is_loopback
from core.config import Settings
from core.errors import InvalidField, QuotaRefused, UserError
from core.events import JobEvents
from core.feed import JobFeed
from core.recorder import record_outcome
from core.service import Accepted, JobService, Requester
from core.storage.records import Job
from core.wildcards import ExpandMode
from engine.registry import ModelRegistry
from engine.types import GenerationRequest

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def not_found(what: str = "job") -> ApiError:
    return ApiError(404, "not_found", f"There is no such {what} (or it is not yours).")


@dataclass
class ApiContext:
    """What the routes use: the core service, the registry, settings, the rate limiter and
    the recorders of the jobs taken here (awaited before a job is reported finished)."""

    service: JobService
    registry: ModelRegistry
    settings: Settings
    limiter: RateLimiter
    events: JobEvents
    recorders: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    owners: dict[str, int] = field(default_factory=dict)  # job id -> user id, while live
    # Whether a Discord user is in a server (the bot asks Discord); None without the bot.
    is_member: Callable[[int, int], Awaitable[bool]] | None = None

    async def server_for(self, account: Account, server_id: str | None) -> int | None:
        """The Discord server a request draws for, checked: the caller must be a Discord
        user (a key made with /apikey create) who is in it."""
        if server_id is None:
            return None
        guild_id = int(server_id)
        if account.user_id <= 0:
            raise ApiError(
                403,
                "not_a_discord_user",
                "Only a key that acts as a Discord user (/apikey create in Discord) can draw"
                " for a server.",
                field="server_id",
            )
        if self.is_member is None:
            raise ApiError(
                422,
                "invalid_request",
                "The Discord bot does not run in this process, so servers cannot be checked.",
                field="server_id",
            )
        try:
            member = await self.is_member(guild_id, account.user_id)
        except Exception:
            log.warning("could not ask Discord about a server's member", exc_info=True)
            raise ApiError(
                503,
                "discord_unavailable",
                "Discord did not answer; try again shortly.",
                headers={"Retry-After": "30"},
            ) from None
        if not member:
            raise ApiError(
                403,
                "not_a_member",
                "You are not in that server, or the bot is not.",
                field="server_id",
            )
        return guild_id

    def follow(self, job: Job, feed: JobFeed) -> None:
        task = asyncio.create_task(
            record_outcome(self.service, job, feed, self.events), name=f"api-{job.id}"
        )
        self.recorders[job.id] = task
        self.owners[job.id] = job.user_id

        def ended(_: asyncio.Task[None]) -> None:
            self.recorders.pop(job.id, None)
            self.owners.pop(job.id, None)

        task.add_done_callback(ended)

    def live_jobs(self, user_id: int) -> list[JobFeed]:
        """The account's jobs queued or running in this process, oldest first."""
        feeds = [
            self.service.feed(job_id) for job_id, owner in self.owners.items() if owner == user_id
        ]
        return [feed for feed in feeds if feed is not None]

    async def accept(
        self,
        account: Account,
        generation: GenerationRequest,
        *,
        fields: set[str],
        style: str | None = None,
        expand: ExpandMode | None = None,
        parent: tuple[str, int] | None = None,
        init_image_key: str | None = None,
        guild_id: int | None = None,
    ) -> Accepted:
        """Queue a job for ``account`` and keep its record as it runs. A refusal is an
        ``ApiError``: 429 over a quota, else 422 naming the field when it can (one of
        ``fields``, the names the caller's request uses)."""
        try:
            accepted = await self.service.accept(
                Requester(
                    user_id=account.user_id, guild_id=guild_id, channel_id=None, source="api"
                ),
                generation,
                private=True,
                style=style,
                expand=expand,
                parent=parent,
                init_image_key=init_image_key,
            )
        except QuotaRefused as error:
            wait = math.ceil(error.retry_after_s) if error.retry_after_s else 30
            raise ApiError(
                429, "quota_exceeded", str(error), headers={"Retry-After": str(wait)}
            ) from None
        except InvalidField as error:
            raise ApiError(422, "invalid_request", str(error), field=error.field) from None
        except UserError as error:
            raise ApiError(
                422, "invalid_request", str(error), field=_field_named(str(error), fields)
            ) from None
        self.events("queued", accepted.job, accepted.request.model)
        self.follow(accepted.job, accepted.feed)
        return accepted

    async def recorded(self, job_id: str, limit_s: float) -> None:
        """Wait (up to ``limit_s``) until the job's outcome is in storage."""
        task = self.recorders.get(job_id)
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), limit_s)

    async def resume(self) -> None:
        """Queue again the API's jobs left unfinished by the last run."""
        outcome = await self.service.db.jobs.resume_unfinished(sources={"api"})
        for job in outcome.resumed:
            try:
                self.follow(job, await self.service.resubmit(job))
            except Exception as error:
                log.warning("job %s could not be resumed: %s", job.id, error)
                await self.service.db.jobs.mark_failed(job.id, "Could not resume after a restart.")
        for job in (*outcome.abandoned, *outcome.undelivered):
            await self.service.db.jobs.mark_delivered(job.id)  # clients read it from storage

    async def close(self) -> None:
        for task in list(self.recorders.values()):
            task.cancel()


def _field_named(message: str, fields: set[str]) -> str | None:
    """The request field an engine refusal is about, when its first word names one ("Width
    must be between 32 and 256 ...")."""
    first = message.split(" ", 1)[0].strip(".,:").lower().replace("-", "_")
    aliases = {"size": "width", "image": "init_image", "mask": "mask_image"}
    name = aliases.get(first, first)
    return name if name in fields else None


def error_response(error: ApiError) -> JSONResponse:
    body = {"error": {"code": error.code, "message": error.message, "field": error.field}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


# --- who is calling -------------------------------------------------------------------------


async def caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Account:
    context: ApiContext = request.app.state.context
    if authorization:
        scheme, _, secret = authorization.partition(" ")
        key = None
        if scheme.lower() == "bearer" and secret.strip():
            key = await context.service.db.api_keys.authenticate(secret.strip())
        if key is None:
            raise ApiError(
                401,
                "invalid_key",
                "This API key is not valid (unknown or revoked).",
                headers={"WWW-Authenticate": "Bearer"},
            )
        account = Account(key.user_id, key.id, key.operator)
    elif context.settings.api_allow_anonymous and is_loopback(
        request.client.host if request.client else None
    ):
        account = Account(ANONYMOUS_USER_ID, None)
    else:
        raise ApiError(
            401,
            "missing_key",
            "Send an API key as `Authorization: Bearer <key>` (make one with "
            "`diffusion-chat apikey create NAME`).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    allowance = context.limiter.take(account.user_id)
    headers = {
        "RateLimit-Limit": str(allowance.limit),
        "RateLimit-Remaining": str(allowance.remaining),
        "RateLimit-Reset": str(allowance.reset_s),
        "X-RateLimit-Limit": str(allowance.limit),
        "X-RateLimit-Remaining": str(allowance.remaining),
        "X-RateLimit-Reset": str(allowance.reset_s),
    }
    if not allowance.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"Too many requests: {allowance.limit} a minute. Try again in "
            f"{allowance.retry_after_s} s.",
            headers={**headers, "Retry-After": str(allowance.retry_after_s)},
        )
    request.state.rate_headers = headers
    return account


Caller = Annotated[Account, Depends(caller)]


def with_rate_headers(request: Request, response: Response) -> Response:
    response.headers.update(getattr(request.state, "rate_headers", {}))
    return response
