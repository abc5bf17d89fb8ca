"""The image store: content-addressed keys, atomic writes, thumbnails."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from storage_helpers import make_png

from core.storage import ImageNotFound, ImageStore, InvalidKey, LocalImageStore, content_key
from core.storage.errors import InvalidImage
from core.storage.files import inspect_image

REPO = Path(__file__).resolve().parents[2]


def all_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


@pytest.mark.asyncio
async def test_put_get_open_stat_delete(any_store: ImageStore) -> None:
    store = any_store
    assert isinstance(store, ImageStore)
    data = make_png(1)
    key = await store.put(data)
    digest = hashlib.sha256(data).hexdigest()
    assert key == f"{digest[:2]}/{digest[2:4]}/{digest}.png" == content_key(data)
    assert await store.exists(key)
    assert await store.get(key) == data
    handle = await store.open(key)
    with handle:
        assert handle.read() == data
    info = await store.stat(key)
    assert info is not None and info.size == len(data) and info.key == key
    assert [item.key async for item in store.scan()] == [key]
    assert await store.delete(key)
    assert not await store.delete(key)
    assert not await store.exists(key) and await store.stat(key) is None
    with pytest.raises(ImageNotFound):
        await store.get(key)
    with pytest.raises(ImageNotFound):
        await store.open(key)


@pytest.mark.asyncio
async def test_same_content_same_key_one_file(store: LocalImageStore) -> None:
    data = make_png(2)
    keys = await asyncio.gather(*(store.put(data) for _ in range(10)))
    assert len(set(keys)) == 1
    assert len(all_files(store.root)) == 1
    os.utime(store.path_for(keys[0]), (1, 1))
    await store.put(data)  # storing again refreshes the time (protects it from retention)
    info = await store.stat(keys[0])
    assert info is not None and info.modified_at.year >= 2024
    other = await store.put(make_png(3))
    assert other != keys[0]


@pytest.mark.asyncio
async def test_storing_again_is_harmless_and_renews_the_time(any_store: ImageStore) -> None:
    store = any_store
    data = make_png(2)
    keys = await asyncio.gather(*(store.put(data) for _ in range(10)))
    assert len(set(keys)) == 1
    assert [item.key async for item in store.scan()] == keys[:1]  # one object, not ten
    first = await store.stat(keys[0])
    assert first is not None
    await asyncio.sleep(1.1)  # S3 keeps modification times to the second
    assert await store.put(data) == keys[0]
    again = await store.stat(keys[0])
    assert again is not None and again.size == first.size
    assert again.modified_at > first.modified_at  # retention sees it as in use again
    assert await store.get(keys[0]) == data


@pytest.mark.asyncio
async def test_extensions(any_store: ImageStore) -> None:
    store = any_store
    assert (await store.put(b"RIFF\x00\x00\x00\x00WEBPVP8 ")).endswith(".webp")
    assert (await store.put(b"\xff\xd8\xff\xe0 jpeg")).endswith(".jpg")
    assert (await store.put(b"anything")).endswith(".bin")
    assert (await store.put(b"anything", ext="webp")).endswith(".webp")
    with pytest.raises(ValueError):
        await store.put(b"x", ext="exe")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "aa/bb/" + "a" * 64 + ".png",  # shards do not match the hash
        "a" * 64 + ".png",
        "aa/aa/" + "a" * 64 + ".png/../../x",
        ".tmp-abc",
        "AA/AA/" + "A" * 64 + ".png",
    ],
)
async def test_keys_are_validated(any_store: ImageStore, key: str) -> None:
    store = any_store
    for call in (store.get, store.exists, store.delete, store.open, store.stat):
        with pytest.raises(InvalidKey):
            await call(key)


@pytest.mark.asyncio
async def test_no_partial_file_when_the_rename_fails(
    store: LocalImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_png(4, (128, 128))

    def crash(*args: object) -> None:
        raise OSError("disk vanished between write and rename")

    monkeypatch.setattr("core.storage.files.os.replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        await store.put(data)
    assert not await store.exists(content_key(data))
    assert all_files(store.root) == []  # the temporary file was removed too
    monkeypatch.undo()
    key = await store.put(data)
    assert await store.get(key) == data


@pytest.mark.asyncio
async def test_no_partial_file_when_the_process_dies_mid_write(
    store: LocalImageStore,
) -> None:
    """A process killed between writing the temporary file and renaming it leaves only the
    temporary file: never a partial file under the key. Readers ignore it; a later put
    writes the real file; the stale-temp sweep removes it."""
    data = make_png(5, (256, 256))
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        sys.path.insert(0, sys.argv[1])
        from core.storage import LocalImageStore
        import core.storage.files as files
        def die(*args):
            os._exit(9)  # as abrupt as SIGKILL: no cleanup handlers run
        files.os.replace = die
        data = sys.stdin.buffer.read()
        asyncio.run(LocalImageStore(sys.argv[2]).put(data))
        """
    )
    process = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, str(REPO), str(store.root)],
        input=data,
        capture_output=True,
        timeout=60,
    )
    assert process.returncode == 9, process.stderr
    key = content_key(data)
    leftovers = all_files(store.root)
    assert [path.name.startswith(".tmp-") for path in leftovers] == [True]
    assert leftovers[0].read_bytes() == data  # it was written (and fsynced) completely
    assert not await store.exists(key)
    assert [item async for item in store.scan()] == []

    assert await store.put(data) == key
    assert await store.get(key) == data
    assert await store.remove_stale_temp_files(dt.timedelta(hours=1)) == 0  # too recent
    old = time.time() - 7200
    os.utime(leftovers[0], (old, old))
    assert await store.remove_stale_temp_files(dt.timedelta(hours=1)) == 1
    assert [path.name for path in all_files(store.root)] == [key.rsplit("/", 1)[1]]


@pytest.mark.asyncio
async def test_file_io_does_not_block_the_event_loop(any_store: ImageStore) -> None:
    store = any_store
    data = os.urandom(8 * 1024 * 1024)  # large for an image: 8 MiB
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    for n in range(3):
        key = await store.put(data[n:] + bytes([n]))
        assert await store.get(key) == data[n:] + bytes([n])
    stop.set()
    await task
    assert ticks > 3  # the loop kept running while files were written and read


def test_thumbnails() -> None:
    facts = inspect_image(make_png(6, (1024, 512)))
    assert (facts.width, facts.height) == (1024, 512)
    from PIL import Image

    with Image.open(io.BytesIO(facts.thumbnail)) as thumb:
        assert thumb.format == "WEBP"
        assert max(thumb.size) <= 256 and thumb.size == (256, 128)
    rgba = io.BytesIO()
    Image.new("RGBA", (300, 300), (1, 2, 3, 4)).save(rgba, "PNG")
    with Image.open(io.BytesIO(inspect_image(rgba.getvalue()).thumbnail)) as thumb:
        assert thumb.mode == "RGBA"
    small = inspect_image(make_png(7, (32, 32)))
    with Image.open(io.BytesIO(small.thumbnail)) as thumb:
        assert thumb.size == (32, 32)  # never enlarged
    with pytest.raises(InvalidImage):
        inspect_image(b"not an image")
