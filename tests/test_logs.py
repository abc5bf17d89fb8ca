"""Log lines: text and JSON formats, job events, and no secret ever written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from core import logs

# Made up, but shaped like real ones.
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GhIjKl.abcdefghijklmnopqrstuvwxyz012345678"
OTHER_TOKEN = "OTg3NjU0MzIxMDk4NzY1NDMyMQ.XyZaBc.zyxwvutsrqponmlkjihgfedcba987654321"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OTpzZWNyZXRzZWNyZXQ"
WEBHOOK_URL = (
    f"https://discord.com/api/v10/webhooks/1234567890/{INTERACTION_TOKEN}/messages/@original"
)
CALLBACK_URL = f"https://discord.com/api/v10/interactions/1234567890/{INTERACTION_TOKEN}/callback"

Capture = Callable[[str], tuple[logging.Logger, io.StringIO]]


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    """Configure logging into a buffer; restore the root logger afterwards."""
    monkeypatch.setattr(logs, "_REDACTOR", logs.Redactor())
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_filters = {h: list(h.filters) for h in saved_handlers}

    def configure(fmt: str) -> tuple[logging.Logger, io.StringIO]:
        buffer = io.StringIO()
        logs.configure_logging("DEBUG", fmt, stream=buffer)
        logs.register_secret(TOKEN)
        return logging.getLogger("discord.http"), buffer

    yield configure
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    for handler, filters in saved_filters.items():
        handler.filters[:] = filters
    root.setLevel(saved_level)
    logging.captureWarnings(False)


def _log_everything(logger: logging.Logger) -> None:
    logger.info("token in the message: %s", TOKEN)
    logger.debug("%s %s with %s has returned %s", "POST", CALLBACK_URL, {"type": 5}, 204)
    logger.debug("PATCH %s", WEBHOOK_URL)
    logger.debug("headers: %s", {"Authorization": f"Bot {TOKEN}", "User-Agent": "x"})
    logger.debug("raw header line Authorization: Bot %s", OTHER_TOKEN)
    logger.info("an unregistered token-shaped string %s", OTHER_TOKEN)
    # discord.gateway logs every received event at DEBUG, interaction tokens included.
    event = {"t": "INTERACTION_CREATE", "d": {"id": "1", "token": "webhook-ish-secret-value"}}
    logger.debug("For Shard ID %s: WebSocket Event: %s", None, event)
    logger.debug("bucket %s with %r major parameters", "h", f"1234+{INTERACTION_TOKEN}")
    logger.info("in an extra field", extra={"url": CALLBACK_URL, "payload": {"t": TOKEN}})
    try:
        raise RuntimeError(f"login failed for {TOKEN} at {WEBHOOK_URL}")
    except RuntimeError:
        logger.exception("with a traceback")


def _assert_clean(output: str) -> None:
    assert TOKEN not in output
    assert OTHER_TOKEN not in output
    assert INTERACTION_TOKEN not in output
    assert INTERACTION_TOKEN[:20] not in output
    assert "webhook-ish-secret-value" not in output
    assert OTHER_TOKEN.split(".")[-1] not in output
    assert "<redacted>" in output


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_redacted_in_every_format(capture: Capture, fmt: str) -> None:
    logger, buffer = capture(fmt)
    _log_everything(logger)
    output = buffer.getvalue()
    _assert_clean(output)
    # What is not secret survives, so the lines stay useful.
    assert "/interactions/1234567890/<redacted>/callback" in output
    assert "/webhooks/1234567890/<redacted>/messages/@original" in output
    assert "Bot <redacted>" in output
    assert "login failed for <redacted>" in output
    assert "Traceback (most recent call last)" in output


def test_json_lines_parse_and_carry_the_exception(capture: Capture) -> None:
    logger, buffer = capture("json")
    _log_everything(logger)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert len(lines) == 10
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
        assert line["logger"] == "discord.http"
    assert lines[8]["url"].endswith("/<redacted>/callback")
    assert "RuntimeError: login failed for <redacted>" in lines[9]["exception"]


def test_other_root_handlers_are_redacted_too(capture: Capture) -> None:
    # A handler someone else installed (discord.py's own, pytest's) gets the filter as well.
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logging.getLogger().addHandler(keep := Keep())
    try:
        logger, _ = capture("text")
        logger.warning("token %s", TOKEN)
    finally:
        logging.getLogger().removeHandler(keep)
    assert TOKEN not in seen[0].getMessage()


def test_short_secrets_are_not_registered(capture: Capture) -> None:
    logger, buffer = capture("text")
    logs.register_secret("abc")
    logs.register_secret(None)
    logger.info("abc stays")
    assert "abc stays" in buffer.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_job_log_writes_one_line_with_ids_and_timings(capture: Capture, fmt: str) -> None:
    _, buffer = capture(fmt)
    logs.job_log(
        logging.getLogger("bot.jobs"),
        "done",
        job_id="AbC123",
        user_id=42,
        guild_id=7,
        model="sd-turbo",
        queued_s=0.25,
        generate_s=3.14159,
        images=4,
        name="clashes with LogRecord.name",
    )
    output = buffer.getvalue()
    assert output.count("\n") == 1
    if fmt == "json":
        line = json.loads(output)
        assert line["message"] == "job done"
        assert line["event"] == "done"
        assert line["job_id"] == "AbC123"
        assert (line["user_id"], line["guild_id"], line["model"]) == (42, 7, "sd-turbo")
        assert line["generate_s"] == 3.142
        assert line["images"] == 4
        assert line["field_name"] == "clashes with LogRecord.name"
        assert line["logger"] == "bot.jobs"
    else:
        assert "bot.jobs: job done event=done job_id=AbC123 user_id=42 guild_id=7" in output
        assert "model=sd-turbo queued_s=0.250 generate_s=3.142 images=4" in output


def test_configure_logging_replaces_its_own_handler(capture: Capture) -> None:
    capture("text")
    capture("json")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_diffusion_chat", False)]
    assert len(ours) == 1
    assert isinstance(ours[0].formatter, logs.JsonFormatter)
    with pytest.raises(ValueError):
        logs.configure_logging("INFO", "xml")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_attributes_a_library_adds_to_every_record_are_not_fields(
    capture: Capture, fmt: str
) -> None:
    # Ray, once imported, stamps every record with ``_ray_timestamp_ns``.
    logger, buffer = capture(fmt)
    previous = logging.getLogRecordFactory()

    def stamped(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record._library_stamp = 123  # type: ignore[attr-defined]
        return record

    logging.setLogRecordFactory(stamped)
    try:
        logger.info("job %s", "done", extra={"job_id": "AbC123"})
    finally:
        logging.setLogRecordFactory(previous)
    output = buffer.getvalue()
    assert "job_id" in output and "AbC123" in output
    assert "_library_stamp" not in output
