"""A writer process killed with SIGKILL in the middle of writes loses nothing it reported."""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from storage_helpers import both_backends  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)

from core.storage import Database, JobStatus, LocalImageStore

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("crash_writer.py")


def run_and_kill(db_path: Path | str, images: Path, synchronous: str, seed: int) -> list[str]:
    """Start the writer, let it report some jobs, SIGKILL it mid-write; return every
    complete line it printed before it died. (Blocking: plain ``subprocess``, whose exit
    status cannot be lost to another event loop's child watcher.)"""
    process = subprocess.Popen(
        [sys.executable, str(WRITER), str(REPO), str(db_path), str(images), synchronous, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    lines: list[str] = []
    wanted = random.Random(seed).randint(15, 45)
    try:
        while sum(line.startswith("job ") for line in lines) < wanted:
            raw = process.stdout.readline()
            if not raw:
                _, err = process.communicate(timeout=30)
                pytest.fail(f"writer died early: {err.decode()}")
            lines.append(raw.decode())
        process.send_signal(signal.SIGKILL)  # no cleanup, no flush, no close
        rest, _ = process.communicate(timeout=30)  # what it printed before, still in the pipe
    finally:
        if process.returncode is None:
            process.kill()
            process.communicate()
    assert process.returncode == -signal.SIGKILL
    text = "".join(lines) + rest.decode(errors="replace")
    complete = text.split("\n")[:-1]  # a line cut by the kill has no newline: not reported
    return [line for line in complete if line and line != "ready"]


@pytest.mark.asyncio
async def test_sigkill_mid_write_loses_nothing_reported(
    tmp_path: Path, db_location: Path | str
) -> None:
    """On SQLite, the file after a kill; on PostgreSQL (DATABASE_URL), the server's rollback
    of the killed front process's open transactions. (``synchronous`` is SQLite's.)"""
    db_path = db_location
    images = tmp_path / "data" / "images"
    reported_jobs: set[str] = set()
    reported_done: dict[str, str] = {}
    for round_number, synchronous in enumerate(("FULL", "NORMAL", "FULL")):
        lines = await asyncio.to_thread(run_and_kill, db_path, images, synchronous, round_number)
        for line in lines:
            kind, job_id, *rest = line.split(" ")
            if kind == "job":
                reported_jobs.add(job_id)
            else:
                reported_done[job_id] = rest[0]
        assert reported_jobs, "the writer reported nothing"

        store = LocalImageStore(images)
        async with Database.open(db_path, images=store) as db:
            assert await db.integrity_check() == []
            for job_id in reported_jobs:
                job = await db.jobs.find(job_id)
                assert job is not None, f"job {job_id} was reported created but is missing"
            for job_id, file_key in reported_done.items():
                done = await db.jobs.get_with_images(job_id)
                assert done.job.status is JobStatus.DONE
                assert [image.file_key for image in done.images] == [file_key]
            # Every recorded image has its whole file, and every file is whole.
            jobs = []
            for user_id in (1, 2, 3):
                offset = 0
                while True:
                    page = await db.jobs.history(user_id, offset=offset, limit=100)
                    jobs.extend(page.items)
                    if not page.has_next:
                        break
                    offset += 100
            assert reported_jobs <= {entry.job.id for entry in jobs}
            for entry in jobs:
                # Nothing half-written: a job is done with its image, or not done at all.
                assert (entry.job.status is JobStatus.DONE) == (len(entry.images) == 1)
                for image in entry.images:
                    data = await store.get(image.file_key)
                    assert hashlib.sha256(data).hexdigest() == image.content_hash
            for path in images.rglob("*"):
                if path.is_file() and not path.name.startswith(".tmp-"):
                    digest = path.name.split(".")[0]
                    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
            # Each quota spend was committed with its job: today's usage counts them all.
            today = db.now().date()
            spent = 0
            for user_id in (1, 2, 3):
                spent += (await db.quotas.usage(100, user_id)).used
            assert spent == sum(entry.job.created_at.date() == today for entry in jobs)
            # The unfinished ones are found for resuming.
            unfinished = {job.id for job in await db.jobs.unfinished()}
            assert unfinished.isdisjoint(reported_done)
            outcome = await db.jobs.resume_unfinished(max_attempts=None)
            assert {job.id for job in outcome.resumed} == unfinished
