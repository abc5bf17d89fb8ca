"""Logging set-up: readable text or JSON lines, with secrets redacted from every record.

``configure_logging`` installs one handler on the root logger. A ``RedactingFilter`` on that
handler rewrites each record before any formatter sees it: the bot token (registered at
start-up with ``register_secret``), anything shaped like a bot token, interaction and webhook
tokens inside URLs (discord.py logs request URLs at DEBUG), and ``Authorization`` headers.
The formatters redact their finished line once more, so a secret hidden in an ``extra``
object's ``repr`` cannot slip through either.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import threading
from typing import Any, Literal, TextIO

REDACTED = "<redacted>"

LogFormat = Literal["text", "json"]

# Three base64url parts joined by dots: Discord bot tokens (and JWTs, which are secrets too).
_TOKEN_SHAPE = re.compile(
    r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])"
)
# Interaction responses and follow-ups go to /interactions/<id>/<token>/callback and
# /webhooks/<application id>/<token>/...; the token is a bearer credential for 15 minutes
# (webhook tokens: for ever), so the segment after the id is dropped.
_URL_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/\s?#'\"<>]+")
# Interaction tokens are base64 of "interaction:<id>:<secret>", so they start with the same
# characters wherever they appear: in gateway payloads discord.py logs at DEBUG, and in the
# rate-limit "major parameters" it logs (webhook id + token, without the URL around them).
_INTERACTION_TOKEN = re.compile(r"aW50ZXJhY3Rpb246[A-Za-z0-9_.=+/-]*")
# A "token" (or "access_token", ...) field in JSON or a dict repr, e.g. INTERACTION_CREATE.
_TOKEN_FIELD = re.compile(r"""(['"](?:\w*_)?token['"]\s*:\s*['"])[^'"]+""", re.IGNORECASE)
# "Authorization: Bot x", "'Authorization': 'Bot x'", "authorization=Bearer x" and similar.
_AUTH_HEADER = re.compile(
    r"(authorization['\"]?\s*[:=]\s*['\"]?)(?:(bot|bearer|basic)\s+)?[^\s'\",;}]+",
    re.IGNORECASE,
)
# Secrets shorter than this are refused: redacting "ab" from every line would only hurt.
_MIN_SECRET_LENGTH = 8

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_BLANK_RECORD = logging.LogRecord("", logging.INFO, "", 0, "", None, None)
_RECORD_ATTRS = frozenset(vars(_BLANK_RECORD)) | {"message", "asctime", "taskName"}


class Redactor:
    """Replaces registered secrets and secret-shaped substrings with ``<redacted>``."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def register(self, value: str | None) -> None:
        if value is None:
            return
        value = value.strip()
        if len(value) < _MIN_SECRET_LENGTH:
            return
        with self._lock:
            self._secrets = self._secrets | {value}

    def clear(self) -> None:
        with self._lock:
            self._secrets = frozenset()

    def __call__(self, text: str) -> str:
        # Longest first, so a secret that contains another is removed whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _URL_TOKEN.sub(lambda m: m.group(1) + REDACTED, text)
        text = _INTERACTION_TOKEN.sub(REDACTED, text)
        text = _TOKEN_FIELD.sub(lambda m: m.group(1) + REDACTED, text)
        text = _AUTH_HEADER.sub(_auth_replacement, text)
        return _TOKEN_SHAPE.sub(REDACTED, text)


def _auth_replacement(match: re.Match[str]) -> str:
    scheme = match.group(2)
    return match.group(1) + (f"{scheme} " if scheme else "") + REDACTED


# Process-wide, like logging itself: the token is registered once and every handler that
# carries a RedactingFilter (of this module) uses it.
_REDACTOR = Redactor()


def register_secret(value: str | None) -> None:
    """Never log ``value`` (the Discord token, API keys). Call before connecting."""
    _REDACTOR.register(value)


def redact(text: str) -> str:
    """``text`` with every registered secret and secret-shaped substring replaced."""
    return _REDACTOR(text)


class RedactingFilter(logging.Filter):
    """Rewrites a record in place so that no handler or formatter sees a secret.

    The message is formatted with its args here (and the args dropped), because a secret
    can arrive as an argument, for example a URL that discord.py logs.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redact = redactor or _REDACTOR

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must still be logged, and redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg = self._redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatter.format() uses a cached exc_text when there is one.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, key, self._redact(value))
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, in the order they were set. Private attributes
    that libraries add to every record (Ray's ``_ray_timestamp_ns``) are not fields."""
    return {
        k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")
    }


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    text = record.exc_text or ""
    if record.stack_info:
        text = (text + "\n" if text else "") + formatter.formatStack(record.stack_info)
    return text


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    # Quote values with spaces so "key=value" pairs stay machine-splittable.
    return json.dumps(text) if (not text or any(c.isspace() for c in text)) else text


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00.123 INFO    bot.jobs: job done job_id=abc model=sd15 ...``"""

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        line = f"{when}.{int(record.msecs):03d} {record.levelname:<7} {record.name}: "
        line += record.getMessage()
        fields = extra_fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_plain(v)}" for k, v in fields.items())
        exception = _exception_text(self, record)
        if exception:
            line += "\n" + exception
        return _REDACTOR(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        exception = _exception_text(self, record)
        if exception:
            entry["exception"] = exception
        # default=str: an odd extra value must not make the log line itself fail.
        return _REDACTOR(json.dumps(entry, default=str, ensure_ascii=False))


def configure_logging(
    level: str = "INFO", fmt: LogFormat | str = "text", *, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as text or JSON lines, redacted.

    Calling it again replaces the handler it installed before. Handlers that others put on
    the root logger stay, but get the redacting filter too.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_diffusion_chat", False):
            root.removeHandler(old)
            old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._diffusion_chat = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    for each in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in each.filters):
            each.addFilter(RedactingFilter())
    root.setLevel(level.upper())
    # huggingface_hub's HTTP client logs every request of a model download at INFO.
    logging.getLogger("httpx").setLevel(
        logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    )
    # warnings.warn() output then goes through the same handler (and the same redaction).
    logging.captureWarnings(True)
    return handler


def job_log(
    logger: logging.Logger,
    event: str,
    *,
    job_id: str,
    user_id: int | str | None,
    guild_id: int | str | None,
    model: str | None,
    level: int = logging.INFO,
    **fields: Any,
) -> None:
    """One line for one event in a job's life (queued, started, done, failed, cancelled).

    ``fields`` carry timings (``queued_s=0.2, generate_s=3.1``) or other short facts
    (``images=4``, ``reason="out_of_memory"``). They become JSON keys, or ``key=value``
    pairs after the message in text format.
    """
    extra: dict[str, Any] = {
        "event": event,
        "job_id": job_id,
        "user_id": user_id,
        "guild_id": guild_id,
        "model": model,
    }
    for key, value in fields.items():
        # LogRecord refuses extra keys that clash with its own attributes ("name", ...).
        extra[f"field_{key}" if key in _RECORD_ATTRS else key] = (
            round(value, 3) if isinstance(value, float) else value
        )
    logger.log(level, "job %s", event, extra=extra)
