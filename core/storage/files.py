"""Image files: a small store interface, its local-disk implementation, and thumbnails.

Keys are content addressed: ``ab/cd/<sha256 hex>.<ext>``. The same bytes always get the same
key, so storing an image twice is harmless and costs no space. A key is also a valid S3
object name, so an ``S3ImageStore`` can implement ``ImageStore`` with the same keys.

``LocalImageStore`` writes atomically: bytes go to a temporary file in the final directory,
are fsynced, renamed over the final name with ``os.replace``, and the directory is fsynced.
A crash at any point leaves either no file or the whole file under the key, never a part of
one. Temporary files (``.tmp-*``) are never a key; ``remove_stale_temp_files`` deletes the
ones a crash left behind. All file I/O runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import io
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from .clock import UTC
from .errors import ImageNotFound, InvalidImage, InvalidKey

THUMBNAIL_SIZE = 256
_KEY = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})\.(png|webp|jpg|bin)$")
_TEMP_PREFIX = ".tmp-"
_EXTENSIONS = ("png", "webp", "jpg", "bin")


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    modified_at: dt.datetime


@runtime_checkable
class ImageStore(Protocol):
    """Where image bytes live. Keys are produced by ``put``; callers never invent them."""

    async def put(self, data: bytes, *, ext: str | None = None) -> str:
        """Store ``data``; return its key. Idempotent: the same bytes give the same key (and
        refresh the object's modification time, which protects it from retention)."""
        ...

    async def get(self, key: str) -> bytes:
        """The stored bytes. Raises ``ImageNotFound``."""
        ...

    async def open(self, key: str) -> BinaryIO:
        """A readable binary file object (for uploading); the caller closes it.
        Raises ``ImageNotFound``."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def stat(self, key: str) -> StoredObject | None: ...

    async def delete(self, key: str) -> bool:
        """Remove the object; ``False`` if there was none."""
        ...

    def scan(self) -> AsyncIterator[StoredObject]:
        """Every stored object (never temporary files), in no particular order."""
        ...


@runtime_checkable
class LinkedImageStore(Protocol):
    """A store whose images can be fetched without our API (``S3ImageStore``): the API hands
    out these links instead of its own routes, so image bytes skip the front process."""

    def url_for(self, key: str, *, public: bool) -> str:
        """A link to ``key`` that needs no API key: a lasting public one when ``public`` and
        the store has a public address, else one that expires."""
        ...


def content_key(data: bytes, ext: str | None = None) -> str:
    """The key ``put`` gives ``data``."""
    return key_for(hashlib.sha256(data).hexdigest(), ext or sniff_extension(data))


def key_for(digest: str, ext: str) -> str:
    """The key of the content whose SHA-256 is ``digest`` (``hash_of_key``'s inverse)."""
    if ext not in _EXTENSIONS:
        raise ValueError(f"unsupported extension {ext!r}; use one of {_EXTENSIONS}")
    return f"{digest[:2]}/{digest[2:4]}/{digest}.{ext}"


def sniff_extension(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    return "bin"


def hash_of_key(key: str) -> str:
    match = _KEY.match(key)
    if match is None:
        raise InvalidKey(f"not an image store key: {key!r}")
    return match.group(3)


def check_key(key: str) -> str:
    match = _KEY.match(key) if isinstance(key, str) else None
    if match is None or not match.group(3).startswith(match.group(1) + match.group(2)):
        raise InvalidKey(f"not an image store key: {key!r}")
    return key


# --- thumbnails and image facts ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageFacts:
    width: int
    height: int
    content_hash: str  # sha256 hex of the encoded image
    thumbnail: bytes  # WebP, at most THUMBNAIL_SIZE on its longer side


def inspect_image(data: bytes, *, thumbnail_size: int = THUMBNAIL_SIZE) -> ImageFacts:
    """Decode ``data`` (blocking: call it in a thread): its size, hash and WebP thumbnail."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.thumbnail((thumbnail_size, thumbnail_size))
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            small = image.convert("RGBA" if has_alpha else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InvalidImage("That file is not an image that can be read.") from error
    out = io.BytesIO()
    small.save(out, format="WEBP", quality=80, method=4)
    return ImageFacts(
        width=width,
        height=height,
        content_hash=hashlib.sha256(data).hexdigest(),
        thumbnail=out.getvalue(),
    )


# --- local disk -------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalImageStore:
    """Files under ``root`` (normally ``DATA_DIR/images``), sharded by the hash's first bytes."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync  # only tests of speed should turn this off

    def __repr__(self) -> str:
        return f"LocalImageStore({str(self.root)!r})"

    def path_for(self, key: str) -> Path:
        return self.root / check_key(key)

    # -- the interface

    async def put(self, data: bytes, *, ext: str | None = None) -> str:
        key = content_key(data, ext)
        await asyncio.to_thread(self._put_sync, key, bytes(data))
        return key

    async def get(self, key: str) -> bytes:
        path = self.path_for(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise ImageNotFound(f"no stored image {key!r}") from None

    async def open(self, key: str) -> BinaryIO:
        path = self.path_for(key)
        try:
            return await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise ImageNotFound(f"no stored image {key!r}") from None

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_for(key).is_file)

    async def stat(self, key: str) -> StoredObject | None:
        return await asyncio.to_thread(self._stat_sync, key)

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self._delete_sync, key)

    async def scan(self) -> AsyncIterator[StoredObject]:
        shards = await asyncio.to_thread(self._shard_dirs)
        for shard in shards:
            for item in await asyncio.to_thread(self._scan_shard, shard):
                yield item

    # -- local extras

    async def remove_stale_temp_files(self, older_than: dt.timedelta) -> int:
        """Delete temporary files a crash left behind (older than ``older_than``)."""
        return await asyncio.to_thread(self._remove_stale_temp_sync, older_than)

    # -- blocking helpers (run in a thread)

    def _put_sync(self, key: str, data: bytes) -> None:
        path = self.root / key
        try:
            if path.stat().st_size == len(data):
                os.utime(path)  # keep it safe from retention: it is in use again
                return
        except FileNotFoundError:
            pass
        self._make_dirs(path.parent)
        fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o644)
                handle.write(data)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
        if self.fsync:
            _fsync_dir(path.parent)

    def _make_dirs(self, directory: Path) -> None:
        """Create the shard directories, fsyncing each parent whose entries changed."""
        missing: list[Path] = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            current = current.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            if self.fsync:
                _fsync_dir(folder.parent)

    def _stat_sync(self, key: str) -> StoredObject | None:
        try:
            info = self.path_for(key).stat()
        except FileNotFoundError:
            return None
        return StoredObject(key, info.st_size, dt.datetime.fromtimestamp(info.st_mtime, UTC))

    def _delete_sync(self, key: str) -> bool:
        path = self.path_for(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        if self.fsync:
            _fsync_dir(path.parent)
        return True

    def _shard_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [
            second
            for first in sorted(self.root.iterdir())
            if first.is_dir() and len(first.name) == 2
            for second in sorted(first.iterdir())
            if second.is_dir() and len(second.name) == 2
        ]

    def _scan_shard(self, shard: Path) -> list[StoredObject]:
        found = []
        for entry in os.scandir(shard):
            key = f"{shard.parent.name}/{shard.name}/{entry.name}"
            if entry.name.startswith(_TEMP_PREFIX) or not _KEY.match(key):
                continue
            with contextlib.suppress(FileNotFoundError):
                info = entry.stat()
                found.append(
                    StoredObject(key, info.st_size, dt.datetime.fromtimestamp(info.st_mtime, UTC))
                )
        return found

    def _remove_stale_temp_sync(self, older_than: dt.timedelta) -> int:
        cutoff = time.time() - older_than.total_seconds()
        removed = 0
        for shard in self._shard_dirs():
            for entry in os.scandir(shard):
                if not entry.name.startswith(_TEMP_PREFIX):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime <= cutoff:
                        os.unlink(entry.path)
                        removed += 1
        return removed
