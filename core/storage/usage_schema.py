"""What a job contributes to the success metrics, kept as columns of the job (written with
the job, from its request and timings), so that counting 100,000 jobs reads no JSON
(``usage.py``). One SQL definition serves the migration that fills old jobs and every write."""

from __future__ import annotations

BUCKET_EDGES = tuple(round(0.05 * 1.25**k, 4) for k in range(60))  # 0.05 s .. ~26 h
ADVANCED = ("negative_prompt", "seed", "steps", "guidance", "size", "scheduler", "model", "image")


class _Json:
    """SQLite's JSON functions; ``_PgJson`` spells the same in PostgreSQL's."""

    def text(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"

    number = text  # SQLite's json_extract gives a JSON number as a number

    def valid(self, column: str) -> str:
        return f"json_valid({column})"

    def each(self, column: str, key: str) -> str:
        return f"json_each({column}, '$.{key}')"


class _PgJson(_Json):
    def text(self, column: str, key: str) -> str:
        return f"(CAST({column} AS jsonb) ->> '{key}')"

    def number(self, column: str, key: str) -> str:
        value = f"(CAST({column} AS jsonb) -> '{key}')"
        return (
            f"(CASE WHEN jsonb_typeof{value} = 'number' THEN CAST({value} AS double precision) END)"
        )

    def valid(self, column: str) -> str:
        return f"dc_json_valid({column})"

    def each(self, column: str, key: str) -> str:
        # The elements of a list (as text in a column named value, as json_each names it).
        value = f"(CAST({column} AS jsonb) -> '{key}')"
        return (
            f"jsonb_array_elements_text(CASE WHEN jsonb_typeof{value} = 'array'"
            f" THEN {value} ELSE '[]' END) AS value"
        )


def _bucket_sql(seconds: str) -> str:
    """``bucket_of`` in SQL, over the edges kept in ``usage_bucket_edges``."""
    return (
        f"CASE WHEN {seconds} IS NULL THEN NULL ELSE coalesce((SELECT min(bucket)"
        f" FROM usage_bucket_edges WHERE edge >= {seconds}), {len(BUCKET_EDGES) - 1}) END"
    )


def _facts(json: _Json) -> str:
    def chose(*names: str) -> str:
        listed = ", ".join(f"'{name}'" for name in names)
        return (
            f"EXISTS (SELECT 1 FROM {json.each('request', 'explicit')} WHERE value IN ({listed}))"
        )

    # Which advanced settings a request used, as a bit per name of ADVANCED: chosen
    # explicitly, or (for the negative prompt, the size and a starting image) present in the
    # request.
    used = {
        "negative_prompt": f"coalesce({json.text('request', 'negative_prompt')}, '') <> ''"
        f" OR {chose('negative_prompt')}",
        "size": f"{json.text('request', 'aspect')} IS NOT NULL"
        f" OR {chose('size', 'width', 'height')}",
        "image": f"{json.text('request', 'init_image_key')} IS NOT NULL OR {chose('image')}",
    }
    settings = (
        f"CASE WHEN {json.valid('request')} THEN "
        + " + ".join(
            f"(CASE WHEN {used.get(name, chose(name))} THEN {1 << bit} ELSE 0 END)"
            for bit, name in enumerate(ADVANCED)
        )
        + " ELSE 0 END"
    )
    wait = f"CASE WHEN {json.valid('timings')} THEN {json.number('timings', 'queued_s')} END"
    total = f"CASE WHEN {json.valid('timings')} THEN {json.number('timings', 'total_s')} END"
    return (
        f"wait_bucket = {_bucket_sql(wait)},"
        f" total_bucket = {_bucket_sql(total)},"
        f" generation_bucket = {_bucket_sql('generation_seconds')},"
        f" settings = {settings}"
    )


_FACTS = _facts(_Json())
_PG_FACTS = _facts(_PgJson())
# Run in the transaction that writes a job's request or timings (not as a trigger: with
# trusted_schema OFF, SQLite refuses JSON functions inside triggers).
UPDATE_USAGE_FACTS = f"UPDATE jobs SET {_FACTS} WHERE id = ?"
PG_UPDATE_USAGE_FACTS = f"UPDATE jobs SET {_PG_FACTS} WHERE id = ?"
# A vote carries its job's day, server and model, so counting votes reads no job.
JOB_OF_VOTE = "SELECT substr(created_at, 1, 10), guild_id, model FROM jobs WHERE id = ?"
_FILL_FEEDBACK = (
    "UPDATE feedback SET (job_day, guild_id, model) ="
    " (SELECT substr(created_at, 1, 10), guild_id, model FROM jobs WHERE id = feedback.job_id)"
)
# Every job and every vote: the migration, and rows written straight into the tables.
FILL_USAGE_FACTS: tuple[str, ...] = (f"UPDATE jobs SET {_FACTS}", _FILL_FEEDBACK)
PG_FILL_USAGE_FACTS: tuple[str, ...] = (f"UPDATE jobs SET {_PG_FACTS}", _FILL_FEEDBACK)


def _schema(fill: tuple[str, ...]) -> tuple[str, ...]:
    return (
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
        *fill,
        "CREATE INDEX feedback_day ON feedback(job_day, guild_id, model, value)",
        # Counting a day reads only these indexes, never the jobs' rows (with their JSON).
        "CREATE INDEX jobs_usage ON jobs(created_at, guild_id, user_id, status, kind,"
        " parent_job_id, image_count, favourite_count, wait_bucket, generation_bucket,"
        " total_bucket, settings)",
        "CREATE INDEX jobs_failures ON jobs(created_at, guild_id, error) WHERE status = 'failed'",
    )


# Applied by migration 11. A change to ADVANCED or BUCKET_EDGES needs a new migration that
# refills the columns, and a new ``usage.STAT_VERSION``.
USAGE_FACTS_SCHEMA = _schema(FILL_USAGE_FACTS)
PG_USAGE_FACTS_SCHEMA = _schema(PG_FILL_USAGE_FACTS)  # migration 11's PostgreSQL form
