"""The fake Discord, proven with a small throwaway discord.py bot defined here.

The same file runs that bot as a separate process (``python tests/test_fakediscord.py``),
configured only by environment variables, the way ``python -m bot`` is run against the fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import struct
import zlib
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
import yarl
from discord import app_commands
from discord.ext import commands
from fakediscord import (
    CommandRejected,
    FakeDiscord,
    MessageFlags,
    Routes,
    StoredMessage,
    spec_unavailable_reason,
)
from fakediscord.plugin import requires_spec
from fakediscord.process import start_bot_process
from fakediscord.rules import check_message
from fakediscord.spec import SPEC_ENV_VAR, OpenAPISpec

pytestmark = pytest.mark.asyncio

MODELS = ["tiny-sd15", "tiny-sdxl", "noise"]


# ---------------------------------------------------------------------------------------
# The throwaway bot
# ---------------------------------------------------------------------------------------
def tiny_png(width: int = 4, height: int = 3) -> bytes:
    """A valid grey PNG, written by hand (no Pillow needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class DemoAction(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"demo:v1:(?P<job>[0-9]+):(?P<action>[a-z]+)",
):
    """A restart-proof button: the custom_id carries the job and the action."""

    def __init__(self, job: int, action: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=None if action == "reroll" else action.title(),
                emoji="🔄" if action == "reroll" else None,
                style=discord.ButtonStyle.secondary,
                custom_id=f"demo:v1:{job}:{action}",
            )
        )
        self.job = job
        self.action = action

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: Any,
    ) -> DemoAction:
        return cls(int(match["job"]), match["action"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        interaction.client.clicks.append((self.job, self.action, interaction.user.id))
        await interaction.response.send_message(f"{self.action} of job {self.job}", ephemeral=True)


class SixInARow(discord.ui.View):
    """Deliberately wrong: six buttons in one action row (Discord allows five)."""

    def to_components(self) -> list[dict[str, Any]]:
        buttons = [
            {"type": 2, "style": 2, "label": str(i), "custom_id": f"six:{i}"} for i in range(6)
        ]
        return [{"type": 1, "components": buttons}]


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    text: discord.ui.TextInput[FeedbackModal] = discord.ui.TextInput(
        label="What do you think?", custom_id="feedback:text", max_length=200
    )

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.send_message(f"thanks: {self.text.value}", ephemeral=True)


class DemoBot(commands.Bot):
    def __init__(self, guild_id: int, **options: Any) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            **options,
        )
        self.guild_id = guild_id
        self.clicks: list[tuple[int, str, int]] = []
        self.interactions: list[discord.Interaction[Any]] = []
        self.late_errors: list[discord.NotFound] = []
        self.jobs = 0

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before re-IDENTIFYing; not needed against the fake."""

    async def setup_hook(self) -> None:
        self.add_dynamic_items(DemoAction)
        guild = discord.Object(self.guild_id)
        for command in (draw, describe, bad, feedback, slow, purge, think, quota):
            self.tree.add_command(command, guild=guild)
        await self.tree.sync(guild=guild)


@app_commands.command()
@app_commands.describe(prompt="What to draw", model="Which model", count="How many images")
async def draw(
    interaction: discord.Interaction[DemoBot],
    prompt: str,
    model: str = "tiny-sd15",
    count: app_commands.Range[int, 1, 4] = 1,
) -> None:
    """Draw something (a grey square)."""
    bot = interaction.client
    bot.interactions.append(interaction)
    await interaction.response.defer(thinking=True)
    bot.jobs += 1
    job = bot.jobs
    view = discord.ui.View(timeout=None)
    view.add_item(DemoAction(job, "upscale"))
    view.add_item(DemoAction(job, "reroll"))
    await interaction.edit_original_response(
        content=f"**{prompt}** ({model}, {count} image(s))",
        attachments=[discord.File(io.BytesIO(tiny_png()), filename="grid.png")],
        view=view,
    )


@draw.autocomplete("model")
async def draw_model(
    interaction: discord.Interaction[DemoBot], current: str
) -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=m, value=m) for m in MODELS if current in m]


@app_commands.command()
async def describe(interaction: discord.Interaction[DemoBot], image: discord.Attachment) -> None:
    """Download an attachment and report on it."""
    data = await image.read()
    kind = "png" if data.startswith(b"\x89PNG") else "not an image"
    await interaction.response.send_message(
        f"{image.filename}: {len(data)} bytes, {kind}", ephemeral=True
    )


@app_commands.command()
@app_commands.choices(
    kind=[app_commands.Choice(name=k, value=k) for k in ("custom_id", "content", "row")]
)
async def bad(interaction: discord.Interaction[DemoBot], kind: str) -> None:
    """Send a payload Discord refuses."""
    if kind == "custom_id":
        view = discord.ui.View()
        view.add_item(discord.ui.Button(label="x", custom_id="x" * 101))
        await interaction.response.send_message("too long an id", view=view)
    elif kind == "content":
        await interaction.response.send_message("y" * 2001)
    else:
        await interaction.response.send_message("six", view=SixInARow())


quota = app_commands.Group(name="quota", description="Quotas")


@quota.command(name="show")
async def quota_show(
    interaction: discord.Interaction[DemoBot], user: discord.Member | None = None
) -> None:
    """Show a user's quota."""
    who = user or interaction.user
    await interaction.response.send_message(f"quota of {who.name} ({who.id})", ephemeral=True)


@app_commands.command()
async def think(interaction: discord.Interaction[DemoBot]) -> None:
    """Defer privately, then answer with followups."""
    await interaction.response.defer(thinking=True, ephemeral=True)
    await interaction.followup.send("first")
    await interaction.followup.send("second", ephemeral=True)


@app_commands.command()
async def slow(interaction: discord.Interaction[DemoBot], seconds: float) -> None:
    """Answer after a delay (too late, if the delay is over the ack deadline)."""
    await asyncio.sleep(seconds)
    try:
        await interaction.response.send_message("finally")
    except discord.NotFound as exc:
        interaction.client.late_errors.append(exc)


@app_commands.command()
@app_commands.default_permissions(manage_guild=True)
async def purge(interaction: discord.Interaction[DemoBot]) -> None:
    """A moderator command."""
    await interaction.response.send_message("purged", ephemeral=True)


@app_commands.command()
async def feedback(interaction: discord.Interaction[DemoBot]) -> None:
    """Open a modal."""
    await interaction.response.send_modal(FeedbackModal())


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------
@pytest_asyncio.fixture
async def bot(fake_discord: FakeDiscord, run_discord_client: Any) -> DemoBot:
    client = DemoBot(fake_discord.guild.id)
    await run_discord_client(client)
    return client


async def finished_draw(fake: FakeDiscord, prompt: str = "a cat") -> tuple[Any, StoredMessage]:
    ix = await fake.send_slash_command("draw", {"prompt": prompt})
    await ix.response()
    msg = await ix.wait_for_original(lambda m: m.attachments, timeout=5)
    return ix, msg


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------
async def test_login_ready_and_guild_create(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    assert bot.user is not None and bot.user.id == fake.bot_user.id
    assert bot.application_id == fake.application_id
    guild = bot.get_guild(fake.guild.id)
    assert guild is not None
    assert {c.name for c in guild.text_channels} == {"general", "art"}
    assert guild.member_count == 5
    alice = await guild.fetch_member(fake.alice.id)  # no members intent: not cached
    assert alice.name == "alice" and alice.roles == [guild.default_role]
    moderator = await guild.fetch_member(fake.moderator.id)
    assert moderator.guild_permissions.manage_guild
    assert guild.me.guild_permissions.attach_files
    assert not guild.me.guild_permissions.manage_guild
    session = fake.session
    assert session is not None and session.event_names()[:2] == ["READY", "GUILD_CREATE"]
    assert not session.intents & (1 << 1 | 1 << 8 | 1 << 15), "no privileged intents"
    assert session.conn is not None and session.conn.encoder.name in ("zlib-stream", "zstd-stream")
    assert session.conn.heartbeats >= 1
    assert [r.status for r in fake.requests_to(Routes.USERS_ME)] == [200]


async def test_command_sync_is_recorded(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    assert fake.sync_count(fake.guild) == 1
    assert fake.sync_count(None) == 0
    names = {c["name"] for c in fake.registered_commands(fake.guild)}
    assert names == {"draw", "describe", "bad", "feedback", "slow", "purge", "think", "quota"}
    first = fake.command_syncs[0]
    assert first.changed
    await bot.tree.sync(guild=discord.Object(fake.guild.id))
    assert fake.sync_count(fake.guild) == 2
    assert not fake.command_syncs[-1].changed, "same definitions: a sync that changed nothing"


async def test_slash_command_defer_then_edit_with_png_and_button(
    fake_discord: FakeDiscord, bot: DemoBot
) -> None:
    fake = fake_discord
    ix = await fake.send_slash_command("draw", {"prompt": "a cat", "count": 2})
    ack = await ix.response(timeout=3)
    assert ack.type_name == "DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE"
    assert ack.latency < 3
    msg = await ix.wait_for_original(lambda m: m.attachments, timeout=5)
    assert msg.content == "**a cat** (tiny-sd15, 2 image(s))"
    assert not msg.loading and not msg.ephemeral
    att = msg.attachment("grid.png")
    assert att.is_png() and att.content_type == "image/png"
    assert msg.button_labels == ["Upscale", "🔄"]
    assert all(len(b["custom_id"]) <= 100 for b in msg.buttons)
    assert [v.route for v in msg.edits] == [Routes.EDIT_ORIGINAL]
    assert msg.versions[0].flags & MessageFlags.LOADING
    # the bytes are served like Discord's CDN, so a bot can download them
    async with aiohttp.ClientSession() as http, http.get(att.url) as resp:
        assert resp.status == 200
        assert await resp.read() == att.data
    assert "MESSAGE_UPDATE" in fake.session.event_names()  # type: ignore[union-attr]
    assert len(msg.edit_times) == 1 and msg.min_edit_interval() is None
    # a followup through the interaction webhook, and a reply through the channel
    interaction = bot.interactions[-1]
    await interaction.followup.send("more to come", ephemeral=True)
    followup = await ix.wait_for_followup(timeout=3)
    assert followup.content == "more to come" and followup.ephemeral
    channel = bot.get_channel(fake.channel.id)
    assert isinstance(channel, discord.TextChannel)
    await channel.send(
        "a reply", reference=discord.MessageReference(message_id=msg.id, channel_id=fake.channel.id)
    )
    reply = fake.last_message(fake.channel)
    assert reply is not None and reply.type == 19 and reply.referenced_message is msg
    assert [m.content for m in fake.messages(fake.channel, include_ephemeral=False)] == [
        msg.content,
        "a reply",
    ]


async def test_button_click_reaches_the_client(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    _, msg = await finished_draw(fake)
    click = await fake.click_button(msg, label="Upscale", user=fake.bob)
    reply = await click.wait_for_original(timeout=3)
    assert reply.content == "upscale of job 1" and reply.ephemeral
    reroll = await fake.click_button(msg, emoji="🔄")
    await reroll.response()
    assert bot.clicks == [(1, "upscale", fake.bob.id), (1, "reroll", fake.alice.id)]


async def test_autocomplete_returns_choices(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    choices = await fake_discord.autocomplete("draw", {"prompt": "x", "model": "tiny"})
    assert [c["value"] for c in choices] == ["tiny-sd15", "tiny-sdxl"]


async def test_attachment_option_is_downloadable(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    ix = await fake.send_slash_command("describe", {"image": fake.upload("in.png", tiny_png())})
    reply = await ix.wait_for_original(timeout=3)
    assert reply.content.startswith("in.png:") and reply.content.endswith("png")
    ix = await fake.send_slash_command("describe", {"image": ("notes.txt", b"hello")})
    reply = await ix.wait_for_original(timeout=3)
    assert reply.content == "notes.txt: 5 bytes, not an image"


async def test_driver_refuses_what_the_discord_client_would(
    fake_discord: FakeDiscord, bot: DemoBot
) -> None:
    fake = fake_discord
    with pytest.raises(CommandRejected, match="must be <= 4"):
        await fake.send_slash_command("draw", {"prompt": "x", "count": 5})
    with pytest.raises(CommandRejected, match="needs option"):
        await fake.send_slash_command("draw", {})
    with pytest.raises(CommandRejected, match="not registered"):
        await fake.send_slash_command("nope")


async def test_subcommand_with_a_user_option(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    ix = await fake.send_slash_command("quota show", {"user": fake.bob}, user=fake.moderator)
    reply = await ix.wait_for_original(timeout=3)
    assert reply.content == f"quota of bob ({fake.bob.id})"
    ix = await fake.send_slash_command("quota", subcommand="show")
    assert (await ix.wait_for_original(timeout=3)).content.startswith("quota of alice")
    with pytest.raises(CommandRejected, match="no subcommand"):
        await fake.send_slash_command("quota", subcommand="reset")


async def test_modal_submit(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    opened = await fake.send_slash_command("feedback")
    modal = await opened.wait_for_modal()
    assert modal["title"] == "Feedback"
    submitted = await fake.submit_modal(opened, {"feedback:text": "lovely"})
    reply = await submitted.wait_for_original(timeout=3)
    assert reply.content == "thanks: lovely"


async def test_rate_limited_edit_is_retried(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    fake.faults.rate_limit(Routes.EDIT_ORIGINAL, retry_after=0.3)
    _, msg = await finished_draw(fake)
    assert [r.status for r in fake.requests_to(Routes.EDIT_ORIGINAL)] == [429, 200]
    assert msg.attachment("grid.png").is_png()


async def test_server_error_then_success(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    fake.faults.server_error(Routes.EDIT_ORIGINAL)
    await finished_draw(fake)
    assert [r.status for r in fake.requests_to(Routes.EDIT_ORIGINAL)] == [500, 200]


async def test_slow_answer_still_lands(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    fake.faults.delay(Routes.EDIT_ORIGINAL, 0.4)
    await finished_draw(fake)
    (edit,) = fake.requests_to(Routes.EDIT_ORIGINAL)
    assert edit.duration is not None and edit.duration >= 0.4


async def test_forbidden_and_deleted_message(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    channel = bot.get_channel(fake.channel.id)
    assert isinstance(channel, discord.TextChannel)
    fake.faults.missing_permissions(Routes.CREATE_MESSAGE)
    with pytest.raises(discord.Forbidden) as forbidden:
        await channel.send("hello")
    assert forbidden.value.code == 50013
    sent = await channel.send("hello again")
    stored = fake.get_message(sent.id)
    assert stored is not None and stored.content == "hello again"
    fake.delete_message(stored)  # a moderator deletes it
    with pytest.raises(discord.NotFound) as gone:
        await sent.edit(content="edited")
    assert gone.value.code == 10008


async def test_gateway_disconnect_then_resume(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    session = fake.session
    assert session is not None
    await fake.disconnect_gateway(code=4000)
    await fake.wait_for_resume(after=0, timeout=5)
    assert fake.session is session and fake.gateway.close_codes_sent == [4000]
    # A dropped socket (no close frame); the interaction sent meanwhile is replayed on RESUME.
    await fake.disconnect_gateway(code=None)
    ix = await fake.send_slash_command("draw", {"prompt": "after drop"}, wait_connected=False)
    await fake.wait_for_resume(after=1, timeout=5)
    await ix.response(timeout=3)
    msg = await ix.wait_for_original(lambda m: m.attachments, timeout=5)
    assert msg.content.startswith("**after drop**")
    assert session.resume_count == 2 and len(fake.sessions) == 1
    # An invalidated session cannot be resumed: the client identifies again.
    await fake.disconnect_gateway(code=4000, invalidate=True)
    await fake.wait_for(
        lambda: len(fake.sessions) == 2 and fake.sessions[1].connected,
        timeout=5,
        description="a new session",
    )
    ix = await fake.send_slash_command("describe", {"image": ("a.txt", b"abc")})
    assert (await ix.wait_for_original(timeout=3)).content == "a.txt: 3 bytes, not an image"


async def test_expired_token_answers_401(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    ix, _ = await finished_draw(fake)
    fake.expire_token(ix)  # or ix.expire(): as if 15 minutes had passed
    with pytest.raises(discord.HTTPException) as excinfo:
        await bot.interactions[-1].edit_original_response(content="too late")
    assert excinfo.value.status == 401 and excinfo.value.code == 50027
    assert fake.requests_to(Routes.EDIT_ORIGINAL)[-1].status == 401
    # the fallback a bot uses for jobs that outlive the token: edit through the channel
    channel = bot.get_channel(fake.channel.id)
    assert isinstance(channel, discord.TextChannel)
    assert ix.original is not None
    await channel.get_partial_message(ix.original.id).edit(content="delivered late")
    assert ix.original.content == "delivered late"
    assert ix.original.edits[-1].route == Routes.EDIT_MESSAGE


async def test_webhook_edit_delete_and_direct_messages(
    fake_discord: FakeDiscord, bot: DemoBot
) -> None:
    fake = fake_discord
    ix, msg = await finished_draw(fake)
    interaction = bot.interactions[-1]
    # the interaction webhook, addressed by message id (as a bot does after a restart)
    webhook = discord.Webhook.partial(fake.application_id, ix.token, client=bot)
    await webhook.edit_message(msg.id, content="edited by id", attachments=[])
    assert msg.content == "edited by id" and msg.attachments == []
    extra = await interaction.followup.send(
        "with a file", file=discord.File(io.BytesIO(tiny_png(2, 2)), "small.png"), wait=True
    )
    stored = fake.get_message(extra.id)
    assert stored is not None and stored.attachment("small.png").is_png()
    assert extra.attachments[0].width == 2
    await interaction.delete_original_response()
    assert msg.deleted and ix.original is msg
    # a direct message, the way a bot reaches a user when the channel is gone
    user = await bot.fetch_user(fake.bob.id)
    dm = await user.send("your images", file=discord.File(io.BytesIO(tiny_png()), "grid.png"))
    stored_dm = fake.get_message(dm.id)
    assert stored_dm is not None and stored_dm.guild_id is None
    assert fake.channels[stored_dm.channel_id].recipients == [fake.bob.user]


async def test_first_followup_replaces_the_thinking_message(
    fake_discord: FakeDiscord, bot: DemoBot
) -> None:
    fake = fake_discord
    ix = await fake.send_slash_command("think")
    second = await ix.wait_for_followup(lambda m: m.content == "second", timeout=3)
    first = ix.original
    assert first is not None and first.content == "first" and not first.loading
    assert first.ephemeral, "the first followup keeps the ephemeral choice of the defer"
    assert [m.content for m in ix.messages] == ["first", "second"]
    assert second.id != first.id and second.ephemeral


async def test_late_ack_is_refused(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    fake.ack_deadline = 0.2
    ix = await fake.send_slash_command("slow", {"seconds": 0.4})
    with pytest.raises(AssertionError, match="did not respond"):
        await ix.response()
    await fake.wait_for(lambda: bot.late_errors, timeout=3, description="the late answer")
    assert bot.late_errors[0].code == 10062 and ix.rejected_callbacks
    with pytest.raises(AssertionError, match="did not respond"):
        fake.assert_no_problems()  # the fixture's teardown would fail the test
    fake.clear_problems()


async def test_moderator_command_needs_permissions(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    with pytest.raises(CommandRejected, match="lacks"):
        await fake.send_slash_command("purge", user=fake.alice)
    ix = await fake.send_slash_command("purge", user=fake.moderator)
    assert (await ix.wait_for_original(timeout=3)).content == "purged"
    ix = await fake.send_slash_command("purge", user=fake.alice, respect_permissions=False)
    await ix.response()


async def test_real_rate_limit_bucket(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    fake.limit_route(Routes.EDIT_MESSAGE, limit=1, per=0.5)
    channel = bot.get_channel(fake.channel.id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("v0")
    for i in range(1, 4):
        await sent.edit(content=f"v{i}")
    stored = fake.get_message(sent.id)
    assert stored is not None and stored.content == "v3"
    interval = stored.min_edit_interval()
    assert interval is not None and interval >= 0.45, stored.edit_times


@requires_spec
@pytest.mark.parametrize("kind", ["custom_id", "content", "row"])
async def test_validator_bites(fake_discord: FakeDiscord, bot: DemoBot, kind: str) -> None:
    fake = fake_discord
    ix = await fake.send_slash_command("bad", {"kind": kind})
    await fake.wait_for(lambda: fake.violations, timeout=3, description="a violation")
    assert not ix.acked, "Discord answers 400, so the interaction is not acknowledged"
    expected = {"custom_id": "custom_id", "content": "content", "row": "components"}[kind]
    with pytest.raises(AssertionError, match=expected):
        fake.assert_no_problems()  # what the fixture's teardown runs
    fake.clear_problems()


async def test_unknown_route_is_a_failure(fake_discord: FakeDiscord, bot: DemoBot) -> None:
    fake = fake_discord
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/voice/regions"))
    assert [p.path for p in fake.unknown_routes] == ["/voice/regions"]
    with pytest.raises(AssertionError, match="route not modelled"):
        fake.assert_no_problems()
    fake.clear_problems()


async def test_json_answers_have_exact_content_type(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    headers = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{fake.api_base}/users/@me", headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json"
            assert "X-RateLimit-Remaining" in resp.headers
        async with http.get(f"{fake.api_base}/users/@me") as resp:
            assert resp.status == 401


@requires_spec
async def test_spec_and_rules_unit() -> None:
    spec = OpenAPISpec.load()
    missing = [
        f"{r.method} {r.template}"
        for r in FakeDiscord()._routes
        if not spec.has_operation(r.method, r.template)
    ]
    assert missing == [], "every route the fake serves is one of Discord's"
    edit = "/webhooks/{webhook_id}/{webhook_token}/messages/@original"
    assert spec.validate_request("PATCH", edit, {"content": "ok", "attachments": [{"id": 0}]})
    result = spec.validate_request("PATCH", edit, {"content": "z" * 2001})
    assert [e.dotted for e in result.errors] == ["content"]
    assert result.discord_errors()["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"
    rows = [
        {"type": 1, "components": [{"type": 2, "style": 1, "label": "a", "custom_id": f"r{i}"}]}
        for i in range(6)
    ]
    assert [e.dotted for e in check_message({"components": rows})] == ["components"]
    dup = [
        {
            "type": 1,
            "components": [
                {"type": 2, "style": 1, "label": "a", "custom_id": "same"},
                {"type": 2, "style": 1, "label": "b", "custom_id": "same"},
            ],
        }
    ]
    assert "duplicated" in str(check_message({"components": dup})[0])


def test_the_vendored_spec_is_found_in_every_clone() -> None:
    assert spec_unavailable_reason() is None
    assert FakeDiscord().spec is not None


async def test_missing_spec_is_reported_not_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SPEC_ENV_VAR, "/nonexistent/openapi.json")
    reason = spec_unavailable_reason()
    assert reason is not None and "NOT validated" in reason
    fake = FakeDiscord()
    assert fake.spec is None and fake.spec_skip_reason == reason


async def test_bot_as_a_separate_process_survives_sigkill(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    script = [__file__]
    first = await start_bot_process(fake, script)
    try:
        await fake.wait_until_ready(timeout=15)
        await fake.wait_for_sync(1, timeout=10)
        _, msg = await finished_draw(fake, "from another process")
        assert msg.attachment("grid.png").is_png()
        assert msg.content.startswith("**from another process**")
    finally:
        first.kill()  # SIGKILL: no goodbye on the gateway
        await first.wait()
    second = await start_bot_process(fake, script)
    try:
        await fake.wait_for(
            lambda: len(fake.sessions) == 2 and fake.sessions[1].connected,
            timeout=15,
            description="the restarted bot to identify",
        )
        click = await fake.click_button(msg, label="Upscale")  # a button from before the kill
        reply = await click.wait_for_original(timeout=5)
        assert reply.content == "upscale of job 1"
        assert fake.sync_count(fake.guild) == 2 and not fake.command_syncs[-1].changed
    finally:
        await second.stop()
    assert "Traceback" not in first.output + second.output, first.output + second.output


# ---------------------------------------------------------------------------------------
# Run the throwaway bot as its own process, configured by the environment only.
# ---------------------------------------------------------------------------------------
async def _main() -> None:
    discord.http.Route.BASE = os.environ["DISCORD_API_BASE_URL"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["DISCORD_GATEWAY_URL"])
    client = DemoBot(int(os.environ["DEV_GUILD_ID"]), guild_ready_timeout=0.05)
    async with client:
        await client.start(os.environ["DISCORD_TOKEN"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
