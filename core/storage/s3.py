"""Images in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, ...): the ``ImageStore`` that
several front processes share.

Same keys as ``LocalImageStore`` (``ab/cd/<sha256>.<ext>``, under an optional prefix), so a
store can move from disk to a bucket by copying the files as they are. An S3 PUT is atomic
(readers see the whole object or none), which is what ``LocalImageStore``'s rename buys on
disk. Every object gets its Content-Type and a year-long immutable Cache-Control: a key names
its content, so what is behind it never changes.

boto3 in worker threads (``asyncio.to_thread``) rather than aiobotocore: a boto3 client is
thread-safe and needs no event-loop-bound session to open and close; the store makes a few
requests per image, so a thread each costs nothing next to the request; and aiobotocore pins
one exact botocore version, which fights any other boto3 user in the same environment. The
local store runs its file I/O in threads the same way.

Credentials never leave the client: they are not in ``repr``, in a message or in a URL (a
presigned URL carries the access key id, which AWS treats as public, and a signature).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .errors import ImageNotFound, ImageStoreUnavailable
from .files import _KEY, StoredObject, check_key, content_key

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTENT_TYPES = {
    "png": "image/png",
    "webp": "image/webp",
    "jpg": "image/jpeg",
    "bin": "application/octet-stream",
}
# A key names its bytes, so a cached copy is never stale: a year, and never revalidated.
CACHE_CONTROL = "max-age=31536000, immutable"
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_LIST_PAGE = 1000  # S3's largest page


class S3ImageStore:
    """Objects ``<prefix><key>`` in ``bucket``. ``public_base_url``: where the public (CDN)
    copy of the bucket is, for ``url_for``; ``presign_seconds``: how long a presigned link to
    a private image works."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
        public_base_url: str | None = None,
        presign_seconds: int = 3600,
        connect_timeout_s: float = 5.0,
        attempts: int = 3,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.prefix = prefix
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.presign_seconds = presign_seconds
        self._secrets = tuple(s for s in (access_key_id, secret_access_key) if s)
        config = Config(
            signature_version="s3v4",
            connect_timeout=connect_timeout_s,
            read_timeout=60,
            retries={"total_max_attempts": attempts, "mode": "standard"},
            max_pool_connections=16,
            # A custom endpoint (MinIO, a test server) rarely has a DNS name per bucket.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            # boto3 1.36+ adds CRC checksums that many S3-compatible servers refuse; put()
            # sends a Content-MD5 instead, which every one of them checks.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    def __repr__(self) -> str:
        return f"S3ImageStore(bucket={self.bucket!r}, endpoint={self.where!r})"

    @property
    def where(self) -> str:
        """The endpoint in words, for messages (never a credential)."""
        if self.endpoint_url:
            return self.endpoint_url
        return f"AWS S3 ({self.region})" if self.region else "AWS S3"

    # -- the interface

    async def put(self, data: bytes, *, ext: str | None = None) -> str:
        key = content_key(data, ext)
        await self._run(self._put_sync, key, bytes(data))
        return key

    async def get(self, key: str) -> bytes:
        return await self._run(self._get_sync, self._name(key))

    async def open(self, key: str) -> BinaryIO:
        # Images are a few MiB at most: one read, then a file object over the bytes.
        return io.BytesIO(await self.get(key))

    async def exists(self, key: str) -> bool:
        return await self._run(self._head, self._name(key)) is not None

    async def stat(self, key: str) -> StoredObject | None:
        head = await self._run(self._head, self._name(key))
        return None if head is None else StoredObject(key, head.size, head.modified_at)

    async def delete(self, key: str) -> bool:
        name = self._name(key)
        # DELETE answers 204 whether or not there was an object: ask first.
        if await self._run(self._head, name) is None:
            return False
        await self._run(self._call, "delete_object", Bucket=self.bucket, Key=name)
        return True

    async def scan(self) -> AsyncIterator[StoredObject]:
        token: str | None = None
        while True:
            items, token = await self._run(self._list_page, token)
            for item in items:
                yield item
            if token is None:
                return

    # -- S3 extras

    async def ensure_bucket(self) -> bool:
        """Check that the bucket can be used, creating it when it does not exist. Returns
        whether it was created. Raises ``ImageStoreUnavailable`` naming the endpoint and the
        bucket (never the keys) when it cannot be reached or is refused."""
        return await self._run(self._ensure_bucket_sync)

    def url_for(self, key: str, *, public: bool) -> str:
        """A link anyone can open without our API: ``<public base>/<prefix><key>`` for a
        public image when a public base URL is set, else a presigned GET that works for
        ``presign_seconds``. Signing is local (no request), so this is cheap."""
        name = self._name(key)
        if public and self.public_base_url:
            return f"{self.public_base_url}/{name}"
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": name},
            ExpiresIn=self.presign_seconds,
        )
        return url

    # -- blocking helpers (run in a thread)

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _put_sync(self, key: str, data: bytes) -> None:
        name = self.prefix + key
        extension = key.rsplit(".", 1)[1]
        headers = {"ContentType": CONTENT_TYPES[extension], "CacheControl": CACHE_CONTROL}
        head = self._head(name)
        if head is not None and head.size == len(data):
            # Already there (same hash, same length): copy it onto itself, which renews its
            # modification time as the local store's utime does, so retention spares it.
            self._call(
                "copy_object",
                Bucket=self.bucket,
                Key=name,
                CopySource={"Bucket": self.bucket, "Key": name},
                MetadataDirective="REPLACE",
                **headers,
            )
            return
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        self._call(
            "put_object",
            Bucket=self.bucket,
            Key=name,
            Body=data,
            ContentMD5=base64.b64encode(digest).decode(),  # a damaged upload is refused
            **headers,
        )

    def _get_sync(self, name: str) -> bytes:
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=name)
            data: bytes = answer["Body"].read()
        except ClientError as error:
            if _code(error) in _MISSING:
                raise ImageNotFound(f"no stored image {name!r}") from None
            raise self._unavailable(error) from None
        except BotoCoreError as error:
            raise self._unavailable(error) from None
        return data

    def _head(self, name: str) -> _Head | None:
        try:
            answer = self._client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            raise self._unavailable(error) from None
        except BotoCoreError as error:
            raise self._unavailable(error) from None
        return _Head(int(answer["ContentLength"]), answer["LastModified"].astimezone(dt.UTC))

    def _list_page(self, token: str | None) -> tuple[list[StoredObject], str | None]:
        options: dict[str, Any] = {"Bucket": self.bucket, "MaxKeys": _LIST_PAGE}
        if self.prefix:
            options["Prefix"] = self.prefix
        if token:
            options["ContinuationToken"] = token
        answer = self._call("list_objects_v2", **options)
        found = []
        for entry in answer.get("Contents", []):
            key = entry["Key"][len(self.prefix) :]
            if _KEY.match(key):  # anything else in the bucket is not ours
                modified = entry["LastModified"].astimezone(dt.UTC)
                found.append(StoredObject(key, int(entry["Size"]), modified))
        following = answer.get("NextContinuationToken") if answer.get("IsTruncated") else None
        return found, following

    def _ensure_bucket_sync(self) -> bool:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as error:
            if _code(error) not in _MISSING:
                raise self._unavailable(error) from None
        except BotoCoreError as error:
            raise self._unavailable(error) from None
        options: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":  # AWS refuses the default region here
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**options)
        except ClientError as error:
            if _code(error) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False  # another front process made it a moment ago
            raise self._unavailable(error, "could not be created") from None
        except BotoCoreError as error:
            raise self._unavailable(error, "could not be created") from None
        log.info("created the image bucket %r at %s", self.bucket, self.where)
        return True

    def _call(self, operation: str, **params: Any) -> Any:
        try:
            return getattr(self._client, operation)(**params)
        except (ClientError, BotoCoreError) as error:
            raise self._unavailable(error) from None

    def _unavailable(self, error: Exception, what: str = "cannot be used") -> ImageStoreUnavailable:
        """One line naming the bucket, the endpoint and what S3 said; the cause is dropped
        (``from None`` at the callers) and any credential is blanked, so neither a log nor
        an error report can carry one."""
        detail = str(error).rstrip(".")
        for secret in self._secrets:
            detail = detail.replace(secret, "<hidden>")
        hint = ""
        code = _code(error) if isinstance(error, ClientError) else ""
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            hint = (
                " Check S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, and that the key may read,"
                " write, list and delete in this bucket."
            )
        elif not code:
            hint = " Is S3_ENDPOINT_URL right, and is the server running and reachable?"
        return ImageStoreUnavailable(
            f"image bucket {self.bucket!r} at {self.where} {what}: {detail}.{hint}"
        )

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(function, *args, **kwargs)


class _Head:
    __slots__ = ("modified_at", "size")

    def __init__(self, size: int, modified_at: dt.datetime) -> None:
        self.size = size
        self.modified_at = modified_at


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
