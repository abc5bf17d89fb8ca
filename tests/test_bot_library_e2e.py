"""The library end to end (issue 16): /history, /favorites and /gallery with search, filters,
pages and opened entries; sharing to a gallery channel and the public share page; moderators'
removals and settings; and isolation between two servers, a DM and the API, for every list,
autocomplete, export and API route. One bot process with its HTTP API on."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from api_support import PREFIX, auth, free_port
from e2e_support import World, imagine, is_result, start_world, stop_world
from fakediscord.models import StoredMessage
from PIL import Image

from engine.images import read_png_parameters

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("no_problems")]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    port = free_port()
    started = await start_world(
        tmp_path_factory.mktemp("library-data"),
        API_PORT=str(port),
        API_PUBLIC_URL=f"http://127.0.0.1:{port}",
        DEV_GUILD_ID="",  # global commands: every server has them, as in production
    )
    started.api_port = port  # type: ignore[attr-defined]
    try:
        yield started
    finally:
        await stop_world(started)


def base_url(world: World) -> str:
    return f"http://127.0.0.1:{world.api_port}"  # type: ignore[attr-defined]


def listing(message: StoredMessage) -> str:
    """A library page's text: its embed's title and numbered lines."""
    return message.text()


def numbers(message: StoredMessage) -> list[str]:
    return [label for label in message.button_labels if label.isdigit()]


async def make(world: World, user: Any, prompt: str, **where: Any) -> None:
    """/imagine one small image, sent from ``where`` (``guild="dm"``, ``channel=...``)."""
    private = where.pop("private", False)
    options = {"prompt": prompt, "count": 1, "steps": 2, "private": private}
    ix = await world.fake.send_slash_command("imagine", options, user=user, **where)
    await ix.response()
    await ix.wait_for_original(is_result, timeout=90)


async def command(
    world: World, name: str, options: dict[str, Any] | None = None, **kw: Any
) -> StoredMessage:
    ix = await world.fake.send_slash_command(name, options, **kw)
    await ix.response()
    return await ix.wait_for_message(lambda m: not m.loading, timeout=30)


async def click(world: World, message: StoredMessage, **kw: Any) -> StoredMessage:
    """Click, and return the message that answers (a new one, or the same one edited)."""
    before = [(m.id, len(m.versions)) for m in [message]]
    ix = await world.fake.click_button(message, **kw)
    await ix.response()

    def answered(m: StoredMessage) -> bool:
        if m.loading:
            return False
        return m.id != message.id or (m.id, len(m.versions)) not in before

    return await ix.wait_for_message(answered, timeout=30)


async def test_history_searches_filters_and_pages_as_a_numbered_sheet(world: World) -> None:
    fake = world.fake
    seeker = fake.add_member("seeker")
    for n in range(11):
        await imagine(world, user=seeker, prompt=f"a glass castle number {n}", count=1, steps=2)
    await imagine(world, user=seeker, prompt="a wooden boat", count=1, steps=2)

    first = await command(world, "history", {"search": "CASTLE"}, user=seeker)
    assert first.ephemeral and "(11)" in first.embeds[0]["title"] and "“CASTLE”" in listing(first)
    assert "wooden boat" not in listing(first) and listing(first).count("glass castle") == 10
    assert numbers(first) == [str(n) for n in range(1, 11)]
    sheet = Image.open(io.BytesIO(first.attachments[0].data))
    assert first.embeds[0]["image"]["url"] == f"attachment://{first.attachments[0].filename}"
    assert sheet.width > sheet.height  # five across, two down
    refused = await click(world, first, label="Next ▶", user=fake.bob)
    assert refused.ephemeral and "someone else" in refused.content
    second = await click(world, first, label="Next ▶", user=seeker)
    assert second.id == first.id and "Page 2 of 2" in listing(second)
    assert numbers(second) == ["1"] and "glass castle number 0" in listing(second)

    nothing = await command(world, "history", {"operation": "upscale"}, user=seeker)
    assert "Nothing matches these filters" in listing(nothing) and not nothing.attachments
    done_today = await command(
        world, "history", {"status": "done", "since": "today", "search": "boat"}, user=seeker
    )
    assert "(1)" in done_today.embeds[0]["title"] and "wooden boat" in listing(done_today)
    before_today = await command(world, "history", {"until": "yesterday"}, user=seeker)
    assert "Nothing matches" in listing(before_today)
    oldest = await command(world, "history", {"sort": "oldest"}, user=seeker)
    assert (
        "**1.** ʹ" not in listing(oldest)
        and "glass castle number 0" in listing(oldest).split("\n")[2]
    )
    bad = await command(world, "history", {"since": "last tuesday-ish"}, user=seeker)
    assert bad.ephemeral and "`since` must be a date" in bad.content


async def test_open_an_entry_step_through_its_images_and_star_one(world: World) -> None:
    fake = world.fake
    opener = fake.add_member("opener")
    await imagine(world, user=opener, prompt="twin lanterns", count=2, seed=41)
    page = await command(world, "history", user=opener)
    entry = await click(world, page, label="1", user=opener)
    assert entry.ephemeral and entry.id != page.id
    parameters = read_png_parameters(entry.attachments[0].data)
    assert parameters is not None and "Seed: 41" in parameters
    assert {"Vary (Subtle)", "Vary (Strong)", "⭐", "ℹ", "Share"} <= set(entry.button_labels)
    assert "1/2" in entry.button_labels
    stepped = await click(world, entry, label="1/2", user=opener)
    assert stepped.id == entry.id and "seed 42" in listing(stepped)
    starred = await click(world, stepped, emoji="⭐", user=opener)
    assert "Added this image" in starred.content  # one image, not the whole grid
    favourites = await command(world, "favorites", user=opener)
    assert "twin lanterns" in listing(favourites) and "1 image ·" in listing(favourites)
    reopened = await click(world, favourites, label="1", user=opener)
    assert "seed 42" in listing(reopened) and "in your favourites" in listing(reopened)


async def test_two_servers_and_a_dm_each_see_only_what_they_should(world: World) -> None:
    fake = world.fake
    other_server = fake.add_guild("Other Server")
    other_channel = other_server.channels[0]
    artist = fake.add_member("artist")
    fake.add_member("artist", guild=other_server, user=artist.user)
    neighbour = fake.add_member("neighbour")
    stranger = fake.add_member("stranger", guild=other_server)
    await make(world, artist, "zebra public mural")
    await make(world, artist, "zebra private sketch", private=True)
    await make(world, artist, "zebra dm doodle", guild="dm")
    await make(
        world, artist, "zebra other server poster", guild=other_server, channel=other_channel
    )
    await make(
        world, stranger, "zebra stranger painting", guild=other_server, channel=other_channel
    )

    here = listing(await command(world, "gallery", {"search": "zebra"}, user=neighbour))
    assert "zebra public mural" in here
    for unseen in ("private sketch", "dm doodle", "other server poster", "stranger painting"):
        assert unseen not in here
    there = listing(
        await command(
            world,
            "gallery",
            {"search": "zebra"},
            user=stranger,
            guild=other_server,
            channel=other_channel,
        )
    )
    assert "other server poster" in there and "stranger painting" in there
    assert "public mural" not in there and "private sketch" not in there

    # History is the owner's everywhere, and only theirs.
    mine = listing(await command(world, "history", {"search": "zebra"}, user=artist))
    assert all(p in mine for p in ("mural", "private sketch", "dm doodle", "other server poster"))
    assert "stranger" not in mine
    assert "Nothing matches" in listing(
        await command(world, "history", {"search": "zebra"}, user=neighbour)
    )
    # Search autocomplete offers the user's own prompts (from everywhere) and nobody else's.
    offered = await fake.autocomplete("history", {"search": "zebra"}, user=neighbour)
    assert offered == []
    in_dm = await fake.autocomplete("history", {"search": "zebra"}, user=artist, guild="dm")
    assert {c["value"] for c in in_dm} == {
        "zebra public mural",
        "zebra private sketch",
        "zebra dm doodle",
        "zebra other server poster",
    }
    # The artist's export holds all of theirs and nobody else's.
    export = await fake.send_slash_command("export", user=artist)
    await export.response()
    sent = await export.wait_for_message(lambda m: bool(m.attachments), timeout=60)
    with zipfile.ZipFile(io.BytesIO(sent.attachments[0].data)) as archive:
        manifest = json.loads(archive.read("diffusion-chat-export.json"))
    prompts = {job["prompt"] for job in manifest["jobs"]}
    assert {"zebra public mural", "zebra private sketch", "zebra dm doodle"} <= prompts
    assert "zebra stranger painting" not in prompts

    # The API key links the Discord account: the same history, nobody else's images.
    created = await command(world, "apikey", subcommand="create", user=artist)
    found = re.search(r"\|\|`([^`]+)`\|\|", created.content)
    assert found, created.content
    key = found[1]
    stranger_image = image_of(world, "zebra stranger painting")
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{base_url(world)}{PREFIX}/history", params={"q": "zebra"}, headers=auth(key)
        ) as answer:
            body = await answer.json()
        assert answer.status == 200
        assert {item["input"]["prompt"] for item in body["items"]} == {
            "zebra public mural",
            "zebra private sketch",
            "zebra dm doodle",
            "zebra other server poster",
        }
        for path in (f"/images/{stranger_image}.png", f"/images/{stranger_image}/favorite"):
            method = http.get if path.endswith(".png") else http.put
            async with method(f"{base_url(world)}{PREFIX}{path}", headers=auth(key)) as answer:
                assert answer.status == 404
        own = image_of(world, "zebra dm doodle")
        star = f"{base_url(world)}{PREFIX}/images/{own}/favorite"
        async with http.put(star, headers=auth(key)) as answer:
            assert answer.status == 204
        async with http.get(f"{base_url(world)}{PREFIX}/favorites", headers=auth(key)) as answer:
            starred = await answer.json()
        assert [item["input"]["prompt"] for item in starred["items"]] == ["zebra dm doodle"]
        async with http.delete(star, headers=auth(key)) as answer:
            assert answer.status == 204
        async with http.get(f"{base_url(world)}{PREFIX}/favorites", headers=auth(key)) as answer:
            assert (await answer.json())["total"] == 0
        async with http.get(
            f"{base_url(world)}{PREFIX}/history", params={"since": "someday"}, headers=auth(key)
        ) as answer:
            error = await answer.json()
        assert answer.status == 422 and error["error"]["field"] == "since"


async def test_share_posts_to_the_gallery_channel_and_moderators_can_take_it_down(
    world: World,
) -> None:
    fake = world.fake
    gallery_channel = fake.guild.channels[1]  # "art"
    sharer = fake.add_member("sharer")
    refused = await command(  # a server may show /settings to everyone: still refused
        world,
        "settings",
        {"channel": gallery_channel},
        subcommand="gallery-channel",
        user=sharer,
        respect_permissions=False,
    )
    assert refused.ephemeral and "moderators" in refused.content.lower()
    chosen = await command(
        world,
        "settings",
        {"channel": gallery_channel},
        subcommand="gallery-channel",
        user=fake.moderator,
    )
    assert f"<#{gallery_channel.id}>" in chosen.content
    hostile = "<script>alert(1)</script> a shy heron & friends"
    _, result = await imagine(world, user=sharer, prompt=hostile, count=1, private=True)
    assert result.ephemeral
    unseen = await click(world, result, emoji="📤", user=fake.bob)
    assert "no longer exists" in unseen.content  # private: not even there for others

    shared = await click(world, result, emoji="📤", user=sharer)
    assert shared.ephemeral and "public now" in shared.content
    job_id = job_of(world, hostile)
    link = f"{base_url(world)}/share/{job_id}"
    assert link in shared.content
    assert any(b.get("url") == link for b in shared.buttons)
    posted = [m for m in fake.messages(gallery_channel) if "shy heron" in m.text()]
    assert len(posted) == 1 and f"<@{sharer.user.id}>" in posted[0].text()
    assert posted[0].attachments and not posted[0].ephemeral
    again = await click(world, result, emoji="📤", user=sharer)
    assert "Already shared" in again.content
    not_theirs = await click(world, result, emoji="📤", user=fake.bob)  # public now
    assert "Only the person who made this image" in not_theirs.content
    assert len([m for m in fake.messages(gallery_channel) if "shy heron" in m.text()]) == 1

    async with aiohttp.ClientSession() as http:
        async with http.get(link) as answer:  # no key: the page is public
            page = await answer.text()
            assert answer.status == 200
            assert "script-src" not in answer.headers["Content-Security-Policy"]
        assert "&lt;script&gt;alert(1)&lt;/script&gt; a shy heron &amp; friends" in page
        assert "<script>" not in page
        async with http.get(f"{link}/1.png") as answer:
            assert answer.status == 200 and read_png_parameters(await answer.read())

        gallery = await command(world, "gallery", {"search": "heron"}, user=fake.moderator)
        entry = await click(world, gallery, label="1", user=fake.moderator)
        assert "Remove from gallery" in entry.button_labels
        bobs = await click(
            world,
            await command(world, "gallery", {"search": "heron"}, user=fake.bob),
            label="1",
            user=fake.bob,
        )
        assert "Remove from gallery" not in bobs.button_labels
        removed = await click(world, entry, label="Remove from gallery", user=fake.moderator)
        assert "Removed from this server's gallery" in removed.content
        await fake.wait_for(lambda: posted[0].deleted, timeout=10, description="the post deleted")
        async with http.get(link) as answer:
            assert answer.status == 404
    assert "Nothing matches" in listing(
        await command(world, "gallery", {"search": "heron"}, user=fake.bob)
    )
    assert "shy heron" in listing(await command(world, "history", {"search": "heron"}, user=sharer))


async def test_forget_takes_down_shared_posts_and_share_pages(world: World) -> None:
    fake = world.fake
    gallery_channel = fake.guild.channels[1]
    await command(
        world,
        "settings",
        {"channel": gallery_channel},
        subcommand="gallery-channel",
        user=fake.moderator,
    )
    leaver = fake.add_member("sharingleaver")
    _, result = await imagine(world, user=leaver, prompt="a parting comet", count=1)
    await click(world, result, emoji="📤", user=leaver)
    [post] = [m for m in fake.messages(gallery_channel) if "parting comet" in m.text()]
    link = f"{base_url(world)}/share/{job_of(world, 'a parting comet')}"
    asked = await command(world, "forget", user=leaver)
    confirm = await fake.click_button(asked, label="Delete everything", user=leaver)
    await confirm.response()
    done = await confirm.wait_for_original(lambda m: "Deleted" in m.content, timeout=30)
    assert "1 shared post(s)" in done.content
    assert post.deleted
    async with aiohttp.ClientSession() as http, http.get(link) as answer:
        assert answer.status == 404
    assert _read(world, "SELECT count(*) FROM jobs WHERE user_id = ?", leaver.user.id) == 0


async def test_settings_show_retention_and_gallery_channel(world: World) -> None:
    fake = world.fake
    kept = await command(
        world, "settings", {"days": 14}, subcommand="retention", user=fake.moderator
    )
    assert "kept 14 day(s)" in kept.content
    shown = await command(world, "settings", subcommand="show", user=fake.moderator)
    assert "14 day(s)" in shown.content and "Gallery channel" in shown.content
    reset = await command(world, "settings", subcommand="retention", user=fake.moderator)
    assert "default" in reset.content
    off = await command(world, "settings", subcommand="gallery-channel", user=fake.moderator)
    assert "off" in off.content
    bobs = await command(
        world, "settings", subcommand="show", user=fake.bob, respect_permissions=False
    )
    assert bobs.ephemeral and "Only moderators" in bobs.content


def _read(world: World, sql: str, *params: object) -> Any:
    import sqlite3

    path = world.data_dir / "diffusion-chat.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None, sql
    return row[0]


def job_of(world: World, prompt: str) -> str:
    return str(_read(world, "SELECT id FROM jobs WHERE prompt = ?", prompt))


def image_of(world: World, prompt: str) -> int:
    return int(
        _read(
            world,
            "SELECT images.id FROM images JOIN jobs ON jobs.id = images.job_id WHERE prompt = ?",
            prompt,
        )
    )
