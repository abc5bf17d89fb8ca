"""A real S3-compatible server for the tests (moto's, over HTTP on 127.0.0.1), fresh buckets
on it, and an independent check of presigned URLs.

moto serves a presigned GET without checking its signature or its expiry (it only checks
signatures sent in an ``Authorization`` header, and only with its IAM checks on), so
``presigned_url_problem`` checks both the way S3 does (AWS Signature Version 4, query
form), written from the specification rather than with botocore's signer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import os
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

from core.storage.s3 import S3ImageStore

ACCESS_KEY_ID = "AKIATESTS3STORE00001"
SECRET_ACCESS_KEY = "tests-secret-access-key/do-not-log-me"
REGION = "us-east-1"
_buckets = itertools.count(1)


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>

    def bucket_name(self, stem: str = "images") -> str:
        """A bucket name no other test uses (buckets are not created here)."""
        return f"{stem}-{os.getpid()}-{next(_buckets)}"

    def env(self, bucket: str, **extra: str) -> dict[str, str]:
        """The product's S3_* settings for ``bucket`` on this server."""
        return {
            "S3_BUCKET": bucket,
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_REGION": REGION,
            "S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            **extra,
        }


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def presigned_url_problem(
    url: str, *, secret: str = SECRET_ACCESS_KEY, now: dt.datetime | None = None
) -> str | None:
    """Why S3 would refuse this presigned GET (``None``: it would serve it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return "not a SigV4 presigned URL"
    signed_at = dt.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    expires = dt.timedelta(seconds=int(params["X-Amz-Expires"]))
    if (now or dt.datetime.now(dt.UTC)) > signed_at + expires:
        return "expired"
    if params.get("X-Amz-SignedHeaders") != "host":
        return "signs more than the host"
    canonical_query = "&".join(
        f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}"
        for name, value in sorted(query)
        if name != "X-Amz-Signature"
    )
    canonical_request = "\n".join(
        [
            "GET",
            quote(parts.path, safe="/-_.~"),
            canonical_query,
            f"host:{parts.netloc}",
            "",
            "host",
            "UNSIGNED-PAYLOAD",
        ]
    )
    _, date, region, service, _ = params["X-Amz-Credential"].split("/")
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = _hmac(("AWS4" + secret).encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, params.get("X-Amz-Signature", "")):
        return "signature does not match"
    return None


async def s3_store(server: S3Server, **options: object) -> S3ImageStore:
    """An ``S3ImageStore`` on a fresh bucket of ``server``, the bucket made."""
    store = S3ImageStore(
        server.bucket_name(),
        endpoint_url=server.endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        **options,  # type: ignore[arg-type]
    )
    await store.ensure_bucket()
    return store
