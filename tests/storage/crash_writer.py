"""A writer process for ``test_storage_crash.py``; the test kills it with SIGKILL.

Usage: ``python crash_writer.py REPO DB_PATH IMAGES_DIR SYNCHRONOUS SEED``

Three concurrent tasks create jobs (with their quota spend and prompt history), and finish
every other one with a stored image. Each line on stdout is written only after the call it
reports has returned: ``job <id>`` after ``create_job``, ``done <id> <file_key>`` after
``complete_job``.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import sys


async def writer(db: object, task: int, seed: int) -> None:
    from PIL import Image

    from core.storage import Database, GeneratedImage, NewJob, QuotaPolicy

    assert isinstance(db, Database)
    rng = random.Random(seed * 100 + task)
    n = 0
    while True:
        prompt = f"task {task} job {n} " + "é🙂'\"; DROP TABLE jobs;--" * rng.randint(0, 300)
        job = await db.create_job(
            NewJob(
                user_id=1 + task,
                kind="txt2img",
                request=json.dumps({"prompt": prompt, "n": n}),
                prompt=prompt,
                image_count=1,
                guild_id=100,
                channel_id=200,
            ),
            QuotaPolicy.unlimited(),
            remember_prompt=True,
        )
        sys.stdout.write(f"job {job.id}\n")
        sys.stdout.flush()
        if n % 2 == 0:
            await db.jobs.mark_running(job.id)
            image = Image.frombytes("RGB", (192, 192), rng.randbytes(192 * 192 * 3))
            png = io.BytesIO()
            image.save(png, format="PNG", compress_level=1)
            done = await db.complete_job(job.id, [GeneratedImage(0, n, png.getvalue())])
            sys.stdout.write(f"done {job.id} {done.images[0].file_key}\n")
            sys.stdout.flush()
        n += 1


async def main() -> None:
    repo, db_path, images_dir, synchronous, seed = sys.argv[1:6]
    sys.path.insert(0, repo)
    from core.storage import Database, LocalImageStore

    db = await Database.open(
        db_path,
        images=LocalImageStore(images_dir),
        synchronous=synchronous,  # type: ignore[arg-type]
    )
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.gather(*(writer(db, task, int(seed)) for task in range(3)))


if __name__ == "__main__":
    asyncio.run(main())
