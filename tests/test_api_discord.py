"""Both front doors in one process: Discord users and API clients share one queue, one
fairness scheduler and one quota system, and every accepted job is delivered exactly once."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from api_support import PREFIX, auth, free_port
from e2e_support import World, explained_by, hold_jobs, is_result, reply_text, stand_in

from core.storage import Database

pytestmark = pytest.mark.asyncio(loop_scope="module")

PEOPLE = 25  # of each: 25 Discord users and 25 API keys


async def make_keys(data_dir: Path, count: int) -> list[str]:
    # Written beside the running bot, as `diffusion-chat apikey create` would.
    async with Database.open_data_dir(data_dir) as db:
        return [(await db.api_keys.create(f"client {n}"))[1] for n in range(count)]


def jobs_by_prompt(data_dir: Path) -> dict[str, sqlite3.Row]:
    with sqlite3.connect(f"file:{data_dir / 'diffusion-chat.sqlite3'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT id, prompt, status, source, created_at, started_at,"
            " (SELECT count(*) FROM images WHERE images.job_id = jobs.id) AS images"
            " FROM jobs WHERE prompt LIKE 'crowd %'"
        ).fetchall()
    return {row["prompt"]: row for row in rows}


async def until_all_done(data_dir: Path, expected: int) -> None:
    """Wait for ``expected`` crowd jobs recorded done; a timeout names the ones that are not."""
    rows: dict[str, sqlite3.Row] = {}
    try:
        async with asyncio.timeout(240):
            while True:
                rows = jobs_by_prompt(data_dir)
                if len(rows) == expected and all(r["status"] == "done" for r in rows.values()):
                    return
                await asyncio.sleep(0.2)
    except TimeoutError as error:
        waiting = {prompt: row["status"] for prompt, row in rows.items() if row["status"] != "done"}
        raise TimeoutError(f"{len(rows)} of {expected} recorded; not done: {waiting}") from error


async def test_fifty_people_through_two_doors_one_queue(world: World, no_problems: None) -> None:
    fake = world.fake
    data_dir = world.data_dir.parent / "both-doors"
    port = free_port()
    users = [fake.add_member(f"crowd{n}") for n in range(PEOPLE)]
    async with stand_in(world, DATA_DIR=str(data_dir), API_PORT=str(port)) as bot:
        keys = await make_keys(data_dir, PEOPLE)
        base = f"http://127.0.0.1:{port}{PREFIX}"
        with hold_jobs(data_dir, "crowd blocker", from_step=1) as release:
            blocker = await fake.send_slash_command(
                "imagine", {"prompt": "crowd blocker", "steps": 2, "count": 1}
            )
            await blocker.response()
            async with aiohttp.ClientSession() as http:

                async def from_api(n: int) -> str:
                    body = {"prompt": f"crowd api {n:02d}", "steps": 2}
                    async with http.post(
                        f"{base}/generate", json=body, headers=auth(keys[n])
                    ) as answer:
                        assert answer.status == 202, await answer.text()
                        return str((await answer.json())["id"])

                async def from_discord(n: int) -> object:
                    ix = await fake.send_slash_command(
                        "imagine",
                        {"prompt": f"crowd discord {n:02d}", "steps": 2, "count": 1},
                        user=users[n],
                    )
                    await ix.response()
                    assert ix.ack_latency is not None and ix.ack_latency < 3.0
                    return ix

                # Interleaved, all at once.
                arrivals = await asyncio.gather(
                    *(call(n) for n in range(PEOPLE) for call in (from_api, from_discord))
                )
                release()
                api_ids = [a for a in arrivals if isinstance(a, str)]
                interactions = [a for a in arrivals if not isinstance(a, str)]
                with explained_by(bot.proc):
                    # First every job recorded done, then every one shown: a failure here
                    # says which of the two went wrong.
                    await until_all_done(data_dir, 2 * PEOPLE + 1)
                    results = await asyncio.gather(
                        *(ix.wait_for_original(is_result, timeout=120) for ix in interactions)  # type: ignore[attr-defined]
                    )
                for n, job_id in enumerate(api_ids):
                    async with http.get(f"{base}/jobs/{job_id}", headers=auth(keys[n])) as answer:
                        job = await answer.json()
                    assert job["status"] == "succeeded" and len(job["output"]) == 1

    assert len(results) == PEOPLE
    for n in range(PEOPLE):
        posted = [
            m for m in fake.messages(results[0].channel_id) if f"crowd discord {n:02d}" in m.text()
        ]
        assert len(posted) == 1 and is_result(posted[0])  # delivered once, not twice
    rows = jobs_by_prompt(data_dir)
    assert {row["source"] for row in rows.values()} == {"api", "discord"}
    assert all(row["images"] == 1 for row in rows.values())  # each stored once
    # Fair: one job each, so the queue served them in the order they arrived, whichever door.
    crowd = sorted(
        (row for row in rows.values() if row["prompt"] != "crowd blocker"),
        key=lambda row: row["created_at"],
    )
    # Jobs of one batch start together and record it in any order, so allow a batch's worth
    # of shuffling; a door served first would move the other door's jobs 25 places.
    by_start = sorted(crowd, key=lambda row: row["started_at"])
    place = {row["id"]: n for n, row in enumerate(by_start)}
    assert all(abs(place[row["id"]] - n) <= 8 for n, row in enumerate(crowd))


async def test_a_personal_key_shares_history_and_quota_with_discord(
    world: World, no_problems: None
) -> None:
    fake = world.fake
    member = fake.add_member("keyholder")
    port = free_port()
    async with stand_in(world, API_PORT=str(port)), aiohttp.ClientSession() as http:
        made = await reply_text(await fake.send_slash_command("apikey create", user=member))
        assert made.ephemeral
        found = re.search(r"`(dc_[\w-]+)`", made.content)
        assert found is not None, made.content
        key = found[1]
        async with http.post(
            f"http://127.0.0.1:{port}{PREFIX}/generate",
            json={"prompt": "made over http by a discord user", "steps": 2},
            headers={**auth(key), "Prefer": "wait=60"},
        ) as answer:
            assert (await answer.json())["status"] == "succeeded"
        history = await reply_text(await fake.send_slash_command("history", user=member))
        assert "made over http by a discord user" in history.text()
        someone_else = await reply_text(await fake.send_slash_command("history"))
        assert "made over http" not in someone_else.text()
        revoked = await reply_text(await fake.send_slash_command("apikey revoke", user=member))
        assert revoked.ephemeral and "Revoked keys: 1." in revoked.content
        async with http.get(f"http://127.0.0.1:{port}{PREFIX}/models", headers=auth(key)) as answer:
            assert answer.status == 401


async def test_a_job_drawn_for_a_server_follows_that_servers_models(
    world: World, no_problems: None
) -> None:
    fake = world.fake
    member = fake.add_member("server drawer")
    port = free_port()
    data_dir = world.data_dir.parent / "for-a-server"
    base = f"http://127.0.0.1:{port}{PREFIX}"
    server = str(fake.guild.id)

    async def moderate(subcommand: str, options: dict[str, object] | None = None) -> str:
        ix = await fake.send_slash_command(f"model {subcommand}", options, user=fake.moderator)
        return (await reply_text(ix)).content

    async with stand_in(world, DATA_DIR=str(data_dir), API_PORT=str(port)):
        made = await reply_text(await fake.send_slash_command("apikey create", user=member))
        found = re.search(r"`(dc_[\w-]+)`", made.content)
        assert found is not None, made.content
        key = found[1]
        (own_account,) = await make_keys(data_dir, 1)
        async with Database.open_data_dir(data_dir) as db:
            _, stranger = await db.api_keys.create("not in the server", user_id=4242424242)
        assert "now draws with `tiny-xl`" in await moderate("default", {"name": "tiny-xl"})
        try:
            async with aiohttp.ClientSession() as http:

                async def draw(secret: str, **extra: str) -> tuple[int, dict[str, object]]:
                    body = {"prompt": "a lighthouse for a server", "steps": 2, **extra}
                    async with http.post(
                        f"{base}/generate", json=body, headers={**auth(secret), "Prefer": "wait=60"}
                    ) as answer:
                        return answer.status, await answer.json()

                status, job = await draw(key, server_id=server)
                assert status == 200 and job["input"]["model"] == "tiny-xl", job  # type: ignore[index]
                status, job = await draw(key)
                assert status == 200 and job["input"]["model"] == "tiny", job  # type: ignore[index]
                async with http.get(
                    f"{base}/models", params={"server_id": server}, headers=auth(key)
                ) as answer:
                    listed = await answer.json()
                assert [m["name"] for m in listed if m["default"]] == ["tiny-xl"]
                status, refused = await draw(stranger, server_id=server)
                assert status == 403 and refused["error"]["code"] == "not_a_member"  # type: ignore[index]
                status, refused = await draw(own_account, server_id=server)
                assert status == 403 and refused["error"]["field"] == "server_id"  # type: ignore[index]
                status, refused = await draw(key, server_id="not-a-number")
                assert status == 422 and refused["error"]["field"] == "server_id"  # type: ignore[index]
        finally:
            await moderate("default")
