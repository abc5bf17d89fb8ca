"""The typed records storage hands out. Frozen: callers never mutate storage by accident.

A PostgreSQL backend returns the same records, so nothing here knows about SQL.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import InvalidInput

T = TypeVar("T")


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)

    @property
    def active(self) -> bool:
        """Queued or running: counts against the concurrent-job limit, resumed at start-up."""
        return not self.finished


# Which status may follow which. Finished jobs are final. ``running -> queued`` happens only
# when ``JobRepository.resume_unfinished`` requeues a job interrupted by a restart.
# ``queued -> done`` is allowed so that a result is never lost because a "started" event was.
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.QUEUED, JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.DONE: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class QuotaScope(enum.StrEnum):
    GUILD = "guild"  # the guild's default for everyone
    ROLE = "role"
    USER = "user"


class Priority(enum.IntEnum):
    """A queue plan moderators give a role or a user: the engine serves a higher tier first,
    and users within one tier fairly."""

    LOW = -1
    NORMAL = 0
    HIGH = 1

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def checked(cls, value: int) -> Priority:
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(p.label for p in cls)
            raise InvalidInput(f"The priority must be one of {known}.") from None


class PolicySource(enum.StrEnum):
    """Where an effective policy came from (for ``/quota show``)."""

    USER = "user"
    ROLE = "role"
    GUILD = "guild"
    DEFAULT = "default"  # the built-in default passed to ``Database.open``


# --- guilds and users -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuildSettings:
    """Per-guild settings. ``extra``: a JSON object for settings without a column yet."""

    extra: Mapping[str, Any] = field(default_factory=dict)
    # Where results shared with the Share button go; None: sharing is off in this server.
    gallery_channel_id: int | None = None
    # How long this server's images are kept (favourites stay); None: the operator's default.
    retention_days: int | None = None
    # The model used when a request names none; None: the registry's default.
    default_model: str | None = None
    # Registry models this server does not offer.
    disabled_models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Guild:
    id: int
    settings: GuildSettings
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class BannedWord:
    word: str  # stored trimmed and case-folded
    added_by: int | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class User:
    id: int
    created_at: dt.datetime


# --- jobs and images --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewJob:
    """What the bot knows when it accepts a request. ``request`` is the full request as JSON
    text, serialised by the caller; storage keeps it verbatim and never looks inside."""

    user_id: int
    kind: str  # the operation: "txt2img", "upscale", "variation", ...
    request: str
    prompt: str = ""
    image_count: int = 1  # images this job will make: what it spends from the daily quota
    guild_id: int | None = None  # None: a direct message
    channel_id: int | None = None
    message_id: int | None = None
    private: bool = False
    parent_job_id: str | None = None  # upscales and variations: the job and image they came from
    parent_image_index: int | None = None
    interaction_token: str | None = field(default=None, repr=False)
    token_expires_at: dt.datetime | None = None
    id: str | None = None  # None: storage draws a fresh id
    source: str = "discord"  # the front door that took it, and must show its outcome: "api"


@dataclass(frozen=True, slots=True)
class Job:
    id: str  # 12 URL-safe characters: fits in a Discord custom_id with room to spare
    user_id: int
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    interaction_token: str | None = field(repr=False)
    token_expires_at: dt.datetime | None
    kind: str
    request: str
    prompt: str
    image_count: int
    private: bool
    parent_job_id: str | None
    parent_image_index: int | None
    status: JobStatus
    attempts: int  # 1 when created; +1 each time a restart resubmits it
    error: str | None
    timings: Mapping[str, Any] | None
    generation_seconds: float | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    # When its outcome (result, failure, cancellation) was last shown to the user; a finished
    # job without it is shown again from storage after a restart.
    delivered_at: dt.datetime | None = None
    source: str = "discord"
    # Posted to the server's gallery channel by its owner (and so public from then on).
    shared_at: dt.datetime | None = None
    share_channel_id: int | None = None
    share_message_id: int | None = None
    # Taken out of the server's /gallery by a moderator (the job itself stays its owner's).
    gallery_removed_at: dt.datetime | None = None
    favourite_count: int = 0  # stars on its images, from everyone
    hidden_at: dt.datetime | None = None  # its owner deleted its message: not listed

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def active(self) -> bool:
        return self.status.active

    def token_usable(self, now: dt.datetime, *, margin: dt.timedelta | None = None) -> bool:
        """Whether the interaction token can still be used at ``now`` (minus a safety margin)."""
        if self.interaction_token is None or self.token_expires_at is None:
            return False
        margin = dt.timedelta(seconds=30) if margin is None else margin
        return now + margin < self.token_expires_at


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """An image the engine produced, before it is stored. ``data`` is the encoded PNG."""

    index: int
    seed: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class NewImage:
    """An image whose file (and thumbnail) are in the image store, ready to be recorded."""

    index: int
    seed: int
    width: int
    height: int
    content_hash: str  # sha256 hex of the file's bytes
    file_key: str
    thumbnail_key: str | None
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Image:
    id: int
    job_id: str
    index: int
    seed: int
    width: int
    height: int
    content_hash: str
    file_key: str
    thumbnail_key: str | None
    size_bytes: int
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CompletedJob:
    job: Job
    images: tuple[Image, ...]
    # The images the image check flagged: blurred ones are among ``images``, blocked ones
    # are not (they wait in the audit log for a moderator).
    flags: tuple[SafetyEntry, ...] = ()


class SafetyAction(enum.StrEnum):
    """What a server does with a flagged image outside age-restricted channels."""

    BLUR = "blur"  # posted blurred, as a spoiler
    BLOCK = "block"  # held back for a moderator, and not charged


class FlagAction(enum.StrEnum):
    """What was done with one flagged image."""

    BLURRED = "blurred"
    BLOCKED = "blocked"


DEFAULT_SAFETY_ACTION = SafetyAction.BLOCK


@dataclass(frozen=True, slots=True)
class SafetyPolicy:
    """A server's action, and the channels that override it."""

    action: SafetyAction = DEFAULT_SAFETY_ACTION
    channels: Mapping[int, SafetyAction] = field(default_factory=dict)
    customised: bool = False  # a moderator set the server's action (not the default)

    def action_in(self, channel_id: int | None) -> SafetyAction:
        if channel_id is not None and channel_id in self.channels:
            return self.channels[channel_id]
        return self.action


@dataclass(frozen=True, slots=True)
class Flag:
    """The image check's verdict on one image of a finishing job."""

    index: int
    score: float
    action: FlagAction


@dataclass(frozen=True, slots=True)
class SafetyEntry:
    """One flagged image in the audit log."""

    id: int
    job_id: str
    index: int
    guild_id: int | None
    channel_id: int | None
    user_id: int
    prompt: str
    score: float
    action: FlagAction
    seed: int
    created_at: dt.datetime
    released_by: int | None = None
    released_at: dt.datetime | None = None

    @property
    def held(self) -> bool:
        """Blocked and not released: its image is kept out of the job's images."""
        return self.action is FlagAction.BLOCKED and self.released_at is None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One of the user's jobs for ``/history``, with the images it still has."""

    job: Job
    images: tuple[Image, ...]


class LibraryScope(enum.StrEnum):
    """Which results a library page lists."""

    HISTORY = "history"  # the viewer's own jobs, every server and DM
    FAVOURITES = "favourites"  # jobs with images the viewer starred (theirs or public ones)
    GALLERY = "gallery"  # one server's public results


class LibrarySort(enum.StrEnum):
    NEWEST = "newest"  # for favourites: most recently starred
    OLDEST = "oldest"
    MOST_FAVOURITED = "most-favourited"


@dataclass(frozen=True, slots=True)
class LibraryQuery:
    """Filters and order for a library page. Every field narrows; the defaults show all."""

    text: str | None = None  # every word in the prompt (full-text; the last word a prefix)
    model: str | None = None
    operation: str | None = None  # the job's kind: txt2img, img2img, upscale, variation...
    status: JobStatus | None = None
    since: dt.datetime | None = None  # created at or after
    until: dt.datetime | None = None  # created before
    favourites_only: bool = False  # only jobs with an image the viewer starred
    sort: LibrarySort = LibrarySort.NEWEST

    def __post_init__(self) -> None:
        for moment in (self.since, self.until):
            if moment is not None and moment.tzinfo is None:
                raise InvalidInput("Library dates must carry a time zone.")
        if self.since and self.until and self.since >= self.until:
            raise InvalidInput("The start of the date range must come before its end.")

    @property
    def filtered(self) -> bool:
        return self != LibraryQuery(sort=self.sort)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "model": self.model,
            "operation": self.operation,
            "status": None if self.status is None else self.status.value,
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "favourites_only": self.favourites_only,
            "sort": self.sort.value,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LibraryQuery:
        def moment(value: Any) -> dt.datetime | None:
            return None if value is None else dt.datetime.fromisoformat(value)

        return cls(
            text=data.get("text"),
            model=data.get("model"),
            operation=data.get("operation"),
            status=None if data.get("status") is None else JobStatus(data["status"]),
            since=moment(data.get("since")),
            until=moment(data.get("until")),
            favourites_only=bool(data.get("favourites_only")),
            sort=LibrarySort(data.get("sort", LibrarySort.NEWEST.value)),
        )


@dataclass(frozen=True, slots=True)
class LibraryEntry:
    """One job on a library page: its images (for favourites, the ones the viewer starred)
    and how many stars all its images have, from everyone."""

    job: Job
    images: tuple[Image, ...]
    favourite_count: int


@dataclass(frozen=True, slots=True)
class LibraryView:
    """A saved library page's question (page buttons carry its id)."""

    id: str
    user_id: int
    guild_id: int | None
    scope: LibraryScope
    query: LibraryQuery
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Favourite:
    user_id: int
    image: Image
    job: Job
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    total: int
    offset: int
    limit: int

    @property
    def has_previous(self) -> bool:
        return self.offset > 0

    @property
    def has_next(self) -> bool:
        return self.offset + len(self.items) < self.total

    @property
    def page_number(self) -> int:
        """1-based."""
        return self.offset // self.limit + 1 if self.limit else 1

    @property
    def page_count(self) -> int:
        return max(1, -(-self.total // self.limit)) if self.limit else 1


@dataclass(frozen=True, slots=True)
class ResumeResult:
    """Jobs found unfinished at start-up: requeued ones to submit again, ones given up on
    (failed, their images refunded) after too many attempts, and finished ones whose outcome
    was never shown (their images, if any, are stored: show them, without generating)."""

    resumed: tuple[Job, ...]
    abandoned: tuple[Job, ...]
    undelivered: tuple[Job, ...] = ()


@dataclass(frozen=True, slots=True)
class ActiveCounts:
    queued: int = 0
    running: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.running


# --- prompts ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromptUse:
    prompt: str
    uses: int
    last_used: dt.datetime


# --- quotas -----------------------------------------------------------------------------


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidInput(f"{name} must be a whole number of 0 or more, or unlimited.")


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """Limits for one user in one guild (``None`` means unlimited), and their queue priority."""

    daily_images: int | None
    concurrent_jobs: int | None
    source: PolicySource = PolicySource.DEFAULT
    priority: Priority = Priority.NORMAL

    def __post_init__(self) -> None:
        _check_limit("The daily image limit", self.daily_images)
        _check_limit("The concurrent job limit", self.concurrent_jobs)
        object.__setattr__(self, "priority", Priority.checked(self.priority))

    @classmethod
    def unlimited(cls) -> QuotaPolicy:
        return cls(None, None)


DEFAULT_POLICY = QuotaPolicy(daily_images=200, concurrent_jobs=2)


@dataclass(frozen=True, slots=True)
class QuotaOverride:
    """A stored policy row: the guild default, a role's, or a user's."""

    guild_id: int | None  # None: direct messages
    scope: QuotaScope
    target_id: int  # role or user id; the guild id (or 0 for DMs) for the guild default
    daily_images: int | None
    concurrent_jobs: int | None
    updated_at: dt.datetime
    updated_by: int | None
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True, slots=True)
class Usage:
    """A user's quota standing in one guild today (for the footer and ``/quota show``)."""

    guild_id: int | None
    user_id: int
    day: dt.date  # the UTC day
    used: int  # images spent today, net of refunds and resets
    daily_limit: int | None
    remaining: int | None  # None: unlimited
    resets_at: dt.datetime  # next UTC midnight
    active_jobs: int  # queued + running, in every guild
    concurrent_limit: int | None
    policy: QuotaPolicy


# --- reports ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForgetReport:
    """What ``Database.forget_user`` removed."""

    jobs: int = 0
    images: int = 0
    favourites: int = 0
    prompts: int = 0
    api_keys: int = 0
    files_deleted: int = 0
    # (channel id, message id) of the results they had shared to a gallery channel: the
    # posts live in Discord, so the caller deletes them.
    shared_posts: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class CleanupReport:
    images_deleted: int = 0  # image records
    files_deleted: int = 0  # image and thumbnail files
    bytes_freed: int = 0
    files_kept_recent: int = 0  # unreferenced, but written too recently to delete safely
    orphan_files_deleted: int = 0  # files no record pointed at (left by a crash); counted above
    temp_files_deleted: int = 0  # temporary files left by a crash mid-write
    tokens_cleared: int = 0  # expired interaction tokens of finished jobs, forgotten
