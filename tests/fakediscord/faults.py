"""Fault injection for the fake's REST routes.

A *route* is written like Discord's OpenAPI paths, optionally prefixed by a method:
``"PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original"``. Constants for the
routes a bot uses most live in :class:`Routes`. A predicate on the request can narrow a rule
further (say, to one message id).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Routes:
    """Route strings for the REST calls an interaction bot makes most."""

    INTERACTION_CALLBACK = "POST /interactions/{interaction_id}/{interaction_token}/callback"
    GET_ORIGINAL = "GET /webhooks/{webhook_id}/{webhook_token}/messages/@original"
    EDIT_ORIGINAL = "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/@original"
    DELETE_ORIGINAL = "DELETE /webhooks/{webhook_id}/{webhook_token}/messages/@original"
    FOLLOWUP = "POST /webhooks/{webhook_id}/{webhook_token}"
    EDIT_FOLLOWUP = "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"
    DELETE_FOLLOWUP = "DELETE /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"
    CREATE_MESSAGE = "POST /channels/{channel_id}/messages"
    GET_MESSAGE = "GET /channels/{channel_id}/messages/{message_id}"
    EDIT_MESSAGE = "PATCH /channels/{channel_id}/messages/{message_id}"
    DELETE_MESSAGE = "DELETE /channels/{channel_id}/messages/{message_id}"
    SYNC_GLOBAL_COMMANDS = "PUT /applications/{application_id}/commands"
    SYNC_GUILD_COMMANDS = "PUT /applications/{application_id}/guilds/{guild_id}/commands"
    GET_GLOBAL_COMMANDS = "GET /applications/{application_id}/commands"
    GET_GUILD_COMMANDS = "GET /applications/{application_id}/guilds/{guild_id}/commands"
    USERS_ME = "GET /users/@me"


def parse_route(route: str) -> tuple[str | None, str]:
    method, sep, template = route.strip().partition(" ")
    if not sep:
        return None, route.strip()
    return method.upper(), template.strip()


@dataclass
class RequestInfo:
    """What a fault predicate sees."""

    method: str
    path: str
    template: str
    params: dict[str, str]
    query: dict[str, str]
    json: Any


@dataclass
class Fault:
    method: str | None
    template: str
    kind: str  # "rate_limit" | "error" | "delay" | "drop"
    times: int
    status: int = 500
    body: dict[str, Any] | None = None
    retry_after: float = 0.0
    is_global: bool = False
    scope: str = "user"
    delay: float = 0.0
    predicate: Callable[[RequestInfo], bool] | None = None
    hits: int = 0
    label: str = ""

    def matches(self, info: RequestInfo) -> bool:
        if self.times <= 0:
            return False
        if self.method is not None and self.method != info.method:
            return False
        if self.template != "*" and self.template != info.template:
            return False
        return self.predicate is None or self.predicate(info)

    @property
    def exhausted(self) -> bool:
        return self.times <= 0


@dataclass
class FaultInjector:
    """Rules applied, in order, to incoming REST requests before they are handled."""

    rules: list[Fault] = field(default_factory=list)

    def _add(self, route: str, **kwargs: Any) -> Fault:
        method, template = parse_route(route)
        fault = Fault(method=method, template=template, label=route, **kwargs)
        self.rules.append(fault)
        return fault

    def rate_limit(
        self,
        route: str,
        *,
        times: int = 1,
        retry_after: float = 0.25,
        is_global: bool = False,
        scope: str = "user",
        when: Callable[[RequestInfo], bool] | None = None,
    ) -> Fault:
        """The next ``times`` matching requests answer 429 with ``retry_after`` (seconds)."""
        return self._add(
            route,
            kind="rate_limit",
            times=times,
            status=429,
            retry_after=retry_after,
            is_global=is_global,
            scope=scope,
            predicate=when,
        )

    def error(
        self,
        route: str,
        *,
        status: int = 500,
        code: int = 0,
        message: str | None = None,
        times: int = 1,
        when: Callable[[RequestInfo], bool] | None = None,
    ) -> Fault:
        """The next ``times`` matching requests answer ``status`` with a Discord error body."""
        default = {
            500: "500: Internal Server Error",
            502: "502: Bad Gateway",
            503: "503: Service Unavailable",
            404: "Unknown Message",
            403: "Missing Permissions",
        }
        body = {"message": message or default.get(status, f"{status}: Error"), "code": code}
        return self._add(route, kind="error", times=times, status=status, body=body, predicate=when)

    def server_error(self, route: str, *, times: int = 1, status: int = 500) -> Fault:
        return self.error(route, status=status, times=times)

    def missing_permissions(self, route: str, *, times: int = 1) -> Fault:
        return self.error(route, status=403, code=50013, message="Missing Permissions", times=times)

    def unknown_message(self, route: str, *, times: int = 1) -> Fault:
        return self.error(route, status=404, code=10008, message="Unknown Message", times=times)

    def delay(
        self,
        route: str,
        seconds: float,
        *,
        times: int = 1,
        when: Callable[[RequestInfo], bool] | None = None,
    ) -> Fault:
        """The next ``times`` matching requests are answered normally after ``seconds``."""
        return self._add(route, kind="delay", times=times, delay=seconds, predicate=when)

    def clear(self) -> None:
        self.rules.clear()

    def take(self, info: RequestInfo) -> list[Fault]:
        """The faults that apply to this request (a delay, then at most one answer)."""
        taken: list[Fault] = []
        answered = False
        for fault in self.rules:
            if not fault.matches(info):
                continue
            if fault.kind == "delay":
                fault.times -= 1
                fault.hits += 1
                taken.append(fault)
            elif not answered:
                fault.times -= 1
                fault.hits += 1
                taken.append(fault)
                answered = True
        return taken


def rate_limit_headers(
    bucket: str, *, limit: int, remaining: int, reset_after: float, scope: str | None = None
) -> dict[str, str]:
    now = time.time()
    headers = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(max(remaining, 0)),
        "X-RateLimit-Reset": f"{now + reset_after:.3f}",
        "X-RateLimit-Reset-After": f"{reset_after:.3f}",
        "X-RateLimit-Bucket": bucket,
    }
    if scope is not None:
        headers["X-RateLimit-Scope"] = scope
    return headers


def rate_limited_response(
    bucket: str, retry_after: float, *, is_global: bool, scope: str, limit: int = 5
) -> tuple[dict[str, Any], dict[str, str]]:
    """Body and headers of a Discord 429 (with ``Via``, so clients know it is not Cloudflare)."""
    body: dict[str, Any] = {
        "message": "You are being rate limited.",
        "retry_after": round(retry_after, 3),
        "global": is_global,
    }
    if is_global:
        body["code"] = 0
    headers = rate_limit_headers(
        bucket, limit=limit, remaining=0, reset_after=retry_after, scope=scope
    )
    headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    headers["Via"] = "1.1 google"
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    return body, headers


@dataclass
class RateLimitRule:
    """A real bucket: at most ``limit`` requests per ``per`` seconds per major parameter."""

    method: str | None
    template: str
    limit: int
    per: float
    key: Callable[[RequestInfo], str]
    windows: dict[str, tuple[float, int]] = field(default_factory=dict)

    def consume(self, info: RequestInfo) -> tuple[bool, int, float, str]:
        """Returns (allowed, remaining, reset_after, bucket)."""
        bucket = self.key(info)
        now = time.monotonic()
        start, count = self.windows.get(bucket, (now, 0))
        if now - start >= self.per:
            start, count = now, 0
        reset_after = max(self.per - (now - start), 0.001)
        if count >= self.limit:
            self.windows[bucket] = (start, count)
            return False, 0, reset_after, bucket
        count += 1
        self.windows[bucket] = (start, count)
        return True, self.limit - count, reset_after, bucket
