"""A fake Discord (REST + gateway) that the unmodified discord.py client talks to.

Start it with ``async with FakeDiscord() as fake:`` (or ``await fake.start()``), then point a
client at ``fake.api_base`` and ``fake.gateway_url`` (see :mod:`fakediscord.client`), or run a
bot process with the variables from ``fake.env()``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web
from yarl import URL

from . import rules
from .driver import DriverMixin
from .faults import (
    FaultInjector,
    RateLimitRule,
    RequestInfo,
    parse_route,
    rate_limit_headers,
    rate_limited_response,
)
from .gateway import GatewayServer, GatewaySession, Intents
from .interactions import CallbackRecord, FakeDiscordTimeout, InteractionHandle
from .models import (
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    MessageFlags,
    Permissions,
    SnowflakeFactory,
    StoredAttachment,
    StoredMessage,
    guess_content_type,
)
from .spec import FieldError, OpenAPISpec, discord_error_tree, load_spec_or_none

log = logging.getLogger("fakediscord")

JSON_HEADERS = {"Content-Type": "application/json"}


# --------------------------------------------------------------------------------------
# Records tests can assert on
# --------------------------------------------------------------------------------------
@dataclass
class UploadedFile:
    field_name: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class RequestRecord:
    method: str
    path: str
    template: str | None
    query: dict[str, str]
    json: Any
    files: list[UploadedFile]
    at: float
    status: int | None = None
    duration: float | None = None
    fault: str | None = None
    response: Any = None

    @property
    def route(self) -> str:
        return f"{self.method} {self.template or self.path}"

    def __repr__(self) -> str:
        extra = f" fault={self.fault}" if self.fault else ""
        return f"<{self.method} {self.path} -> {self.status}{extra}>"


@dataclass
class Problem:
    """Something that must fail the test: a spec violation, an unknown route, a fake bug."""

    kind: str  # "spec" | "rule" | "unknown_route" | "gateway" | "protocol" | "fake_bug"
    message: str
    method: str | None = None
    path: str | None = None
    template: str | None = None
    errors: list[FieldError] = field(default_factory=list)
    body: Any = None

    def __str__(self) -> str:
        where = f"{self.method} {self.path} " if self.method else ""
        head = f"[{self.kind}] {where}{self.message}"
        if self.errors:
            head += "".join(f"\n      - {e}" for e in self.errors[:20])
        if self.body is not None:
            text = json.dumps(self.body, default=str)
            head += f"\n      body: {text[:600]}{'...' if len(text) > 600 else ''}"
        return head


@dataclass
class CommandSync:
    """One write to the application's commands (bulk PUT, or a single POST/PATCH/DELETE)."""

    guild_id: int | None
    method: str
    payload: Any
    at: float
    changed: bool

    @property
    def scope(self) -> str:
        return "global" if self.guild_id is None else f"guild {self.guild_id}"


class DiscordHTTPError(Exception):
    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            data["errors"] = self.errors
        return data


def unknown(kind: str) -> DiscordHTTPError:
    codes = {
        "Message": 10008,
        "Channel": 10003,
        "Guild": 10004,
        "Member": 10007,
        "User": 10013,
        "Webhook": 10015,
        "interaction": 10062,
        "application command": 10063,
        "Application": 10002,
        "Role": 10011,
    }
    return DiscordHTTPError(404, codes[kind], f"Unknown {kind}")


def form_error(path: tuple[str | int, ...], code: str, message: str) -> DiscordHTTPError:
    return DiscordHTTPError(
        400, 50035, "Invalid Form Body", discord_error_tree([FieldError(path, code, message)])
    )


@dataclass
class Ctx:
    request: web.Request
    method: str
    path: str
    template: str
    params: dict[str, str]
    query: dict[str, str]
    json: Any
    files: list[UploadedFile]
    record: RequestRecord

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("1", "true", "yes")


Handler = Callable[[Ctx], Awaitable[Any]]


@dataclass
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: bool
    n_params: int


def _compile(template: str) -> re.Pattern[str]:
    parts = []
    for segment in template.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(segment))
    return re.compile("^/" + "/".join(parts) + "/?$")


def _truthy_json(value: Any) -> bool:
    return value not in (None, "", [], {})


# --------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------
class FakeDiscord(DriverMixin):
    """A fake Discord: REST under ``/api/v10``, gateway at ``/gateway``, files at ``/attachments``.

    World built by default: application + bot user, one guild ("Fake Guild") with roles
    ``@everyone``, the bot's managed role and ``Moderator`` (Manage Server), text channels
    ``general`` and ``art``, and members ``owner`` (guild owner), ``alice``, ``bob`` and
    ``moderator``.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        spec: OpenAPISpec | str | None = "auto",
        validate_responses: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        heartbeat_interval: float = 41.25,
        ack_deadline: float = 3.0,
        token_lifetime: float = 15 * 60.0,
        upload_limit: int = 10 * 1024 * 1024,
        allowed_privileged_intents: int = 0,
        dispatch_message_events: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.heartbeat_interval = heartbeat_interval
        self.ack_deadline = ack_deadline
        self.token_lifetime = token_lifetime
        self.upload_limit = upload_limit
        self.allowed_privileged_intents = allowed_privileged_intents
        self.dispatch_message_events = dispatch_message_events
        self.validate_responses = validate_responses
        if spec == "auto":
            self.spec, self.spec_skip_reason = load_spec_or_none()
        elif isinstance(spec, OpenAPISpec):
            self.spec, self.spec_skip_reason = spec, None
        else:
            self.spec, self.spec_skip_reason = None, "spec validation disabled by the caller"

        self.snowflake = SnowflakeFactory()
        self.application_id = self.snowflake()
        self.application_flags = 0
        self.bot_user = FakeUser(self.application_id, "Diffusion Chat", bot=True)
        self.token = token or _discord_shaped_token(self.application_id)
        self.owner_user = FakeUser(self.snowflake(), "owner", "Guild Owner")
        self.users: dict[int, FakeUser] = {
            self.bot_user.id: self.bot_user,
            self.owner_user.id: self.owner_user,
        }
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.guild = self.add_guild("Fake Guild", owner=self.owner_user)
        self.channel = self.guild.channel("general")
        self.owner = self.guild.members[self.owner_user.id]
        self.alice = self.add_member("alice")
        self.bob = self.add_member("bob")
        self.moderator = self.add_member("moderator", roles=["Moderator"])

        # stores
        self._messages: dict[int, StoredMessage] = {}
        self._channel_messages: dict[int, list[int]] = {}
        self._attachments: dict[int, StoredAttachment] = {}
        self.interactions: dict[int, InteractionHandle] = {}
        self._ack_exempt: set[int] = set()
        self._interactions_by_token: dict[str, InteractionHandle] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {None: []}
        self._command_defs: dict[int | None, list[dict[str, Any]]] = {None: []}
        self.command_syncs: list[CommandSync] = []
        self.requests: list[RequestRecord] = []
        self.problems: list[Problem] = []
        self.http_errors: list[tuple[RequestRecord, DiscordHTTPError]] = []
        self.faults = FaultInjector()
        self.rate_limits: list[RateLimitRule] = []
        self.gateway = GatewayServer(self)

        # OAuth2 ("Log in with Discord"): the person at the browser is ``oauth_user``, who
        # approves at once unless ``oauth_denies``; the app's secret is ``oauth_secret``.
        self.oauth_user: FakeUser = self.alice.user
        self.oauth_denies = False
        self.oauth_secret = "fake-client-secret"
        self._oauth_codes: dict[str, tuple[FakeUser, str]] = {}
        self._oauth_tokens: dict[str, FakeUser] = {}

        self._waiters: list[asyncio.Future[None]] = []
        self._routes: list[_Route] = []
        self._register_routes()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.url = ""

    # ----------------------------------------------------------------------------------
    # lifecycle
    # ----------------------------------------------------------------------------------
    async def start(self) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("GET", "/gateway", self.gateway.handle)
        app.router.add_route("GET", "/gateway/", self.gateway.handle)
        app.router.add_route("GET", "/gateway/resume", self.gateway.handle)
        app.router.add_route(
            "GET", "/attachments/{channel_id}/{attachment_id}/{filename}", self._serve_attachment
        )
        app.router.add_route(
            "GET",
            "/ephemeral-attachments/{app_id}/{attachment_id}/{filename}",
            self._serve_attachment,
        )
        for prefix in ("/api/v10", "/api", ""):
            app.router.add_route("GET", f"{prefix}/oauth2/authorize", self._oauth_authorize)
            app.router.add_route("POST", f"{prefix}/oauth2/token", self._oauth_token)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._handle_api)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        server = self._site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    async def stop(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for fut in self._waiters:
            if not fut.done():
                fut.cancel()

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    resume_gateway_path = "/gateway/resume"

    @property
    def resume_gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.resume_gateway_path}"

    def env(self) -> dict[str, str]:
        """Environment variables for a bot process (``python -m bot``)."""
        return {
            "DISCORD_TOKEN": self.token,
            "DISCORD_API_BASE_URL": self.api_base,
            "DISCORD_GATEWAY_URL": self.gateway_url,
            "DEV_GUILD_ID": str(self.guild.id),
        }

    # ----------------------------------------------------------------------------------
    # world building
    # ----------------------------------------------------------------------------------
    def add_guild(self, name: str, *, owner: FakeUser | None = None) -> FakeGuild:
        gid = self.snowflake()
        owner = owner or self.owner_user
        guild = FakeGuild(id=gid, name=name, owner_id=owner.id, application_id=self.application_id)
        guild.roles.append(FakeRole(gid, "@everyone", Permissions.EVERYONE_DEFAULT, position=0))
        guild.roles.append(
            FakeRole(
                self.snowflake(),
                self.bot_user.username,
                Permissions.BOT_DEFAULT,
                position=2,
                managed=True,
                bot_id=self.bot_user.id,
            )
        )
        guild.roles.append(
            FakeRole(
                self.snowflake(),
                "Moderator",
                Permissions.MANAGE_GUILD | Permissions.MANAGE_MESSAGES,
                position=1,
            )
        )
        self.guilds[gid] = guild
        self.add_channel(guild, "general")
        self.add_channel(guild, "art")
        guild.members[owner.id] = FakeMember(owner, gid)
        guild.members[self.bot_user.id] = FakeMember(
            self.bot_user, gid, roles=[guild.roles[1]], joined_at=datetime.now(UTC)
        )
        return guild

    def add_channel(
        self, guild: FakeGuild, name: str, *, type: int = 0, nsfw: bool = False
    ) -> FakeChannel:
        channel = FakeChannel(
            self.snowflake(), name, guild.id, type=type, position=len(guild.channels), nsfw=nsfw
        )
        guild.channels.append(channel)
        self.channels[channel.id] = channel
        return channel

    def add_role(self, name: str, permissions: int, *, guild: FakeGuild | None = None) -> FakeRole:
        guild = guild or self.guild
        role = FakeRole(self.snowflake(), name, permissions, position=len(guild.roles))
        guild.roles.append(role)
        return role

    def add_member(
        self,
        username: str,
        *,
        guild: FakeGuild | None = None,
        roles: list[str | FakeRole] | None = None,
        user: FakeUser | None = None,
    ) -> FakeMember:
        guild = guild or self.guild
        if user is None:
            user = FakeUser(self.snowflake(), username, username.title())
            self.users[user.id] = user
        resolved = [guild.role(r) if isinstance(r, str) else r for r in roles or []]
        member = FakeMember(user, guild.id, roles=resolved)
        guild.members[user.id] = member
        return member

    def set_bot_permissions(self, permissions: int, *, guild: FakeGuild | None = None) -> None:
        """Replace the permissions of the bot's managed role (and @everyone's)."""
        guild = guild or self.guild
        guild.roles[1].permissions = permissions
        guild.everyone.permissions &= permissions

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        for channel in self.channels.values():
            if channel.guild_id is None and channel.recipients == [user]:
                return channel
        channel = FakeChannel(self.snowflake(), "", None, type=1, recipients=[user])
        self.channels[channel.id] = channel
        return channel

    def upload(
        self, filename: str, data: bytes, content_type: str | None = None
    ) -> StoredAttachment:
        """A file a user attaches to a slash command; served over HTTP by the fake."""
        aid = self.snowflake()
        att = StoredAttachment(
            id=aid,
            filename=filename,
            data=data,
            content_type=content_type or guess_content_type(filename),
            url=f"{self.url}/ephemeral-attachments/{self.application_id}/{aid}/{quote(filename)}",
            ephemeral=True,
        )
        self._attachments[aid] = att
        return att

    # ----------------------------------------------------------------------------------
    # queries for tests
    # ----------------------------------------------------------------------------------
    def get_message(self, message_id: int) -> StoredMessage | None:
        return self._messages.get(int(message_id))

    def messages(
        self,
        channel: FakeChannel | int | None = None,
        *,
        include_deleted: bool = False,
        include_ephemeral: bool = True,
    ) -> list[StoredMessage]:
        """Messages in ``channel`` (default: every channel), oldest first."""
        if channel is None:
            ids = sorted(self._messages)
        else:
            cid = channel if isinstance(channel, int) else channel.id
            ids = list(self._channel_messages.get(cid, []))
        out = []
        for mid in ids:
            msg = self._messages[mid]
            if msg.deleted and not include_deleted:
                continue
            if msg.ephemeral and not include_ephemeral:
                continue
            out.append(msg)
        return out

    def last_message(self, channel: FakeChannel | int | None = None) -> StoredMessage | None:
        msgs = self.messages(channel)
        return msgs[-1] if msgs else None

    def requests_to(self, route: str) -> list[RequestRecord]:
        """Requests whose route matches ``"METHOD /template"`` or ``"/template"``."""
        method, template = parse_route(route)
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and r.template == template
        ]

    def sync_count(self, guild: FakeGuild | int | str | None = "any") -> int:
        """How many times commands were written (``"any"``, ``None`` = global, or a guild)."""
        if guild == "any":
            return len(self.command_syncs)
        gid = guild.id if isinstance(guild, FakeGuild) else guild
        return sum(1 for s in self.command_syncs if s.guild_id == gid)

    def forget_commands(self, guild: FakeGuild | int | None = None) -> None:
        """Drop the registered commands, as another tool (or a fresh Discord-compatible
        service) would leave them."""
        gid = guild.id if isinstance(guild, FakeGuild) else guild
        self.commands[gid] = []
        self._command_defs[gid] = []

    def registered_commands(self, guild: FakeGuild | int | None = None) -> list[dict[str, Any]]:
        gid = guild.id if isinstance(guild, FakeGuild) else guild
        return list(self.commands.get(gid, []))

    @property
    def sessions(self) -> list[GatewaySession]:
        return self.gateway.sessions

    @property
    def session(self) -> GatewaySession | None:
        return self.gateway.active_session

    def describe(self, last: int = 12) -> str:
        lines = [f"fake discord at {self.url}"]
        session = self.session
        if session is None:
            lines.append("  gateway: no session identified")
        else:
            lines.append(
                f"  gateway: session {session.session_id[:8]} connected={session.connected} "
                f"seq={session.seq} resumes={session.resume_count}"
            )
        lines.append(f"  last {min(last, len(self.requests))} of {len(self.requests)} requests:")
        lines.extend(f"    {r!r}" for r in self.requests[-last:])
        unanswered = [r for r in self.requests if r.status is None]
        if unanswered:
            lines.append(f"  {len(unanswered)} requests still unanswered:")
            lines.extend(f"    {r!r}" for r in unanswered[:last])
        if self.problems:
            lines.append("  problems:")
            lines.extend(f"    {p}" for p in self.problems)
        return "\n".join(lines)

    # ----------------------------------------------------------------------------------
    # problems
    # ----------------------------------------------------------------------------------
    def _problem(self, kind: str, message: str, **kwargs: Any) -> Problem:
        problem = Problem(kind=kind, message=message, **kwargs)
        self.problems.append(problem)
        log.warning("fakediscord problem: %s", problem)
        self._notify()
        return problem

    @property
    def violations(self) -> list[Problem]:
        return [p for p in self.problems if p.kind in ("spec", "rule")]

    @property
    def unknown_routes(self) -> list[Problem]:
        return [p for p in self.problems if p.kind == "unknown_route"]

    def unacknowledged(self) -> list[InteractionHandle]:
        """Interactions past their acknowledgement deadline that got no answer."""
        now = time.monotonic()
        return [
            ix
            for ix in self.interactions.values()
            if not ix.callbacks
            and now - ix.created_at > self.ack_deadline
            and ix.id not in self._ack_exempt
        ]

    def assert_no_problems(self, *, require_acks: bool = True) -> None:
        """Fail with every spec violation, unknown route and protocol problem recorded.

        With ``require_acks``, an interaction that was never acknowledged within the
        deadline (the user saw "The application did not respond") is a problem too.
        """
        problems = list(self.problems)
        if require_acks:
            problems += [
                Problem(
                    "protocol",
                    f"{ix!r} was never acknowledged (the user saw 'The "
                    "application did not respond')",
                )
                for ix in self.unacknowledged()
            ]
        if problems:
            text = "\n  ".join(str(p) for p in problems)
            raise AssertionError(f"fake Discord recorded {len(problems)} problem(s):\n  {text}")

    def clear_problems(self) -> list[Problem]:
        """Forget the problems so far (and the interactions so far that were not answered)."""
        problems, self.problems = self.problems, []
        self._ack_exempt.update(self.interactions)
        return problems

    # ----------------------------------------------------------------------------------
    # waiting
    # ----------------------------------------------------------------------------------
    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        *,
        timeout: float,
        description: str | Callable[[], str],
    ) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every change); return it.
        A callable ``description`` is read at the timeout, so it shows the state then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                said = description() if callable(description) else description
                raise FakeDiscordTimeout(
                    f"timed out after {timeout:g} s waiting for {said}\n{self.describe()}"
                )
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, min(remaining, 0.25))

    async def wait_until_ready(self, timeout: float = 10.0) -> GatewaySession:
        """Wait for a client to IDENTIFY and be connected."""
        return await self.wait_for(
            lambda: self.session if self.session is not None and self.session.connected else None,
            timeout=timeout,
            description="a gateway session (IDENTIFY)",
        )

    async def wait_for_sync(self, count: int = 1, timeout: float = 10.0) -> list[CommandSync]:
        await self.wait_for(
            lambda: len(self.command_syncs) >= count,
            timeout=timeout,
            description=f"{count} command sync(s)",
        )
        return self.command_syncs

    async def wait_for_request(
        self, route: str, *, count: int = 1, timeout: float = 10.0
    ) -> list[RequestRecord]:
        await self.wait_for(
            lambda: len([r for r in self.requests_to(route) if r.status is not None]) >= count,
            timeout=timeout,
            description=f"{count} answered request(s) to {route}",
        )
        return self.requests_to(route)

    async def disconnect_gateway(
        self, code: int | None = 4000, *, invalidate: bool = False
    ) -> None:
        """Close the gateway socket (``code``), or drop the TCP connection (``None``)."""
        await self.gateway.disconnect(code, invalidate=invalidate)
        self._notify()

    async def wait_for_resume(self, *, after: int = 0, timeout: float = 10.0) -> GatewaySession:
        """Wait until the active session has been RESUMEd more than ``after`` times."""

        def resumed() -> GatewaySession | None:
            session = self.session
            if session is not None and session.resume_count > after and session.connected:
                return session
            return None

        return await self.wait_for(
            resumed,
            timeout=timeout,
            description="the client to RESUME its gateway session",
        )

    def limit_route(
        self,
        route: str,
        *,
        limit: int,
        per: float,
        key: Callable[[RequestInfo], str] | None = None,
    ) -> RateLimitRule:
        """A real rate limit: ``limit`` requests per ``per`` seconds per major parameter."""
        method, template = parse_route(route)

        def major(info: RequestInfo) -> str:
            p = info.params
            return "+".join(
                p[k] for k in ("channel_id", "guild_id", "webhook_id", "webhook_token") if k in p
            )

        rule = RateLimitRule(method, template, limit, per, key or major)
        self.rate_limits.append(rule)
        return rule

    # ----------------------------------------------------------------------------------
    # HTTP plumbing
    # ----------------------------------------------------------------------------------
    def _route(self, method: str, template: str, handler: Handler, *, auth: bool = True) -> None:
        self._routes.append(
            _Route(method, template, _compile(template), handler, auth, template.count("{"))
        )

    def _match(self, method: str, path: str) -> tuple[_Route | None, dict[str, str], bool]:
        best: tuple[_Route, dict[str, str]] | None = None
        path_known = False
        for route in self._routes:
            m = route.pattern.match(path)
            if not m:
                continue
            path_known = True
            if route.method != method:
                continue
            if best is None or route.n_params < best[0].n_params:
                best = (route, m.groupdict())
        if best is None:
            return None, {}, path_known
        return best[0], best[1], path_known

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        self._problem(
            "unknown_route",
            "request outside /api/v10 (wrong base URL?)",
            method=request.method,
            path=request.path,
        )
        return self._json({"message": "404: Not Found", "code": 0}, 404)

    async def _serve_attachment(self, request: web.Request) -> web.StreamResponse:
        try:
            att = self._attachments[int(request.match_info["attachment_id"])]
        except (KeyError, ValueError):
            return web.Response(status=404, text="Not Found")
        return web.Response(body=att.data, headers={"Content-Type": att.content_type})

    @staticmethod
    def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        merged = dict(JSON_HEADERS)
        if headers:
            merged.update(headers)
        return web.Response(
            body=json.dumps(data, separators=(",", ":")).encode(), status=status, headers=merged
        )

    async def _read_body(self, request: web.Request) -> tuple[Any, list[UploadedFile], str | None]:
        """(json payload, files, error) from a JSON or multipart body."""
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            payload: Any = None
            files: list[UploadedFile] = []
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not hasattr(part, "read"):
                    return None, files, "nested multipart is not supported"
                name = part.name or ""
                data = await part.read(decode=False)  # type: ignore[union-attr]
                if name == "payload_json":
                    try:
                        payload = json.loads(bytes(data))
                    except ValueError:
                        return None, files, "payload_json is not valid JSON"
                elif part.filename is not None:
                    files.append(
                        UploadedFile(
                            field_name=name,
                            filename=part.filename,
                            content_type=guess_content_type(part.filename),
                            data=bytes(data),
                        )
                    )
                else:
                    return None, files, f"unexpected multipart field {name!r}"
            return payload, files, None
        raw = await request.read()
        if not raw:
            return None, [], None
        if not ctype.startswith("application/json"):
            return None, [], f"body with Content-Type {ctype!r}; Discord expects JSON"
        try:
            return json.loads(raw), [], None
        except ValueError:
            return None, [], "body is not valid JSON"

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        method = request.method
        path = "/" + request.match_info["tail"]
        route, params, _ = self._match(method, path)
        query = dict(request.query)
        record = RequestRecord(
            method, path, route.template if route else None, query, None, [], at=started
        )
        self.requests.append(record)
        try:
            response = await self._process(request, route, params, record)
        except DiscordHTTPError as err:
            self.http_errors.append((record, err))
            response = self._json(err.body(), err.status, err.headers)
            record.response = err.body()
        except Exception as exc:  # a bug in the fake: fail loudly
            log.exception("fakediscord handler crashed")
            self._problem("fake_bug", f"handler crashed: {exc!r}", method=method, path=path)
            response = self._json({"message": "500: Internal Server Error", "code": 0}, 500)
        record.status = response.status
        record.duration = time.monotonic() - started
        self._notify()
        return response

    async def _process(
        self,
        request: web.Request,
        route: _Route | None,
        params: dict[str, str],
        record: RequestRecord,
    ) -> web.StreamResponse:
        method, path = record.method, record.path
        if route is None:
            if self.spec is not None:
                tmpl = self._spec_template(method, path)
                hint = f" (spec operation {method} {tmpl})" if tmpl else " (not in Discord's spec)"
            else:
                hint = ""
            self._problem(
                "unknown_route", f"route not modelled by the fake{hint}", method=method, path=path
            )
            raise DiscordHTTPError(404, 0, "404: Not Found")

        if route.auth:
            auth = request.headers.get("Authorization")
            if auth != f"Bot {self.token}":
                raise DiscordHTTPError(401, 0, "401: Unauthorized")

        payload, files, body_error = await self._read_body(request)
        record.json = payload
        record.files = files
        info = RequestInfo(method, path, route.template, params, record.query, payload)

        # faults and rate limits come first, as on Discord's edge
        for fault in self.faults.take(info):
            if fault.kind == "delay":
                record.fault = f"delay {fault.delay}s"
                await asyncio.sleep(fault.delay)
            elif fault.kind == "rate_limit":
                record.fault = "429"
                body, headers = rate_limited_response(
                    f"fake-{abs(hash(route.template)) % 10**8:08d}",
                    fault.retry_after,
                    is_global=fault.is_global,
                    scope=fault.scope,
                )
                record.response = body
                return self._json(body, 429, headers)
            elif fault.kind == "error":
                record.fault = str(fault.status)
                record.response = fault.body
                return self._json(fault.body, fault.status)
        bucket_headers: dict[str, str] = {}
        for rule in self.rate_limits:
            if (rule.method is None or rule.method == method) and rule.template == route.template:
                allowed, remaining, reset_after, _ = rule.consume(info)
                if not allowed:
                    record.fault = "429 (bucket)"
                    body, headers = rate_limited_response(
                        f"fake-{abs(hash(route.template)) % 10**8:08d}",
                        reset_after,
                        is_global=False,
                        scope="user",
                        limit=rule.limit,
                    )
                    return self._json(body, 429, headers)
                bucket_headers = rate_limit_headers(
                    f"fake-{abs(hash(route.template)) % 10**8:08d}",
                    limit=rule.limit,
                    remaining=remaining,
                    reset_after=reset_after,
                )

        if body_error is not None:
            self._problem("spec", body_error, method=method, path=path, template=route.template)
            raise DiscordHTTPError(400, 50109, "The request body contains invalid JSON.")
        self._validate(method, route.template, path, payload, files)

        ctx = Ctx(
            request, method, path, route.template, params, record.query, payload, files, record
        )
        result = await route.handler(ctx)
        if isinstance(result, web.StreamResponse):
            return result
        status = 200
        if isinstance(result, tuple):
            result, status = result
        if result is None:
            return web.Response(status=204, headers=self._default_rl_headers(route, bucket_headers))
        record.response = result
        if self.validate_responses and self.spec is not None:
            check = self.spec.validate_response(method, route.template, status, result)
            if not check:
                self._problem(
                    "fake_bug",
                    "the fake's own answer does not match the spec (fix the fake)",
                    method=method,
                    path=path,
                    template=route.template,
                    errors=check.errors,
                )
        return self._json(result, status, self._default_rl_headers(route, bucket_headers))

    @staticmethod
    def _default_rl_headers(route: _Route, bucket_headers: dict[str, str]) -> dict[str, str]:
        if bucket_headers:
            return bucket_headers
        return rate_limit_headers(
            f"fake-{abs(hash(route.template)) % 10**8:08d}",
            limit=50,
            remaining=49,
            reset_after=1.0,
        )

    def _spec_template(self, method: str, path: str) -> str | None:
        if self.spec is None:
            return None
        best: tuple[int, str] | None = None
        for template, item in self.spec.paths.items():
            if method.lower() not in item:
                continue
            if _compile(template).match(path):
                n = template.count("{")
                if best is None or n < best[0]:
                    best = (n, template)
        return best[1] if best else None

    def _validate(
        self, method: str, template: str, path: str, payload: Any, files: list[UploadedFile]
    ) -> None:
        errors: list[FieldError] = []
        kind = "spec"
        if self.spec is not None:
            if not self.spec.has_operation(method, template):
                self._problem(
                    "fake_bug",
                    f"fake route {method} {template} is not in the spec",
                    method=method,
                    path=path,
                )
            elif payload is None and not files:
                if self.spec.request_body_required(method, template):
                    errors = [FieldError((), "BASE_TYPE_REQUIRED", "a request body is required")]
            elif payload is not None:
                errors = self.spec.validate_request(method, template, payload).errors
        if not errors:
            kind = "rule"
            errors = self._rule_errors(template, payload)
        if errors:
            self._problem(
                kind,
                "request body rejected (Discord would answer 400 Invalid Form Body)"
                if kind == "spec"
                else "request body breaks a Discord rule the spec does not encode",
                method=method,
                path=path,
                template=template,
                errors=errors,
                body=payload,
            )
            raise DiscordHTTPError(400, 50035, "Invalid Form Body", discord_error_tree(errors))

    @staticmethod
    def _rule_errors(template: str, payload: Any) -> list[FieldError]:
        if not isinstance(payload, dict):
            return []
        if template.startswith("/interactions/"):
            ctype = payload.get("type")
            data = payload.get("data")
            if ctype in (4, 7):
                return rules.check_message(data, ("data",))
            if ctype == 8:
                return rules.check_autocomplete(data, ("data",))
            return []
        if template.startswith(("/webhooks/", "/channels/{channel_id}/messages")):
            return rules.check_message(payload)
        return []

    # ----------------------------------------------------------------------------------
    # routes
    # ----------------------------------------------------------------------------------
    def _register_routes(self) -> None:
        r = self._route
        r("GET", "/users/@me", self._get_me, auth=False)
        r("GET", "/users/{user_id}", self._get_user)
        r("POST", "/users/@me/channels", self._create_dm)
        r("GET", "/gateway", self._get_gateway, auth=False)
        r("GET", "/gateway/bot", self._get_gateway_bot)
        r("GET", "/oauth2/applications/@me", self._get_application)
        r("GET", "/applications/@me", self._get_application)
        r("GET", "/applications/{application_id}/emojis", self._list_app_emojis)
        for base in (
            "/applications/{application_id}/commands",
            "/applications/{application_id}/guilds/{guild_id}/commands",
        ):
            r("GET", base, self._list_commands)
            r("PUT", base, self._bulk_commands)
            r("POST", base, self._create_command)
            r("GET", base + "/{command_id}", self._get_command)
            r("PATCH", base + "/{command_id}", self._edit_command)
            r("DELETE", base + "/{command_id}", self._delete_command)
        r(
            "GET",
            "/applications/{application_id}/guilds/{guild_id}/commands/permissions",
            self._command_permissions,
        )
        r(
            "POST",
            "/interactions/{interaction_id}/{interaction_token}/callback",
            self._interaction_callback,
            auth=False,
        )
        wh = "/webhooks/{webhook_id}/{webhook_token}"
        r("POST", wh, self._execute_webhook, auth=False)
        r("GET", wh + "/messages/@original", self._get_webhook_message, auth=False)
        r("PATCH", wh + "/messages/@original", self._edit_webhook_message, auth=False)
        r("DELETE", wh + "/messages/@original", self._delete_webhook_message, auth=False)
        r("GET", wh + "/messages/{message_id}", self._get_webhook_message, auth=False)
        r("PATCH", wh + "/messages/{message_id}", self._edit_webhook_message, auth=False)
        r("DELETE", wh + "/messages/{message_id}", self._delete_webhook_message, auth=False)
        r("GET", "/channels/{channel_id}", self._get_channel)
        r("GET", "/channels/{channel_id}/messages", self._list_messages)
        r("POST", "/channels/{channel_id}/messages", self._create_message)
        r("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message)
        r("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message)
        r("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_message)
        r("POST", "/channels/{channel_id}/typing", self._typing)
        react = "/channels/{channel_id}/messages/{message_id}/reactions/{emoji_name}"
        r("PUT", react + "/@me", self._add_reaction)
        r("DELETE", react + "/@me", self._remove_reaction)
        r("GET", "/guilds/{guild_id}", self._get_guild)
        r("GET", "/guilds/{guild_id}/channels", self._get_guild_channels)
        r("GET", "/guilds/{guild_id}/roles", self._get_guild_roles)
        r("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member)

    # -- users, gateway, application --------------------------------------------------------
    async def _get_me(self, ctx: Ctx) -> Any:
        auth = ctx.request.headers.get("Authorization", "")
        if auth == f"Bot {self.token}":
            return self.bot_user.pii_payload()
        user = self._oauth_tokens.get(auth.removeprefix("Bearer "))
        if not auth.startswith("Bearer ") or user is None:
            raise DiscordHTTPError(401, 0, "401: Unauthorized")
        return user.pii_payload()

    # -- OAuth2: the authorization-code grant, as "Log in with Discord" uses it ----------------
    async def _oauth_authorize(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        redirect = query.get("redirect_uri", "")
        if query.get("client_id") != str(self.application_id) or not redirect:
            return web.Response(status=400, text="Invalid OAuth2 redirect_uri or client_id")
        if query.get("response_type") != "code" or "identify" not in query.get("scope", ""):
            return web.Response(status=400, text="Invalid response_type or scope")
        state = query.get("state", "")
        if self.oauth_denies:
            target = URL(redirect).update_query(
                error="access_denied",
                error_description="The resource owner denied the request",
                state=state,
            )
        else:
            code = secrets.token_urlsafe(16)
            self._oauth_codes[code] = (self.oauth_user, redirect)
            target = URL(redirect).update_query(code=code, state=state)
        raise web.HTTPFound(str(target))

    async def _oauth_token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        client_ok = (
            form.get("client_id") == str(self.application_id)
            and form.get("client_secret") == self.oauth_secret
        )
        if not client_ok:
            return web.json_response({"error": "invalid_client"}, status=401)
        granted = self._oauth_codes.pop(str(form.get("code", "")), None)
        if (
            form.get("grant_type") != "authorization_code"
            or granted is None
            or granted[1] != form.get("redirect_uri")
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        token = secrets.token_urlsafe(24)
        self._oauth_tokens[token] = granted[0]
        return web.json_response(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 604800,
                "refresh_token": secrets.token_urlsafe(24),
                "scope": "identify",
            }
        )

    async def _get_user(self, ctx: Ctx) -> Any:
        user = self.users.get(int(ctx.params["user_id"]))
        if user is None:
            raise unknown("User")
        return user.payload()

    async def _create_dm(self, ctx: Ctx) -> Any:
        user = self.users.get(int((ctx.json or {}).get("recipient_id", 0)))
        if user is None:
            raise unknown("User")
        return self.dm_channel(user).payload()

    async def _get_gateway(self, ctx: Ctx) -> Any:
        return {"url": self.gateway_url}

    async def _get_gateway_bot(self, ctx: Ctx) -> Any:
        return {
            "url": self.gateway_url,
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 14400000,
                "max_concurrency": 1,
            },
        }

    async def _get_application(self, ctx: Ctx) -> Any:
        return {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "A fake application for tests",
            "summary": "",
            "type": None,
            "is_monetized": False,
            "is_verified": False,
            "is_discoverable": False,
            "hook": True,
            "storefront_available": False,
            "bot": self.bot_user.payload(),
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "flags": self.application_flags,
            "flags_new": str(self.application_flags),
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "owner": self.owner_user.payload(),
            "approximate_guild_count": len(self.guilds),
            "approximate_user_install_count": 0,
            "approximate_user_authorization_count": 0,
            "explicit_content_filter": 0,
            "team": None,
            "eligible_oauth2_scopes": ["bot", "applications.commands"],
            "rpc_origins": [],
            "tags": [],
            "install_params": {"scopes": ["bot", "applications.commands"], "permissions": "0"},
            "integration_types_config": {"0": {}},
        }

    async def _list_app_emojis(self, ctx: Ctx) -> Any:
        self._check_app(ctx)
        return {"items": []}

    # -- commands ------------------------------------------------------------------------
    def _check_app(self, ctx: Ctx) -> None:
        if ctx.params.get("application_id") != str(self.application_id):
            raise DiscordHTTPError(403, 50001, "Missing Access")

    def _scope(self, ctx: Ctx) -> int | None:
        self._check_app(ctx)
        gid = ctx.params.get("guild_id")
        if gid is None:
            return None
        if int(gid) not in self.guilds:
            raise DiscordHTTPError(403, 50001, "Missing Access")
        return int(gid)

    def _command_response(
        self, definition: dict[str, Any], cid: int, version: int, guild_id: int | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(cid),
            "application_id": str(self.application_id),
            "version": str(version),
            "type": definition.get("type") or 1,
            "name": definition["name"],
            "description": definition.get("description") or "",
            "default_member_permissions": (
                None
                if definition.get("default_member_permissions") is None
                else str(definition["default_member_permissions"])
            ),
            "nsfw": bool(definition.get("nsfw")),
            "integration_types": definition.get("integration_types") or [0],
            "contexts": definition.get("contexts"),
        }
        if guild_id is not None:
            out["guild_id"] = str(guild_id)
        else:
            out["dm_permission"] = definition.get("dm_permission", True) is not False
        options = definition.get("options")
        if options:
            out["options"] = _strip_none(options)
        for key in ("name_localizations", "description_localizations"):
            if definition.get(key):
                out[key] = definition[key]
        return out

    def _write_commands(
        self, scope: int | None, definitions: list[dict[str, Any]], method: str, payload: Any
    ) -> list[dict[str, Any]]:
        old_by_key = {
            (c.get("type") or 1, c["name"]): (c, d)
            for c, d in zip(
                self.commands.get(scope, []), self._command_defs.get(scope, []), strict=True
            )
        }
        new_commands = []
        for definition in definitions:
            key = (definition.get("type") or 1, definition["name"])
            old = old_by_key.get(key)
            if old is not None and _canon(old[1]) == _canon(definition):
                new_commands.append(old[0])
                continue
            cid = int(old[0]["id"]) if old else self.snowflake()
            new_commands.append(self._command_response(definition, cid, self.snowflake(), scope))
        changed = _canon(self._command_defs.get(scope, [])) != _canon(definitions)
        self.commands[scope] = new_commands
        self._command_defs[scope] = copy.deepcopy(definitions)
        self.command_syncs.append(
            CommandSync(scope, method, copy.deepcopy(payload), time.monotonic(), changed)
        )
        return new_commands

    async def _list_commands(self, ctx: Ctx) -> Any:
        return self.commands.get(self._scope(ctx), [])

    async def _bulk_commands(self, ctx: Ctx) -> Any:
        scope = self._scope(ctx)
        definitions = list(ctx.json or [])
        names = [(d.get("type") or 1, d.get("name")) for d in definitions]
        if len(set(names)) != len(names):
            raise DiscordHTTPError(
                400,
                50035,
                "Invalid Form Body",
                {
                    "_errors": [
                        {
                            "code": "APPLICATION_COMMANDS_DUPLICATE_NAME",
                            "message": "Application command names must be unique",
                        }
                    ]
                },
            )
        return self._write_commands(scope, definitions, "PUT", ctx.json)

    async def _create_command(self, ctx: Ctx) -> Any:
        scope = self._scope(ctx)
        body = dict(ctx.json or {})
        defs = [
            d
            for d in self._command_defs.get(scope, [])
            if (d.get("type") or 1, d["name"]) != (body.get("type") or 1, body["name"])
        ]
        commands = self._write_commands(scope, [*defs, body], "POST", body)
        created = next(c for c in commands if c["name"] == body["name"])
        return created, 201 if len(defs) == len(self._command_defs.get(scope, [])) else 200

    def _find_command(self, scope: int | None, command_id: str) -> int:
        for index, command in enumerate(self.commands.get(scope, [])):
            if command["id"] == command_id:
                return index
        raise unknown("application command")

    async def _get_command(self, ctx: Ctx) -> Any:
        scope = self._scope(ctx)
        return self.commands[scope][self._find_command(scope, ctx.params["command_id"])]

    async def _edit_command(self, ctx: Ctx) -> Any:
        scope = self._scope(ctx)
        index = self._find_command(scope, ctx.params["command_id"])
        defs = copy.deepcopy(self._command_defs[scope])
        defs[index].update(ctx.json or {})
        return self._write_commands(scope, defs, "PATCH", ctx.json)[index]

    async def _delete_command(self, ctx: Ctx) -> Any:
        scope = self._scope(ctx)
        index = self._find_command(scope, ctx.params["command_id"])
        defs = copy.deepcopy(self._command_defs[scope])
        del defs[index]
        self._write_commands(scope, defs, "DELETE", None)
        return None

    async def _command_permissions(self, ctx: Ctx) -> Any:
        self._scope(ctx)
        return []

    # -- guilds and channels ------------------------------------------------------------
    def _guild(self, ctx: Ctx) -> FakeGuild:
        guild = self.guilds.get(int(ctx.params["guild_id"]))
        if guild is None:
            raise unknown("Guild")
        return guild

    def _channel(self, ctx: Ctx) -> FakeChannel:
        channel = self.channels.get(int(ctx.params["channel_id"]))
        if channel is None:
            raise unknown("Channel")
        return channel

    def _bot_permissions(self, channel: FakeChannel) -> int:
        if channel.guild_id is None:
            return (
                Permissions.VIEW_CHANNEL
                | Permissions.SEND_MESSAGES
                | Permissions.EMBED_LINKS
                | Permissions.ATTACH_FILES
                | Permissions.READ_MESSAGE_HISTORY
                | Permissions.ADD_REACTIONS
            )
        return self.guilds[channel.guild_id].permissions_for(self.bot_user.id)

    def _require(self, channel: FakeChannel, *perms: int) -> None:
        have = self._bot_permissions(channel)
        if not have & Permissions.VIEW_CHANNEL:
            raise DiscordHTTPError(403, 50001, "Missing Access")
        for perm in perms:
            if not have & perm:
                raise DiscordHTTPError(403, 50013, "Missing Permissions")

    async def _get_guild(self, ctx: Ctx) -> Any:
        return self._guild(ctx).rest_payload(with_counts=ctx.flag("with_counts"))

    async def _get_guild_channels(self, ctx: Ctx) -> Any:
        guild = self._guild(ctx)
        return [c.payload() for c in guild.channels]

    async def _get_guild_roles(self, ctx: Ctx) -> Any:
        return [r.payload() for r in self._guild(ctx).roles]

    async def _get_member(self, ctx: Ctx) -> Any:
        guild = self._guild(ctx)
        member = guild.members.get(int(ctx.params["user_id"]))
        if member is None:
            raise unknown("Member")
        return member.payload()

    async def _get_channel(self, ctx: Ctx) -> Any:
        channel = self._channel(ctx)
        self._require(channel)
        return channel.payload()

    async def _typing(self, ctx: Ctx) -> Any:
        channel = self._channel(ctx)
        self._require(channel, Permissions.SEND_MESSAGES)
        return None

    # -- messages ------------------------------------------------------------------------
    def _channel_message(self, ctx: Ctx) -> StoredMessage:
        channel = self._channel(ctx)
        msg = self._messages.get(int(ctx.params["message_id"]))
        if msg is None or msg.deleted or msg.channel_id != channel.id or msg.ephemeral:
            raise unknown("Message")
        return msg

    async def _list_messages(self, ctx: Ctx) -> Any:
        channel = self._channel(ctx)
        self._require(channel, Permissions.READ_MESSAGE_HISTORY)
        limit = min(int(ctx.query.get("limit", 50)), 100)
        msgs = [m for m in self.messages(channel, include_ephemeral=False)]
        if "before" in ctx.query:
            msgs = [m for m in msgs if m.id < int(ctx.query["before"])]
        if "after" in ctx.query:
            msgs = [m for m in msgs if m.id > int(ctx.query["after"])]
            return [m.payload() for m in reversed(msgs[:limit])]
        return [m.payload() for m in reversed(msgs[-limit:])]

    async def _get_message(self, ctx: Ctx) -> Any:
        msg = self._channel_message(ctx)
        self._require(self.channels[msg.channel_id], Permissions.READ_MESSAGE_HISTORY)
        return msg.payload()

    async def _create_message(self, ctx: Ctx) -> Any:
        channel = self._channel(ctx)
        body = dict(ctx.json or {})
        perms = [Permissions.SEND_MESSAGES]
        if ctx.files:
            perms.append(Permissions.ATTACH_FILES)
        if body.get("embeds"):
            perms.append(Permissions.EMBED_LINKS)
        self._require(channel, *perms)
        if int(body.get("flags") or 0) & MessageFlags.EPHEMERAL:
            raise form_error(
                ("flags",),
                "MESSAGE_FLAGS_INVALID",
                "Ephemeral messages can only be sent in response to interactions.",
            )
        reference = body.get("message_reference")
        referenced = None
        if reference:
            referenced = self._messages.get(int(reference.get("message_id") or 0))
            if referenced is None or referenced.deleted:
                if reference.get("fail_if_not_exists", True):
                    raise form_error(
                        ("message_reference",),
                        "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                        "Unknown message",
                    )
                referenced = None
        msg = await self._new_message(
            channel,
            body,
            ctx.files,
            route=ctx.record.route,
            type_=19 if referenced is not None else 0,
        )
        if referenced is not None:
            msg.reply_to(referenced)
        await self._announce(msg, "MESSAGE_CREATE")
        return msg.payload()

    async def _edit_message(self, ctx: Ctx) -> Any:
        msg = self._channel_message(ctx)
        if msg.author.id != self.bot_user.id:
            raise DiscordHTTPError(403, 50005, "Cannot edit a message authored by another user")
        self._apply_edit(msg, dict(ctx.json or {}), ctx.files, ctx.record.route)
        await self._announce(msg, "MESSAGE_UPDATE")
        return msg.payload()

    async def _delete_message(self, ctx: Ctx) -> Any:
        msg = self._channel_message(ctx)
        channel = self.channels[msg.channel_id]
        if msg.author.id != self.bot_user.id:
            self._require(channel, Permissions.MANAGE_MESSAGES)
        await self._delete(msg)
        return None

    async def _add_reaction(self, ctx: Ctx) -> Any:
        msg = self._channel_message(ctx)
        self._require(
            self.channels[msg.channel_id],
            Permissions.ADD_REACTIONS,
            Permissions.READ_MESSAGE_HISTORY,
        )
        msg.reactions.setdefault(ctx.params["emoji_name"], set()).add(self.bot_user.id)
        return None

    async def _remove_reaction(self, ctx: Ctx) -> Any:
        msg = self._channel_message(ctx)
        msg.reactions.get(ctx.params["emoji_name"], set()).discard(self.bot_user.id)
        return None

    def expire_token(self, interaction: InteractionHandle | str) -> None:
        """Expire an interaction token now: webhook calls answer 401 (code 50027)."""
        if isinstance(interaction, str):
            interaction = self._interactions_by_token[interaction]
        interaction.expire()

    def delete_message(self, message: StoredMessage | int) -> None:
        """Delete a message as a user or moderator would (later edits get 404 10008)."""
        msg = message if isinstance(message, StoredMessage) else self._messages[int(message)]
        msg.deleted = True
        msg.deleted_at = time.monotonic()
        self._notify()

    async def create_channel(
        self, guild: FakeGuild, name: str, *, nsfw: bool = False
    ) -> FakeChannel:
        """Create a text channel as a server admin would: CHANNEL_CREATE on the gateway."""
        channel = self.add_channel(guild, name, nsfw=nsfw)
        data = {**channel.payload(), "guild_id": str(guild.id)}
        await self.gateway.broadcast(
            "CHANNEL_CREATE", data, intent=Intents.GUILDS, guild_id=guild.id
        )
        self._notify()
        return channel

    async def delete_channel(self, channel: FakeChannel) -> None:
        """Delete a channel as a server admin would: CHANNEL_DELETE on the gateway, its messages
        gone (webhook edits get 404 10008), and every channel route 404 10003."""
        for message_id in self._channel_messages.get(channel.id, []):
            self._messages[message_id].deleted = True
        self.channels.pop(channel.id, None)
        if channel.guild_id is not None:
            guild = self.guilds[channel.guild_id]
            guild.channels = [c for c in guild.channels if c.id != channel.id]
            data = {**channel.payload(), "guild_id": str(channel.guild_id)}
            await self.gateway.broadcast(
                "CHANNEL_DELETE", data, intent=Intents.GUILDS, guild_id=channel.guild_id
            )
        self._notify()

    async def _delete(self, msg: StoredMessage) -> None:
        msg.deleted = True
        msg.deleted_at = time.monotonic()
        if not msg.ephemeral:
            data: dict[str, Any] = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
            if msg.guild_id is not None:
                data["guild_id"] = str(msg.guild_id)
            await self._broadcast_message_event("MESSAGE_DELETE", data, msg)
        self._notify()

    async def _announce(self, msg: StoredMessage, event: str) -> None:
        if msg.ephemeral:
            return
        await self._broadcast_message_event(event, msg.payload(include_guild=True), msg)

    async def _broadcast_message_event(
        self, event: str, data: dict[str, Any], msg: StoredMessage
    ) -> None:
        if not self.dispatch_message_events:
            return
        intent = Intents.GUILD_MESSAGES if msg.guild_id is not None else Intents.DIRECT_MESSAGES
        session = self.gateway.session_for_guild(msg.guild_id)
        if (
            session is not None
            and not session.intents & Intents.MESSAGE_CONTENT
            and not self._content_visible(msg)
        ):
            # Discord's rule for bots without the privileged intent: a guild message's
            # content reaches them only when it is theirs or mentions them.
            data = {**data, "content": "", "embeds": [], "attachments": [], "components": []}
        await self.gateway.broadcast(event, data, intent=intent, guild_id=msg.guild_id)

    def _content_visible(self, msg: StoredMessage) -> bool:
        bot_id = self.bot_user.id
        return (
            msg.guild_id is None
            or msg.author.id == bot_id
            or any(user.id == bot_id for user in msg.mentions)
        )

    def _make_attachments(
        self,
        channel: FakeChannel,
        body: dict[str, Any],
        files: list[UploadedFile],
        existing: list[StoredAttachment],
        ephemeral: bool,
    ) -> list[StoredAttachment]:
        total = sum(len(f.data) for f in files)
        if total > self.upload_limit:
            self._problem(
                "rule",
                f"upload of {total} bytes is over the {self.upload_limit}-byte limit",
                body=[f.filename for f in files],
            )
            raise DiscordHTTPError(413, 40005, "Request entity too large")
        by_index: dict[int, UploadedFile] = {}
        for position, f in enumerate(files):
            m = re.fullmatch(r"files\[(\d+)\]", f.field_name)
            by_index[int(m.group(1)) if m else position] = f
        used: set[int] = set()

        def stored(index: int, f: UploadedFile, meta: dict[str, Any]) -> StoredAttachment:
            aid = self.snowflake()
            filename = meta.get("filename") or f.filename
            if ephemeral:
                url = (
                    f"{self.url}/ephemeral-attachments/{self.application_id}/{aid}/"
                    f"{quote(filename)}"
                )
            else:
                url = f"{self.url}/attachments/{channel.id}/{aid}/{quote(filename)}"
            att = StoredAttachment(
                id=aid,
                filename=filename,
                data=f.data,
                content_type=guess_content_type(filename),
                url=url,
                description=meta.get("description"),
                ephemeral=ephemeral,
            )
            self._attachments[aid] = att
            used.add(index)
            return att

        result: list[StoredAttachment]
        listed = body.get("attachments")
        if listed is not None:
            result = []
            for position, item in enumerate(listed or []):
                ident = int(item.get("id"))
                keep = next((a for a in existing if a.id == ident), None)
                if keep is not None:
                    result.append(keep)
                elif ident in by_index:
                    result.append(stored(ident, by_index[ident], item))
                else:
                    raise form_error(
                        ("attachments", position, "id"),
                        "ATTACHMENT_NOT_FOUND",
                        "Unknown attachment; neither kept nor uploaded",
                    )
        else:
            result = list(existing)
        for index, f in sorted(by_index.items()):
            if index not in used:
                result.append(stored(index, f, {}))
        if len(result) > 10:
            raise form_error(
                ("attachments",), "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."
            )
        return result

    @staticmethod
    def _normalize_components(components: list[Any]) -> list[dict[str, Any]]:
        counter = [0]

        def norm(comp: Any) -> Any:
            if not isinstance(comp, dict):
                return comp
            out = {}
            for key, value in comp.items():
                if value is None and key != "id":
                    continue
                if key == "emoji" and isinstance(value, dict):
                    out[key] = {
                        k: v for k, v in value.items() if v is not None and (k != "animated" or v)
                    }
                    continue
                if key in ("components",) and isinstance(value, list):
                    out[key] = [norm(c) for c in value]
                elif key in ("accessory", "component") and isinstance(value, dict):
                    out[key] = norm(value)
                else:
                    out[key] = copy.deepcopy(value)
            counter[0] += 1
            if out.get("id") is None:
                out["id"] = counter[0]
            if out.get("type") in (3, 5, 6, 7, 8):
                out.setdefault("min_values", 1)
                out.setdefault("max_values", 1)
                if out.get("type") == 3:
                    out.setdefault("options", [])
            return out

        return [norm(c) for c in components]

    @staticmethod
    def _is_empty(msg: StoredMessage) -> bool:
        return not (msg.content or msg.embeds or msg.attachments or msg.components)

    async def _new_message(
        self,
        channel: FakeChannel,
        body: dict[str, Any],
        files: list[UploadedFile],
        *,
        route: str,
        type_: int,
        interaction: InteractionHandle | None = None,
        allow_ephemeral: bool = False,
        loading: bool = False,
    ) -> StoredMessage:
        flags_in = int(body.get("flags") or 0)
        allowed = (
            MessageFlags.SUPPRESS_EMBEDS
            | MessageFlags.SUPPRESS_NOTIFICATIONS
            | MessageFlags.IS_COMPONENTS_V2
        )
        if allow_ephemeral:
            allowed |= MessageFlags.EPHEMERAL
        flags = flags_in & allowed
        if loading:
            flags |= MessageFlags.LOADING
        ephemeral = bool(flags & MessageFlags.EPHEMERAL)
        msg = StoredMessage(
            id=self.snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=self.bot_user,
            content=body.get("content") or "",
            embeds=list(body.get("embeds") or []),
            components=self._normalize_components(body.get("components") or []),
            flags=flags,
            type=type_,
            tts=bool(body.get("tts")),
        )
        msg.attachments = self._make_attachments(channel, body, files, [], ephemeral)
        if channel.guild_id is not None:
            msg.member = self.guilds[channel.guild_id].members.get(self.bot_user.id)
        if interaction is not None:
            msg.webhook_id = self.application_id
            msg.application_id = self.application_id
            msg.interaction_id = interaction.id
            msg.interaction_metadata = self._interaction_metadata(interaction)
        if not loading and self._is_empty(msg):
            raise DiscordHTTPError(400, 50006, "Cannot send an empty message")
        msg.snapshot(route)
        self._messages[msg.id] = msg
        self._channel_messages.setdefault(channel.id, []).append(msg.id)
        channel.last_message_id = msg.id
        self._notify()
        return msg

    def _interaction_metadata(self, ix: InteractionHandle) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": str(ix.id),
            "type": ix.type,
            "user": ix.user.payload(),
            "authorizing_integration_owners": ix.payload.get("authorizing_integration_owners", {}),
        }
        if ix.type == 2:
            meta["name"] = ix.name
            meta["command_type"] = (ix.payload.get("data") or {}).get("type", 1)
        if ix.type == 3 and ix.message is not None:
            meta["interacted_message_id"] = str(ix.message.id)
        if ix.type == 5:
            meta["triggering_interaction_metadata"] = {
                "id": str(ix.id),
                "type": 2,
                "user": ix.user.payload(),
                "authorizing_integration_owners": meta["authorizing_integration_owners"],
            }
        if ix.original_message_id is not None and ix.original_created:
            meta["original_response_message_id"] = str(ix.original_message_id)
        return meta

    def _apply_edit(
        self, msg: StoredMessage, body: dict[str, Any], files: list[UploadedFile], route: str
    ) -> None:
        channel = self.channels[msg.channel_id]
        before = (msg.content, msg.embeds, msg.components, msg.attachments, msg.flags)
        if "content" in body:
            msg.content = body["content"] or ""
        if "embeds" in body:
            msg.embeds = list(body["embeds"] or [])
        if "components" in body:
            msg.components = self._normalize_components(body["components"] or [])
        if body.get("flags") is not None:
            changeable = MessageFlags.SUPPRESS_EMBEDS | MessageFlags.IS_COMPONENTS_V2
            msg.flags = (
                (msg.flags & ~changeable & ~MessageFlags.LOADING)
                | (int(body["flags"]) & changeable)
                | (msg.flags & MessageFlags.IS_COMPONENTS_V2)
            )
        msg.attachments = self._make_attachments(
            channel, body, files, msg.attachments, msg.ephemeral
        )
        if self._is_empty(msg):
            msg.content, msg.embeds, msg.components, msg.attachments, msg.flags = before
            raise DiscordHTTPError(400, 50006, "Cannot send an empty message")
        msg.flags &= ~MessageFlags.LOADING
        msg.edited_at = datetime.now(UTC)
        msg.snapshot(route)
        self._notify()

    # -- interactions ---------------------------------------------------------------------
    def _interaction_for_webhook(self, ctx: Ctx) -> InteractionHandle:
        if ctx.params["webhook_id"] != str(self.application_id):
            raise unknown("Webhook")
        ix = self._interactions_by_token.get(ctx.params["webhook_token"])
        if ix is None or ix.expired:
            raise DiscordHTTPError(401, 50027, "Invalid Webhook Token")
        return ix

    def _webhook_target(self, ctx: Ctx, ix: InteractionHandle) -> StoredMessage:
        mid = ctx.params.get("message_id")
        if mid is None or ctx.path.endswith("/messages/@original"):
            if ix.original_message_id is None:
                raise unknown("Message")
            msg = self._messages.get(ix.original_message_id)
        else:
            msg = self._messages.get(int(mid))
            allowed = set(ix.followup_ids)
            if ix.original_message_id is not None:
                allowed.add(ix.original_message_id)
            if msg is not None and msg.id not in allowed:
                msg = None
        if msg is None or msg.deleted:
            raise unknown("Message")
        return msg

    async def _interaction_callback(self, ctx: Ctx) -> Any:
        ix = self.interactions.get(int(ctx.params["interaction_id"]))
        if ix is None or ix.token != ctx.params["interaction_token"]:
            raise unknown("interaction")
        elapsed = time.monotonic() - ix.created_at
        if ix.callbacks:
            ix.rejected_callbacks.append("already acknowledged")
            self._problem(
                "protocol",
                f"{ix!r} acknowledged twice (Discord answers 40060)",
                method=ctx.method,
                path=ctx.path,
            )
            raise DiscordHTTPError(400, 40060, "Interaction has already been acknowledged.")
        if elapsed > self.ack_deadline or ix.expired:
            ix.rejected_callbacks.append(f"late: {elapsed:.2f}s")
            self._problem(
                "protocol",
                f"{ix!r} acknowledged after {elapsed:.2f} s (deadline {self.ack_deadline:g} s):"
                " the user saw 'The application did not respond'",
                method=ctx.method,
                path=ctx.path,
            )
            raise unknown("interaction")
        body = ctx.json or {}
        ctype = int(body.get("type", 0))
        data = body.get("data") or {}
        valid = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}.get(ix.type, set())
        if ix.type == 5 and ix.message is None:
            valid = {4, 5}
        if ctype not in valid:
            self._problem(
                "protocol",
                f"callback type {ctype} is not valid for interaction type {ix.type}",
                method=ctx.method,
                path=ctx.path,
                body=body,
            )
            raise form_error(
                ("type",),
                "INTERACTION_CALLBACK_TYPE_INVALID",
                "Interaction callback type is not valid for this interaction",
            )
        channel = ix.channel
        message: StoredMessage | None = None
        record = CallbackRecord(type=ctype, data=data or None, at=time.monotonic(), latency=elapsed)
        if ctype in (4, 5):
            message = await self._new_message(
                channel,
                data if ctype == 4 else {"flags": data.get("flags")},
                ctx.files,
                route=ctx.record.route,
                type_=_response_message_type(ix),
                interaction=ix,
                allow_ephemeral=True,
                loading=ctype == 5,
            )
            ix.original_message_id = message.id
            ix.original_created = True
            message.interaction_metadata = self._interaction_metadata(ix)
            if ix.type == 3 and ix.message is not None:
                # Discord shows an answer to a button as a reply to the button's message.
                message.reply_to(ix.message)
        elif ctype in (6, 7):
            assert ix.message is not None
            ix.original_message_id = ix.message.id
            if ctype == 7:
                self._apply_edit(ix.message, data, ctx.files, ctx.record.route)
                message = ix.message
        elif ctype == 8:
            ix.choices = list(data.get("choices") or [])
        elif ctype == 9:
            ix.modal = data
        record.files = list(message.attachments) if message is not None and ctx.files else []
        ix.callbacks.append(record)
        if message is not None and ctype in (4, 5):
            await self._announce(message, "MESSAGE_CREATE")
        elif message is not None:
            await self._announce(message, "MESSAGE_UPDATE")
        self._notify()
        if not ctx.flag("with_response"):
            return None
        info: dict[str, Any] = {"id": str(ix.id), "type": ix.type}
        if ix.guild is not None:
            info["guild_id"] = str(ix.guild.id)
        info["channel_id"] = str(channel.id)
        if message is not None:
            info["response_message_id"] = str(message.id)
            info["response_message_loading"] = message.loading
            info["response_message_ephemeral"] = message.ephemeral
        elif ctype == 6 and ix.message is not None:
            info["response_message_id"] = str(ix.message.id)
            info["response_message_loading"] = False
            info["response_message_ephemeral"] = ix.message.ephemeral
        out: dict[str, Any] = {"interaction": info}
        if ctype in (4, 7) and message is not None:
            out["resource"] = {"type": ctype, "message": message.payload()}
        return out

    async def _execute_webhook(self, ctx: Ctx) -> Any:
        ix = self._interaction_for_webhook(ctx)
        if not ix.callbacks:
            raise unknown("Webhook")
        body = dict(ctx.json or {})
        loading = self._messages.get(ix.original_message_id or 0)
        if ix.original_created and loading is not None and loading.loading and not loading.deleted:
            # The first followup after a "thinking" defer replaces the loading message (and
            # keeps the ephemeral choice made when deferring).
            self._apply_edit(loading, body, ctx.files, ctx.record.route)
            ix.followup_ids.append(loading.id)
            await self._announce(loading, "MESSAGE_UPDATE")
            return loading.payload() if ctx.flag("wait") else None
        msg = await self._new_message(
            ix.channel,
            body,
            ctx.files,
            route=ctx.record.route,
            type_=20 if ix.type == 2 else 0,
            interaction=ix,
            allow_ephemeral=True,
        )
        ix.followup_ids.append(msg.id)
        await self._announce(msg, "MESSAGE_CREATE")
        if ctx.flag("wait"):
            return msg.payload()
        return None

    async def _get_webhook_message(self, ctx: Ctx) -> Any:
        ix = self._interaction_for_webhook(ctx)
        return self._webhook_target(ctx, ix).payload()

    async def _edit_webhook_message(self, ctx: Ctx) -> Any:
        ix = self._interaction_for_webhook(ctx)
        msg = self._webhook_target(ctx, ix)
        self._apply_edit(msg, dict(ctx.json or {}), ctx.files, ctx.record.route)
        await self._announce(msg, "MESSAGE_UPDATE")
        return msg.payload()

    async def _delete_webhook_message(self, ctx: Ctx) -> Any:
        ix = self._interaction_for_webhook(ctx)
        msg = self._webhook_target(ctx, ix)
        await self._delete(msg)
        return None

    # hooks used by the driver
    def _register_interaction(self, handle: InteractionHandle) -> None:
        self.interactions[handle.id] = handle
        self._interactions_by_token[handle.token] = handle

    def _new_token(self) -> str:
        return "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)


def _discord_shaped_token(user_id: int) -> str:
    """``base64(user id).timestamp.hmac``, like a real bot token (bots validate the shape)."""
    head = base64.urlsafe_b64encode(str(user_id).encode()).decode().rstrip("=")
    return f"{head}.ZmFrZQ.{secrets.token_urlsafe(27)}"


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _canon(value: Any) -> str:
    return json.dumps(_strip_none(value), sort_keys=True)


def _response_message_type(ix: InteractionHandle) -> int:
    """The message type Discord gives an interaction's response: CHAT_INPUT_COMMAND (20) for a
    slash command, REPLY (19) for a button on a message, DEFAULT (0) otherwise."""
    if ix.type == 2:
        return 20
    if ix.type == 3 and ix.message is not None:
        return 19
    return 0
