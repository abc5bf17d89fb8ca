"""Which image store the settings ask for: files under ``DATA_DIR/images``, or an
S3-compatible bucket (``S3_BUCKET``). One place, used by the composition root and by every
``diffusion-chat`` command that opens storage, so they all see the same images."""

from __future__ import annotations

from core.config import Settings
from core.storage.files import ImageStore, LocalImageStore


def image_store(settings: Settings) -> ImageStore:
    """The configured store, not yet contacted (boto3 is imported only for a bucket)."""
    if not settings.s3_bucket:
        return LocalImageStore(settings.images_dir)
    from core.storage.s3 import S3ImageStore

    return S3ImageStore(
        settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        prefix=settings.s3_prefix,
        public_base_url=settings.s3_public_base_url,
        presign_seconds=settings.s3_presign_seconds,
    )


async def open_image_store(settings: Settings) -> ImageStore:
    """The configured store, ready: a bucket is checked and created when missing. Raises
    ``ImageStoreUnavailable`` (endpoint and bucket named, never a key) when it cannot be."""
    store = image_store(settings)
    if settings.s3_bucket:
        from core.storage.s3 import S3ImageStore

        assert isinstance(store, S3ImageStore)
        await store.ensure_bucket()
    return store


def describe_image_store(settings: Settings) -> str:
    """Where images are kept, in words (no credential), for ``doctor`` and the log."""
    if not settings.s3_bucket:
        return f"files under {settings.images_dir}"
    where = settings.s3_endpoint_url or "AWS S3" + (
        f" ({settings.s3_region})" if settings.s3_region else ""
    )
    links = (
        f"public images at {settings.s3_public_base_url}/…, private ones"
        if settings.s3_public_base_url
        else "every image"
    )
    return (
        f"S3 bucket {settings.s3_bucket!r} at {where}"
        + (f" under {settings.s3_prefix}" if settings.s3_prefix else "")
        + f"; {links} by presigned links valid {settings.s3_presign_seconds} s"
    )
