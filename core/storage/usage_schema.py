"""What a job contributes to the success metrics, kept as columns of the job (written with
the job, from its request and timings), so that counting 100,000 jobs reads no JSON
(``usage.py``). One SQL definition serves the migration that fills old jobs and every write."""

from __future__ import annotations

BUCKET_EDGES = tuple(round(0.05 * 1.25**k, 4) for k in range(60))  # 0.05 s .. ~26 h
ADVANCED = ("negative_prompt", "seed", "steps", "guidance", "size", "scheduler", "model", "image")


def _bucket_sql(seconds: str) -> str:
    """``bucket_of`` in SQL, over the edges kept in ``usage_bucket_edges``."""
    return (
        f"CASE WHEN {seconds} IS NULL THEN NULL ELSE coalesce((SELECT min(bucket)"
        f" FROM usage_bucket_edges WHERE edge >= {seconds}), {len(BUCKET_EDGES) - 1}) END"
    )


def _chose_sql(*names: str) -> str:
    listed = ", ".join(f"'{name}'" for name in names)
    return f"EXISTS (SELECT 1 FROM json_each(request, '$.explicit') WHERE value IN ({listed}))"


# Which advanced settings a request used, as a bit per name of ADVANCED: chosen explicitly,
# or (for the negative prompt, the size and a starting image) present in the request.
_USED = {
    "negative_prompt": "coalesce(json_extract(request, '$.negative_prompt'), '') <> ''"
    f" OR {_chose_sql('negative_prompt')}",
    "size": f"json_extract(request, '$.aspect') IS NOT NULL"
    f" OR {_chose_sql('size', 'width', 'height')}",
    "image": f"json_extract(request, '$.init_image_key') IS NOT NULL OR {_chose_sql('image')}",
}
_SETTINGS_SQL = (
    "CASE WHEN json_valid(request) THEN "
    + " + ".join(
        f"(CASE WHEN {_USED.get(name, _chose_sql(name))} THEN {1 << bit} ELSE 0 END)"
        for bit, name in enumerate(ADVANCED)
    )
    + " ELSE 0 END"
)
_WAIT_S = "CASE WHEN json_valid(timings) THEN json_extract(timings, '$.queued_s') END"
_TOTAL_S = "CASE WHEN json_valid(timings) THEN json_extract(timings, '$.total_s') END"
_FACTS = (
    f"wait_bucket = {_bucket_sql(_WAIT_S)},"
    f" total_bucket = {_bucket_sql(_TOTAL_S)},"
    f" generation_bucket = {_bucket_sql('generation_seconds')},"
    f" settings = {_SETTINGS_SQL}"
)
# Run in the transaction that writes a job's request or timings (not as a trigger: with
# trusted_schema OFF, SQLite refuses JSON functions inside triggers).
UPDATE_USAGE_FACTS = f"UPDATE jobs SET {_FACTS} WHERE id = ?"
# A vote carries its job's day, server and model, so counting votes reads no job.
JOB_OF_VOTE = "SELECT substr(created_at, 1, 10), guild_id, model FROM jobs WHERE id = ?"
# Every job and every vote: the migration, and rows written straight into the tables.
FILL_USAGE_FACTS: tuple[str, ...] = (
    f"UPDATE jobs SET {_FACTS}",
    "UPDATE feedback SET (job_day, guild_id, model) ="
    " (SELECT substr(created_at, 1, 10), guild_id, model FROM jobs WHERE id = feedback.job_id)",
)
# Applied by migration 11. A change to ADVANCED or BUCKET_EDGES needs a new migration that
# refills the columns, and a new ``usage.STAT_VERSION``.
USAGE_FACTS_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE usage_bucket_edges (bucket INTEGER PRIMARY KEY, edge REAL NOT NULL) STRICT",
    "INSERT INTO usage_bucket_edges (bucket, edge) VALUES "
    + ", ".join(f"({bucket}, {edge!r})" for bucket, edge in enumerate(BUCKET_EDGES)),
    "ALTER TABLE jobs ADD COLUMN wait_bucket INTEGER",
    "ALTER TABLE jobs ADD COLUMN total_bucket INTEGER",
    "ALTER TABLE jobs ADD COLUMN generation_bucket INTEGER",
    "ALTER TABLE jobs ADD COLUMN settings INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE feedback ADD COLUMN job_day TEXT",
    "ALTER TABLE feedback ADD COLUMN guild_id INTEGER",
    "ALTER TABLE feedback ADD COLUMN model TEXT",
    *FILL_USAGE_FACTS,
    "CREATE INDEX feedback_day ON feedback(job_day, guild_id, model, value)",
    # Counting a day reads only these indexes, never the jobs' rows (with their JSON).
    "CREATE INDEX jobs_usage ON jobs(created_at, guild_id, user_id, status, kind, parent_job_id,"
    " image_count, favourite_count, wait_bucket, generation_bucket, total_bucket, settings)",
    "CREATE INDEX jobs_failures ON jobs(created_at, guild_id, error) WHERE status = 'failed'",
)
