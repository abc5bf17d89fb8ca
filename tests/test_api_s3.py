"""The HTTP API with its images in S3: the product as its own process (tiny model, API only)
against a real S3-compatible server. Job output links go straight to the bucket (presigned
for private images, the public address for shared ones) and serve the same bytes as the
API's own routes, which keep working."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import boto3
import pytest
import pytest_asyncio
from api_support import PREFIX, ApiProcess, auth, free_port, product_env, start_api
from e2e_support import ROOT
from s3_support import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server, presigned_url_problem

pytestmark = pytest.mark.asyncio(loop_scope="module")
PRESIGN_SECONDS = 300


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bucket(s3_server: S3Server) -> str:
    return s3_server.bucket_name("api")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def api(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, bucket: str
) -> AsyncIterator[ApiProcess]:
    data_dir = tmp_path_factory.mktemp("api-s3") / "data"
    server = await start_api(
        data_dir,
        **s3_server.env(
            bucket,
            S3_PREFIX="chat/",
            # The "CDN" is the bucket's own address, made publicly readable below.
            S3_PUBLIC_BASE_URL=f"{s3_server.endpoint}/{bucket}",
            S3_PRESIGN_SECONDS=str(PRESIGN_SECONDS),
        ),
    )
    yield server
    await server.stop()
    assert SECRET_ACCESS_KEY not in server.output


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def key(api: ApiProcess) -> str:
    return api.new_key("s3")


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def wait_for_job(
    http: aiohttp.ClientSession, api: ApiProcess, key: str, prompt: str
) -> dict[str, object]:
    async with http.post(
        f"{api.base}{PREFIX}/generate",
        json={"prompt": prompt, "steps": 2, "count": 2},
        headers={**auth(key), "Prefer": "wait=60"},
    ) as answer:
        assert answer.status == 200, await answer.text()
        job: dict[str, object] = await answer.json()
    assert job["status"] == "succeeded"
    return job


async def plain_get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, str]:
    async with http.get(url) as answer:  # no key: what a browser or a script does
        return answer.status, await answer.read(), answer.headers.get("Cache-Control", "")


async def test_private_images_get_presigned_links_to_the_bucket(
    api: ApiProcess, key: str, http: aiohttp.ClientSession, s3_server: S3Server, bucket: str
) -> None:
    job = await wait_for_job(http, api, key, "a lighthouse at dusk")
    output, routes = job["output"], job["image_routes"]
    assert isinstance(output, list) and isinstance(routes, list) and len(output) == 2
    for link, route in zip(output, routes, strict=True):
        assert link.startswith(f"{s3_server.endpoint}/{bucket}/chat/")
        assert f"X-Amz-Expires={PRESIGN_SECONDS}" in link
        assert presigned_url_problem(link) is None
        status, direct, cache = await plain_get(http, link)
        assert status == 200 and direct.startswith(b"\x89PNG")
        assert "immutable" in cache
        async with http.get(route, headers=auth(key)) as answer:  # the API's own route
            assert answer.status == 200
            assert await answer.read() == direct
        async with http.get(route.replace(".png", "/thumb.webp"), headers=auth(key)) as answer:
            assert answer.status == 200 and answer.content_type == "image/webp"
    # The OpenAI-compatible route hands out the same kind of link.
    async with http.post(
        f"{api.base}/v1/images/generations",
        json={"prompt": "a lighthouse", "n": 1, "size": "64x64"},
        headers=auth(key),
    ) as answer:
        assert answer.status == 200, await answer.text()
        [image] = (await answer.json())["data"]
    assert presigned_url_problem(image["url"]) is None
    assert (await plain_get(http, image["url"]))[0] == 200


async def test_shared_images_get_the_public_address(
    api: ApiProcess, key: str, http: aiohttp.ClientSession, s3_server: S3Server, bucket: str
) -> None:
    # What an operator does for a CDN origin: anyone may read the bucket's objects.
    boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    ).put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": "s3:GetObject",
                        "Resource": f"arn:aws:s3:::{bucket}/*",
                    }
                ],
            }
        ),
    )
    job = await wait_for_job(http, api, key, "a harbour in fog")
    private_links = job["output"]
    assert isinstance(private_links, list)
    async with http.post(f"{api.base}{PREFIX}/jobs/{job['id']}/share", headers=auth(key)) as r:
        assert r.status == 200
        page_url = (await r.json())["url"]
    async with http.get(f"{api.base}{PREFIX}/jobs/{job['id']}", headers=auth(key)) as r:
        shared = await r.json()
    public = shared["output"]
    assert len(public) == 2 and all("X-Amz-" not in link for link in public)
    for link, private in zip(public, private_links, strict=True):
        # <S3_PUBLIC_BASE_URL>/<S3_PREFIX><ab/cd/sha256.png>, the same object as before.
        assert link == private.split("?")[0]
        assert link.startswith(f"{s3_server.endpoint}/{bucket}/chat/")
        status, body, _ = await plain_get(http, link)
        assert status == 200 and body.startswith(b"\x89PNG")
    # The share page shows them from the public address, and its policy lets them load.
    async with http.get(page_url) as answer:
        assert answer.status == 200
        page = await answer.text()
        policy = answer.headers["Content-Security-Policy"]
    assert all(link in page for link in public)
    assert f"img-src 'self' {s3_server.endpoint}" in policy
    # The page's own image route still answers (it streams from the bucket).
    first = (await plain_get(http, public[0]))[1]
    async with http.get(f"{api.base}/share/{job['id']}/1.png") as answer:
        assert answer.status == 200 and await answer.read() == first
    async with http.post(f"{api.base}{PREFIX}/jobs/{job['id']}/unshare", headers=auth(key)) as r:
        assert r.status == 200
    async with http.get(f"{api.base}{PREFIX}/jobs/{job['id']}", headers=auth(key)) as r:
        again = (await r.json())["output"]
    assert all(presigned_url_problem(link) is None for link in again)  # private again


async def test_an_unreachable_bucket_stops_the_start_with_one_clear_line(
    tmp_path: Path, s3_server: S3Server
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    env = product_env(
        tmp_path / "data",
        API_PORT=str(free_port()),
        **{**s3_server.env("unreachable"), "S3_ENDPOINT_URL": endpoint},
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(process.communicate(), 120))[0].decode()
    assert process.returncode == 1, output
    [line] = [line for line in output.splitlines() if "could not start" in line]
    assert f"image bucket 'unreachable' at {endpoint} cannot be used" in line
    assert "S3_ENDPOINT_URL" in line
    assert SECRET_ACCESS_KEY not in output and ACCESS_KEY_ID not in output
    assert not (tmp_path / "data" / "diffusion-chat.sqlite3").exists()  # stopped before it
