"""Errors storage raises.

``StorageUserError`` and its subclasses carry a message that is safe to show to the user who
caused them (the bot turns them into ephemeral replies). Everything else is an operator's
problem: log it with an incident id.
"""

from __future__ import annotations

import datetime as dt
import enum

from core.errors import N_


class StorageError(Exception):
    """Base class of every error raised by ``core.storage``."""


class StorageUserError(StorageError):
    """``str(error)`` is safe and useful to show to the user who triggered it."""


class DatabaseUnreachable(StorageError):
    """The PostgreSQL server of ``DATABASE_URL`` cannot be reached or refuses the login.
    The message names the URL without its password."""


# --- schema -----------------------------------------------------------------------------


class SchemaError(StorageError):
    """The database file's schema cannot be used by this version of the code."""


class SchemaTooNew(SchemaError):
    """The database was written by a newer Diffusion Chat; a downgrade is refused."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"The database {path} has schema version {found}, but this version of Diffusion "
            f"Chat only knows versions up to {supported}. Refusing to downgrade it: run the "
            f"newer Diffusion Chat that wrote it, or restore a backup made before the upgrade "
            f"(migrations keep one next to the database as '<name>.v<version>.bak')."
        )


class SchemaOutdated(SchemaError):
    """The database needs migrations and the caller asked not to apply them."""

    def __init__(self, path: str, found: int, latest: int) -> None:
        self.path = path
        self.found = found
        self.latest = latest
        super().__init__(
            f"The database {path} has schema version {found}; this code needs {latest}. "
            f"Run 'diffusion-chat migrate' to upgrade it."
        )


class NotOurDatabase(SchemaError):
    """The file is an SQLite database of some other application."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(
            f"{path} is not a Diffusion Chat database ({detail}). Point DATA_DIR at a "
            f"directory of its own."
        )


class DatabaseDamaged(SchemaError):
    """SQLite's integrity check failed, or the file is cut short: reading it would lose or
    invent records."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"The database {path} is damaged ({detail}).")


class EmptyDatabaseBesideImages(SchemaError):
    """The database file is empty or missing while the image store beside it holds images:
    starting would silently forget every user's history, favourites and quotas."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"The database {path} is empty or missing, but stored images are next to it."
        )


class DatabaseBusy(StorageError):
    """Another connection held the write lock for longer than the busy timeout."""


# --- records ----------------------------------------------------------------------------


class NotFound(StorageError, LookupError):
    """A record that the caller named does not exist."""


class JobNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"There is no job {job_id!r}.")


class ImageNotFound(NotFound):
    """No image record, or no stored file under that key."""


class ImageStoreUnavailable(StorageError, OSError):
    """The image bucket cannot be reached or refuses us (``S3ImageStore``). An ``OSError``
    too, so the job service retries a result's images while it lasts, as it does for a full
    disk, and start-up reports it as a storage failure."""


class InvalidTransition(StorageError):
    """A job status change that its life cycle does not allow (a done job cannot run)."""

    def __init__(self, job_id: str, current: str, requested: str) -> None:
        self.job_id = job_id
        self.current = current
        self.requested = requested
        super().__init__(f"Job {job_id} is {current}; it cannot become {requested}.")


class InvalidInput(StorageUserError, ValueError):
    """A value storage refuses to keep (empty banned word, negative limit, ...)."""


class InvalidText(InvalidInput):
    """Text that cannot be stored as UTF-8 (for example an unpaired surrogate)."""


class InvalidImage(InvalidInput):
    """Bytes handed to the image store that are not a readable image."""


class InvalidKey(StorageError, ValueError):
    """A key that the image store did not produce (and must not be turned into a path)."""


# --- quotas -----------------------------------------------------------------------------


class LimitKind(enum.StrEnum):
    DAILY_IMAGES = "daily_images"
    CONCURRENT_JOBS = "concurrent_jobs"


class QuotaExceeded(StorageUserError):
    """Creating the job would break the user's quota; nothing was written.

    ``limit_kind``: which limit; ``limit``: its value; ``used``: images used today (daily) or
    unfinished jobs (concurrent); ``requested``: images (daily) or 1 (concurrent);
    ``resets_at``: next UTC midnight for the daily limit, ``None`` for the concurrent limit
    (it frees up when a job ends).
    """

    def __init__(
        self,
        limit_kind: LimitKind,
        *,
        limit: int,
        used: int,
        requested: int,
        resets_at: dt.datetime | None,
    ) -> None:
        self.limit_kind = limit_kind
        self.limit = limit
        self.used = used
        self.requested = requested
        self.resets_at = resets_at
        self.template, self.values = self._template()
        super().__init__(self.template.format(**self.values))

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    def _template(self) -> tuple[str, dict[str, object]]:
        """The message as a template and its values, so a front door can translate it."""
        values: dict[str, object] = {
            "limit": self.limit,
            "used": self.used,
            "remaining": self.remaining,
            "requested": self.requested,
        }
        if self.limit_kind is LimitKind.DAILY_IMAGES:
            if self.resets_at is None:
                template = (
                    N_("You have used all {limit} of your images for today.")
                    if self.remaining == 0
                    else N_(
                        "You have {remaining} of your {limit} images left today, and this "
                        "needs {requested}."
                    )
                )
                return template, values
            values["time"] = f"{self.resets_at:%H:%M}"
            template = (
                N_("You have used all {limit} of your images for today. It resets at {time} UTC.")
                if self.remaining == 0
                else N_(
                    "You have {remaining} of your {limit} images left today, and this needs "
                    "{requested}. It resets at {time} UTC."
                )
            )
            return template, values
        template = (
            N_(
                "You already have {used} unfinished job (the limit is {limit}). Wait for one "
                "to finish, or cancel one."
            )
            if self.limit == 1
            else N_(
                "You already have {used} unfinished jobs (the limit is {limit}). Wait for one "
                "to finish, or cancel one."
            )
        )
        return template, values
