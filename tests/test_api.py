"""The HTTP API over real HTTP, against the product run as its own process with only the API
on: generate, follow the events to the end, download the PNG; reconnect, cancel, keys,
quotas, rate limits, hostile input, and a kill -9 in the middle of a job."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from api_support import PREFIX, ApiProcess, ServerEvent, auth, events, start_api
from e2e_support import hold_jobs, local_server
from PIL import Image

from engine.images import read_png_parameters

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiProcess]:
    data_dir = tmp_path_factory.mktemp("api") / "data"
    server = await start_api(data_dir)
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def key(api: ApiProcess) -> str:
    return api.new_key("main")


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A fresh connection per request: one left idle past the server's keep-alive timeout (a
    # slow step between requests on a busy machine) is closed under the next request.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def generate(
    http: aiohttp.ClientSession, api: ApiProcess, key: str, **body: object
) -> tuple[int, dict[str, object]]:
    async with http.post(
        f"{api.base}{PREFIX}/generate", json={"steps": 4, **body}, headers=auth(key)
    ) as answer:
        return answer.status, await answer.json()


async def follow(
    http: aiohttp.ClientSession, url: str, key: str, last_event_id: str | None = None
) -> list[ServerEvent]:
    headers = auth(key) | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    async with http.get(url, headers=headers) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        return [event async for event in events(answer)]


async def test_generate_follow_the_events_and_download_the_png(
    api: ApiProcess, key: str, http: aiohttp.ClientSession
) -> None:
    status, job = await generate(http, api, key, prompt="a red fox, oil painting", count=2)
    assert status == 202 and job["status"] in ("queued", "running", "succeeded")
    urls = job["urls"]
    assert isinstance(urls, dict)
    stream = await follow(http, urls["events"], key)
    names = [event.name for event in stream]
    assert names[-1] == "succeeded" and "progress" in names
    assert names.index("started") < names.index("progress")
    ids = [event.id for event in stream]
    assert all(ids) and len(set(ids)) == len(ids)
    last_progress = [event.data for event in stream if event.name == "progress"][-1]
    assert last_progress["percent"] == 100.0 and last_progress["total"] == 4
    finished = stream[-1].data
    assert finished["status"] == "succeeded" and finished["id"] == job["id"]
    output = finished["output"]
    assert isinstance(output, list) and len(output) == 2
    async with http.get(output[0], headers=auth(key)) as answer:
        assert answer.status == 200 and answer.content_type == "image/png"
        png = await answer.read()
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    parameters = read_png_parameters(png)
    assert parameters is not None and "a red fox, oil painting" in parameters
    thumbnail = output[0].replace(".png", "/thumb.webp")
    async with http.get(thumbnail, headers=auth(key)) as answer:
        assert answer.status == 200 and answer.content_type == "image/webp"
    async with http.get(urls["get"], headers=auth(key)) as answer:
        assert (await answer.json())["output"] == output
    async with http.get(f"{api.base}{PREFIX}/history?q=RED FOX", headers=auth(key)) as answer:
        found = await answer.json()
    assert [item["id"] for item in found["items"]] == [job["id"]]
    for model, expected in (("tiny", [job["id"]]), ("tiny-xl", [])):
        async with http.get(
            f"{api.base}{PREFIX}/history?q=red fox&model={model}", headers=auth(key)
        ) as answer:
            assert [item["id"] for item in (await answer.json())["items"]] == expected
    async with http.get(f"{api.base}{PREFIX}/models", headers=auth(key)) as answer:
        models = await answer.json()
    assert {"tiny", "tiny-xl"} <= {model["name"] for model in models}


async def test_prefer_wait_returns_the_finished_job(
    api: ApiProcess, key: str, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{api.base}{PREFIX}/generate",
        json={"prompt": "a quick sketch", "steps": 2},
        headers={**auth(key), "Prefer": "wait=60"},
    ) as answer:
        assert answer.status == 200
        job = await answer.json()
        assert answer.headers["Location"] == job["urls"]["get"]
    assert job["status"] == "succeeded" and len(job["output"]) == 1
    # Counted and logged like a Discord job: /metrics (to this machine) and one line an event.
    async with http.get(f"{api.base}/metrics") as answer:
        exposition = await answer.text()
    done = [line for line in exposition.splitlines() if 'jobs_total{status="done"}' in line]
    assert done and float(done[0].split()[-1]) >= 1
    assert any(
        "job done" in line and f"job_id={job['id']}" in line for line in api.output.splitlines()
    )


async def test_choices_and_weights_work_over_http(
    api: ApiProcess, key: str, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{api.base}{PREFIX}/generate",
        json={"prompt": "a (fox:1.4) in {snow|rain|fog|sand|mud}", "steps": 2},
        headers={**auth(key), "Prefer": "wait=60"},
    ) as answer:
        job = await answer.json()
    assert job["status"] == "succeeded" and len(job["output"]) == 4
    assert job["prompts"][0] == "a (fox:1.4) in snow" and len(job["prompts"]) == 4
    assert job["notes"] == [
        "Your prompt makes 5 combinations; this job draws 4 of them (4 images per job at most)."
    ]
    async with http.post(
        f"{api.base}{PREFIX}/generate",
        json={"prompt": "a {fox|owl", "steps": 2},
        headers=auth(key),
    ) as answer:
        error = (await answer.json())["error"]
    assert answer.status == 422 and error["field"] == "prompt" and "not closed" in error["message"]


async def test_a_reconnecting_client_misses_nothing(
    api: ApiProcess, key: str, http: aiohttp.ClientSession
) -> None:
    with hold_jobs(api.data_dir, "a lighthouse", from_step=3) as release:
        _, job = await generate(http, api, key, prompt="a lighthouse at dusk", steps=6)
        first: list[ServerEvent] = []
        async with http.get(job["urls"]["events"], headers=auth(key)) as answer:  # type: ignore[index]
            async for event in events(answer):
                first.append(event)
                if event.name == "progress":
                    break  # the connection drops here
        release()
        rest = await follow(http, job["urls"]["events"], key, last_event_id=first[-1].id)  # type: ignore[index]
    assert rest[-1].name == "succeeded"
    seq = [int(str(event.id).rsplit("-", 1)[1]) for event in first + rest[:-1]]
    assert seq == sorted(seq) and len(set(seq)) == len(seq)  # nothing twice, in order
    assert "started" not in [event.name for event in rest]  # it had that already


async def test_cancel_while_running(api: ApiProcess, key: str, http: aiohttp.ClientSession) -> None:
    with hold_jobs(api.data_dir, "never finished", from_step=2):
        _, job = await generate(http, api, key, prompt="a never finished bridge", steps=6)
        urls = job["urls"]
        assert isinstance(urls, dict)
        async with http.get(urls["events"], headers=auth(key)) as answer:
            async for event in events(answer):
                if event.name == "progress":
                    break
        async with http.post(urls["cancel"], headers=auth(key)) as answer:
            assert answer.status == 200
            cancelled = await answer.json()
    assert cancelled["status"] == "canceled" and cancelled["output"] is None
    stream = await follow(http, urls["events"], key)
    assert [event.name for event in stream] == ["canceled"]


async def test_keys_are_checked_and_jobs_are_private(
    api: ApiProcess, key: str, http: aiohttp.ClientSession
) -> None:
    url = f"{api.base}{PREFIX}/generate"
    body = {"prompt": "a secret garden", "steps": 2}
    async with http.post(url, json=body) as answer:
        assert answer.status == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
        assert (await answer.json())["error"]["code"] == "missing_key"
    async with http.post(url, json=body, headers=auth("dc_not-a-real-key")) as answer:
        assert answer.status == 401 and (await answer.json())["error"]["code"] == "invalid_key"
    other = api.new_key("other")
    _, job = await generate(http, api, key, **body)
    async with http.get(job["urls"]["get"], headers=auth(other)) as answer:  # type: ignore[index]
        assert answer.status == 404  # someone else's job does not exist for you
    listing = api.apikey("list")
    other_id = next(line.split()[0] for line in listing.splitlines() if " other " in line)
    api.apikey("revoke", other_id)
    async with http.get(f"{api.base}{PREFIX}/models", headers=auth(other)) as answer:
        assert answer.status == 401 and (await answer.json())["error"]["code"] == "invalid_key"


async def test_quotas_apply_to_keys_as_to_users(
    api: ApiProcess, http: aiohttp.ClientSession
) -> None:
    small = api.new_key("small", "--daily-images", "2")
    with hold_jobs(api.data_dir, "one of two", from_step=1):
        status, held = await generate(http, api, small, prompt="one of two", count=2)
        assert status == 202
        status, refused = await generate(http, api, small, prompt="one too many")
        assert status == 429
        error = refused["error"]
        assert isinstance(error, dict) and error["code"] == "quota_exceeded"
        assert "all 2 of your images" in str(error["message"])
        # A cancelled job gives its images back, as on Discord.
        async with http.post(held["urls"]["cancel"], headers=auth(small)) as answer:  # type: ignore[index]
            assert (await answer.json())["status"] == "canceled"
    status, _ = await generate(http, api, small, prompt="refunded, so allowed", count=2)
    assert status == 202


def huge_png() -> str:
    """A 20000x20000 picture in a few kilobytes: a decompression bomb for a careless server."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


HUGE_PNG = huge_png()

HOSTILE: list[tuple[object, str | None]] = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x" * 5000}, "prompt"),
    ({"prompt": "a cat", "count": 99}, "count"),
    ({"prompt": "a cat", "count": "four"}, "count"),
    ({"prompt": "a cat", "width": 100000}, "width"),
    ({"prompt": "a cat", "width": 4000, "height": 4000}, "width"),
    ({"prompt": "a cat", "seed": -1}, "seed"),
    ({"prompt": "a cat", "model": "no-such-model"}, None),
    ({"prompt": "a cat", "operation": "teleport"}, "operation"),
    ({"prompt": "a cat", "init_image": "!!!not base64!!!"}, "init_image"),
    ({"prompt": "a cat", "operation": "img2img"}, None),
    (
        {
            "prompt": "a cat",
            "operation": "img2img",
            "init_image": base64.b64encode(b"GIF89a not really").decode(),
        },
        None,
    ),
    ({"prompt": "a cat", "surprise": True}, "surprise"),
    ({"prompt": "\u202e\u0000\ud800"}, None),
    ({"prompt": "a cat", "operation": "img2img", "init_image": HUGE_PNG}, None),
    (["not", "an", "object"], None),
    ("not json at all", "body"),
]


@pytest.mark.parametrize(("body", "field"), HOSTILE)
async def test_bad_input_gets_a_json_error_that_names_the_field(
    api: ApiProcess, key: str, http: aiohttp.ClientSession, body: object, field: str | None
) -> None:
    url = f"{api.base}{PREFIX}/generate"
    headers = {**auth(key), "Content-Type": "application/json"}
    raw = body if isinstance(body, str) else None
    if raw is not None:
        request = http.post(url, data=raw, headers=headers)
    else:
        request = http.post(url, json=body, headers=auth(key))
    async with request as answer:
        assert 400 <= answer.status < 500, await answer.text()
        error = (await answer.json())["error"]
    assert error["code"] and error["message"] and "Traceback" not in error["message"]
    if field is not None:
        assert error["field"] == field, error


async def test_a_body_over_the_limit_is_refused_before_it_is_read(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    api = await start_api(
        tmp_path / "data",
        API_MAX_BODY_MB="1",
        API_REQUESTS_PER_MINUTE="3",
        API_CORS_ORIGINS="https://app.example.com",
    )
    try:
        key = api.new_key()
        # A browser page on the allowed origin may call it; another origin gets no CORS grant.
        preflight = {"Access-Control-Request-Method": "POST"}
        for origin, allowed in (("https://app.example.com", True), ("https://evil.example", False)):
            async with http.options(
                f"{api.base}{PREFIX}/generate", headers={**preflight, "Origin": origin}
            ) as answer:
                granted = answer.headers.get("Access-Control-Allow-Origin")
            assert (granted == origin) is allowed
        big = {"prompt": "a cat", "init_image": "A" * (2 * 2**20)}
        async with http.post(f"{api.base}{PREFIX}/generate", json=big, headers=auth(key)) as answer:
            assert answer.status == 413
            assert (await answer.json())["error"]["code"] == "body_too_large"
        statuses = []
        for _ in range(4):
            async with http.get(f"{api.base}{PREFIX}/models", headers=auth(key)) as answer:
                statuses.append(answer.status)
                headers = answer.headers
        assert statuses[-1] == 429 and 200 in statuses
        assert int(headers["Retry-After"]) >= 1 and headers["RateLimit-Limit"] == "3"
        assert headers["X-RateLimit-Remaining"] == "0"
        async with http.get(f"{api.base}/api/openapi.json") as answer:
            schema = await answer.json()
        assert f"{PREFIX}/generate" in schema["paths"]
        async with http.get(f"{api.base}/api/docs") as answer:
            assert answer.status == 200 and "swagger" in (await answer.text()).lower()
    finally:
        await api.stop()


async def test_killed_mid_job_the_restarted_server_finishes_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    data_dir = tmp_path / "data"
    api = await start_api(data_dir)
    key = api.new_key()
    with hold_jobs(data_dir, "a phoenix", from_step=2):
        _, job = await generate(http, api, key, prompt="a phoenix rising", steps=4)
        async with http.get(job["urls"]["events"], headers=auth(key)) as answer:  # type: ignore[index]
            async for event in events(answer):
                if event.name == "progress":
                    break
        await api.stop(kill=True)
    api.env["API_PORT"] = str(api.port)
    await api.start()
    try:
        async with asyncio.timeout(60):
            while True:
                async with http.get(job["urls"]["get"], headers=auth(key)) as answer:  # type: ignore[index]
                    resumed = await answer.json()
                    wait = float(answer.headers.get("Retry-After", 0.5))
                # Polling a slow restart can meet the key's rate limit: wait as told, then ask.
                assert answer.status in (200, 429), resumed
                if answer.status == 200 and resumed["status"] in (
                    "succeeded",
                    "failed",
                    "canceled",
                ):
                    break
                await asyncio.sleep(wait)
        assert resumed["status"] == "succeeded" and len(resumed["output"]) == 1
    finally:
        await api.stop()


async def test_an_idempotent_retry_gets_the_same_job(
    api: ApiProcess, key: str, http: aiohttp.ClientSession
) -> None:
    url = f"{api.base}{PREFIX}/generate"
    body = {"prompt": "a retried request", "steps": 2, "seed": 5}
    headers = {**auth(key), "Idempotency-Key": "order-42"}

    # Sent twice at once, then once more later: one job.
    async def send() -> tuple[int, dict[str, object], str]:
        async with http.post(url, json=body, headers=headers) as answer:
            return answer.status, await answer.json(), answer.headers["Idempotent-Replayed"]

    answers = await asyncio.gather(send(), send())
    answers.append(await send())
    assert len({str(job["id"]) for _, job, _ in answers}) == 1
    assert sorted(replayed for _, _, replayed in answers) == ["false", "true", "true"]
    async with http.post(
        url, json={**body, "prompt": "another request"}, headers=headers
    ) as answer:
        assert answer.status == 422
        error = (await answer.json())["error"]
    assert error["code"] == "idempotency_key_reused" and error["field"] == "Idempotency-Key"
    async with http.get(f"{api.base}{PREFIX}/history?q=retried", headers=auth(key)) as answer:
        assert (await answer.json())["total"] == 1


async def test_images_can_be_uploaded_as_a_multipart_form(
    api: ApiProcess, key: str, http: aiohttp.ClientSession
) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 220)).save(picture, format="PNG")
    form = aiohttp.FormData()
    form.add_field("prompt", "a blue square, remixed")
    form.add_field("operation", "img2img")
    form.add_field("steps", "4")
    form.add_field("strength", "0.5")
    form.add_field(
        "init_image", picture.getvalue(), filename="square.png", content_type="image/png"
    )
    async with http.post(
        f"{api.base}{PREFIX}/generate", data=form, headers={**auth(key), "Prefer": "wait=60"}
    ) as answer:
        job = await answer.json()
    assert answer.status == 200, job
    assert job["status"] == "succeeded" and job["input"]["operation"] == "img2img"
    wrong = aiohttp.FormData()
    wrong.add_field("prompt", "a cat")
    wrong.add_field("steps", "many")
    wrong.add_field("notes", b"a file where text belongs", filename="notes.txt")
    async with http.post(f"{api.base}{PREFIX}/generate", data=wrong, headers=auth(key)) as answer:
        assert answer.status == 422
        assert (await answer.json())["error"]["field"] in ("notes", "steps")


async def test_the_operator_dashboard_is_for_operator_keys_only(
    api: ApiProcess, key: str, http: aiohttp.ClientSession
) -> None:
    operator = api.new_key("dashboard", "--operator")
    assert "OPERATOR" in api.apikey("list")
    status, job = await generate(http, api, key, prompt="a counted lamp", count=2)
    assert status == 202
    await follow(http, str(job["urls"]["events"]), key)  # type: ignore[index]
    for path in ("/admin/usage", "/admin/usage/chart.png"):
        async with http.get(f"{api.base}{PREFIX}{path}", headers=auth(key)) as answer:
            body = await answer.json()
            assert answer.status == 403 and body["error"]["code"] == "forbidden"
    async with http.get(
        f"{api.base}{PREFIX}/admin/usage", params={"period": "day"}, headers=auth(operator)
    ) as answer:
        usage = await answer.json()
    assert answer.status == 200
    assert usage["summary"]["jobs"] >= 1 and usage["summary"]["images"] >= 2
    assert usage["summary"]["active_users"] >= 1 and len(usage["days"]) == 1
    assert usage["summary"]["total_p95_s"] is not None
    async with http.get(
        f"{api.base}{PREFIX}/admin/usage", params={"server": "dm"}, headers=auth(operator)
    ) as answer:
        assert answer.status == 200 and len((await answer.json())["days"]) == 7
    async with http.get(
        f"{api.base}{PREFIX}/admin/usage", params={"period": "year"}, headers=auth(operator)
    ) as answer:
        assert answer.status == 422 and (await answer.json())["error"]["field"] == "period"
    async with http.get(
        f"{api.base}{PREFIX}/admin/usage/chart.png", headers=auth(operator)
    ) as answer:
        assert answer.status == 200 and answer.headers["Content-Type"] == "image/png"
        assert (await answer.read()).startswith(b"\x89PNG")


async def test_a_style_wraps_the_prompt_and_an_unknown_one_names_the_field(
    api: ApiProcess, key: str, http: aiohttp.ClientSession
) -> None:
    status, job = await generate(http, api, key, prompt="a lone tree", style="pixel art")
    assert status == 202
    assert str(job["input"]["prompt"]).startswith("pixel art of a lone tree")  # type: ignore[index]
    status, refused = await generate(http, api, key, prompt="a lone tree", style="vaporwave")
    assert status == 422 and refused["error"]["field"] == "style"  # type: ignore[index]


async def test_a_starting_image_can_be_a_link_and_private_links_are_refused(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(picture, format="PNG")

    async def square(request: web.Request) -> web.Response:
        return web.Response(body=picture.getvalue(), content_type="image/png")

    async with local_server({"/square.png": square}) as origin:
        # The test setting stands in for a public https server: this one host:port only.
        api = await start_api(tmp_path / "data", LINK_TEST_HOSTS=origin.removeprefix("http://"))
        try:
            await _generate_from_links(http, api, origin)
        finally:
            await api.stop()


async def _generate_from_links(http: aiohttp.ClientSession, api: ApiProcess, origin: str) -> None:
    key = api.new_key()
    url = f"{api.base}{PREFIX}/generate"
    body = {
        "prompt": "a red square, remixed",
        "operation": "img2img",
        "steps": 4,
        "strength": 0.5,
        "init_image_url": f"{origin}/square.png",
    }
    async with http.post(url, json=body, headers={**auth(key), "Prefer": "wait=60"}) as answer:
        job = await answer.json()
    assert answer.status == 200 and job["status"] == "succeeded", job
    port = int(origin.rsplit(":", 1)[1])
    refused = {
        f"http://127.0.0.1:{port + 1}/square.png": "private or local address",
        "https://169.254.169.254/latest/meta-data": "private or local address",
        "http://example.com/a.png": "Only https links",
        "not a link": "not a web address",
    }
    for link, message in refused.items():
        wrong = {**body, "init_image_url": link}
        async with http.post(url, json=wrong, headers=auth(key)) as answer:
            error = (await answer.json())["error"]
        assert answer.status == 422 and error["field"] == "init_image_url", error
        assert message in error["message"], error


async def refine(
    http: aiohttp.ClientSession, api: ApiProcess, key: str, **body: object
) -> tuple[int, dict[str, object]]:
    async with http.post(f"{api.base}{PREFIX}/refine", json=body, headers=auth(key)) as answer:
        return answer.status, await answer.json()


async def finished(http: aiohttp.ClientSession, job: dict[str, object], key: str) -> None:
    stream = await follow(http, job["urls"]["events"], key)  # type: ignore[index]
    assert stream[-1].name == "succeeded", stream[-1]


async def test_a_conversation_refines_each_result_from_the_last(
    api: ApiProcess, key: str, http: aiohttp.ClientSession
) -> None:
    _, job = await generate(http, api, key, prompt="a fox in a field", count=1)
    await finished(http, job, key)
    expected = (
        ("make it night", "a fox in a field, night"),
        ("add a red hat", "a fox in a field, night, a red hat"),
        ("더 밝게", "a fox in a field, night, a red hat, (bright:1.3)"),
    )
    for instruction, prompt in expected:
        status, child = await refine(http, api, key, parent_id=job["id"], instruction=instruction)
        assert status == 202, child
        assert child["parent_id"] == job["id"] and child["input"]["prompt"] == prompt  # type: ignore[index]
        assert child["input"]["operation"] == "img2img"  # type: ignore[index]
        assert child["notes"] == [f"The prompt was refined by rule: {prompt}"]
        await finished(http, child, key)
        job = child
    refusals = (
        ({"parent_id": "nope", "instruction": "make it night"}, 404, None),
        ({"parent_id": job["id"], "instruction": "   "}, 422, "instruction"),
        ({"parent_id": job["id"], "instruction": "x", "image": 2}, 422, "image"),
        ({"parent_id": job["id"], "instruction": "x" * 501}, 422, "instruction"),
    )
    for body, code, field in refusals:
        status, answer = await refine(http, api, key, **body)
        assert status == code, answer
        assert answer["error"]["field"] == field  # type: ignore[index]
    stranger = api.new_key("stranger")
    status, _ = await refine(http, api, stranger, parent_id=job["id"], instruction="make it night")
    assert status == 404  # someone else's job is not there for them


async def test_an_llm_endpoint_refines_and_the_rule_covers_its_timeouts(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    behaviour = {"slow": False}

    async def chat(request: web.Request) -> web.Response:
        if behaviour["slow"]:
            await asyncio.sleep(3)
        body = await request.json()
        asked = json.loads(body["messages"][1]["content"])
        answer = {"prompt": f"{asked['prompt']}, under the moon", "negative_prompt": "daylight"}
        reply = {"choices": [{"message": {"role": "assistant", "content": json.dumps(answer)}}]}
        return web.json_response(reply)

    async with local_server({"/v1/chat/completions": chat}, method="POST") as origin:
        api = await start_api(tmp_path / "data", LLM_BASE_URL=f"{origin}/v1", LLM_TIMEOUT_S="1")
        try:
            await _refine_through_the_llm(http, api, behaviour)
        finally:
            await api.stop()


async def _refine_through_the_llm(
    http: aiohttp.ClientSession, api: ApiProcess, behaviour: dict[str, bool]
) -> None:
    key = api.new_key()
    _, job = await generate(http, api, key, prompt="a fox", count=1)
    await finished(http, job, key)
    status, by_llm = await refine(http, api, key, parent_id=job["id"], instruction="밤으로")
    assert status == 202 and by_llm["input"]["prompt"] == "a fox, under the moon"  # type: ignore[index]
    assert by_llm["input"]["negative_prompt"] == "daylight"  # type: ignore[index]
    await finished(http, by_llm, key)
    behaviour["slow"] = True
    status, by_rule = await refine(
        http, api, key, parent_id=by_llm["id"], instruction="add a lantern"
    )
    assert status == 202, by_rule
    assert by_rule["input"]["prompt"] == "a fox, under the moon, a lantern"  # type: ignore[index]
    assert by_rule["notes"][0].startswith("The prompt was refined by rule")  # type: ignore[index]
