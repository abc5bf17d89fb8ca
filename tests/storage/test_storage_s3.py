"""What only the S3 image store does: links that need no API key, object headers, a bucket
made at start, errors that name the endpoint and bucket but no key, listing in pages."""

from __future__ import annotations

import datetime as dt
import socket
import time
from typing import Any

import aiohttp
import boto3
import pytest
from s3_support import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    S3Server,
    presigned_url_problem,
    s3_store,
)
from storage_helpers import make_png

from core.config import load_settings
from core.image_storage import describe_image_store, image_store, open_image_store
from core.storage import ImageStoreUnavailable, LinkedImageStore, LocalImageStore, content_key
from core.storage.s3 import CACHE_CONTROL, S3ImageStore


def raw_client(server: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


async def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
    """A plain HTTP GET, as a browser or a script would do it: no key, no SDK."""
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        return answer.status, await answer.read(), dict(answer.headers)


@pytest.mark.asyncio
async def test_a_presigned_link_serves_the_image_and_only_as_signed(s3_server: S3Server) -> None:
    store = await s3_store(s3_server, presign_seconds=120)
    assert isinstance(store, S3ImageStore) and isinstance(store, LinkedImageStore)
    data = make_png(20)
    key = await store.put(data)
    url = store.url_for(key, public=False)  # no public base URL: always presigned
    for link in (url, store.url_for(key, public=True)):
        assert link.startswith(f"{s3_server.endpoint}/{store.bucket}/{key}?X-Amz-")
    assert "X-Amz-Expires=120" in url and SECRET_ACCESS_KEY not in url

    status, body, headers = await fetch(url)
    assert (status, body) == (200, data)
    assert headers["Content-Type"] == "image/png"
    assert headers["Cache-Control"] == CACHE_CONTROL

    # S3 would serve it now, and refuse it once it expired or when any part was changed.
    assert presigned_url_problem(url) is None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=121)
    assert presigned_url_problem(url, now=later) == "expired"
    other = content_key(make_png(21))
    assert presigned_url_problem(url.replace(key, other)) == "signature does not match"
    longer = url.replace("X-Amz-Expires=120", "X-Amz-Expires=604800")
    assert presigned_url_problem(longer) == "signature does not match"


@pytest.mark.asyncio
async def test_public_links_use_the_public_base_and_the_prefix(s3_server: S3Server) -> None:
    store = await s3_store(
        s3_server, prefix="tenant-a", public_base_url="https://cdn.example.com/img/"
    )
    assert isinstance(store, S3ImageStore)
    key = await store.put(make_png(22))
    assert store.url_for(key, public=True) == f"https://cdn.example.com/img/tenant-a/{key}"
    private = store.url_for(key, public=False)
    assert private.startswith(f"{s3_server.endpoint}/{store.bucket}/tenant-a/{key}?")
    status, _, _ = await fetch(private)
    assert status == 200
    # The object is where the public URL says, under the prefix.
    listed = raw_client(s3_server).list_objects_v2(Bucket=store.bucket)["Contents"]
    assert [entry["Key"] for entry in listed] == [f"tenant-a/{key}"]


@pytest.mark.asyncio
async def test_scan_lists_only_the_store_s_objects_page_by_page(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await s3_store(s3_server, prefix="ours/")
    assert isinstance(store, S3ImageStore)
    keys = {await store.put(make_png(30 + n)) for n in range(5)}
    client = raw_client(s3_server)
    stranger = content_key(make_png(40))
    for name in ("notes.txt", f"theirs/{stranger}", "ours/readme.md", f"{stranger}"):
        client.put_object(Bucket=store.bucket, Key=name, Body=b"not ours")
    monkeypatch.setattr("core.storage.s3._LIST_PAGE", 2)  # five objects: three pages
    found = [item async for item in store.scan()]
    assert sorted(item.key for item in found) == sorted(keys)
    assert all(item.modified_at.tzinfo is dt.UTC and item.size > 0 for item in found)


@pytest.mark.asyncio
async def test_content_types_by_extension(s3_server: S3Server) -> None:
    store = await s3_store(s3_server)
    assert isinstance(store, S3ImageStore)
    client = raw_client(s3_server)
    expected = {
        make_png(50): "image/png",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ": "image/webp",
        b"\xff\xd8\xff\xe0 jpeg": "image/jpeg",
        b"anything": "application/octet-stream",
    }
    for data, media_type in expected.items():
        key = await store.put(data)
        head = client.head_object(Bucket=store.bucket, Key=key)
        assert (head["ContentType"], head["CacheControl"]) == (media_type, CACHE_CONTROL)
    # Storing again (the copy that renews the time) keeps the headers.
    key = await store.put(make_png(50))
    head = client.head_object(Bucket=store.bucket, Key=key)
    assert (head["ContentType"], head["CacheControl"]) == ("image/png", CACHE_CONTROL)


@pytest.mark.asyncio
async def test_a_missing_bucket_is_made_at_start(s3_server: S3Server) -> None:
    bucket = s3_server.bucket_name("new")
    settings = load_settings(s3_server.env(bucket), env_file=None, require_token=False)
    client = raw_client(s3_server)
    assert bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    store = await open_image_store(settings)
    assert isinstance(store, S3ImageStore)
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert not await store.ensure_bucket()  # there now: nothing to do, no error
    key = await store.put(make_png(60))
    assert await store.exists(key)
    assert describe_image_store(settings).startswith(f"S3 bucket {bucket!r} at http://")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # free again once closed: nothing listens


@pytest.mark.asyncio
async def test_an_unreachable_endpoint_is_named_without_the_keys(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {**s3_server.env("unreachable-bucket"), "S3_ENDPOINT_URL": endpoint}
    settings = load_settings(env, env_file=None, require_token=False)
    assert SECRET_ACCESS_KEY not in repr(settings) and ACCESS_KEY_ID not in repr(settings)
    started = time.monotonic()
    with pytest.raises(ImageStoreUnavailable) as raised:
        await open_image_store(settings)
    assert time.monotonic() - started < 15  # retried a little, not for ever
    message = str(raised.value)
    assert "'unreachable-bucket'" in message and endpoint in message
    assert "S3_ENDPOINT_URL" in message  # says what to check
    assert SECRET_ACCESS_KEY not in message and ACCESS_KEY_ID not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert isinstance(raised.value, OSError)  # results are retried while it lasts
    store = image_store(settings)
    assert SECRET_ACCESS_KEY not in repr(store) and ACCESS_KEY_ID not in repr(store)
    with pytest.raises(ImageStoreUnavailable):
        await store.get(content_key(b"x"))
    assert SECRET_ACCESS_KEY not in caplog.text


def test_without_a_bucket_images_stay_on_disk(tmp_path: Any) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path)}, env_file=None, require_token=False)
    store = image_store(settings)
    assert isinstance(store, LocalImageStore) and store.root == tmp_path / "images"
    assert not isinstance(store, LinkedImageStore)  # the API keeps its own routes


def test_s3_settings_are_checked_and_the_secret_never_shown() -> None:
    from core.config import SettingsError

    bad = {
        "S3_BUCKET": "Not_A_Bucket",
        "S3_ENDPOINT_URL": "minio:9000",
        "S3_PUBLIC_BASE_URL": "cdn.example.com",
        "S3_PRESIGN_SECONDS": "999999999",
        "S3_PREFIX": "../up",
    }
    with pytest.raises(SettingsError) as raised:
        load_settings(bad, env_file=None, require_token=False)
    text = str(raised.value)
    for name in bad:
        assert name in text
    good = load_settings(
        {"S3_BUCKET": "images", "S3_PREFIX": "/chat/", "S3_SECRET_ACCESS_KEY": "s3cr3t"},
        env_file=None,
        require_token=False,
    )
    assert (good.s3_prefix, good.s3_presign_seconds) == ("chat/", 3600)
    assert "s3cr3t" not in repr(good)
