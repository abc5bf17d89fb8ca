"""Where SQLite's SQL and PostgreSQL's differ: every difference the repositories meet, named.

The repositories write one SQL text for both databases (SQLite's spelling, ``?`` and
``:name`` parameters). ``Tx.sql`` is the dialect of the transaction's database; a repository
asks it only for what cannot be spelled the same way:

- full-text search of prompts (SQLite: an FTS5 table kept by the code; PostgreSQL: a GIN
  index on ``to_tsvector('simple', prompt)``, kept by PostgreSQL itself);
- "this id is in a JSON list" (``json_each`` against ``jsonb_array_elements_text``);
- the usage facts' JSON expressions (``usage_schema``);
- row locks (``for_update``), where a count is written back under concurrent writers.

The rest is mechanical and done once, in ``to_postgres``: parameters become ``$n``; the
functions SQLite has and PostgreSQL names differently are renamed (``instr`` -> ``strpos``,
same 1-based result and 0 when absent) or provided by the schema (``dc_json_extract``,
``dc_json_valid``, ``dc_fold``; see ``postgres.COMPAT_FUNCTIONS``); an empty ``IN ()`` list,
which SQLite accepts and PostgreSQL does not, becomes an empty subquery with the same meaning.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from .usage_schema import PG_UPDATE_USAGE_FACTS, UPDATE_USAGE_FACTS

# SQLite function -> PostgreSQL function with the same arguments and meaning.
RENAMED_FUNCTIONS = {
    "instr": "strpos",
    "json_extract": "dc_json_extract",
    "json_valid": "dc_json_valid",
}

ParamKey = int | str
URL_SCHEMES = ("postgres://", "postgresql://")


def is_postgres_url(location: str) -> bool:
    return location.lower().startswith(URL_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` without its password, fit for logs and error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@functools.lru_cache(maxsize=4096)
def to_postgres(sql: str) -> tuple[str, tuple[ParamKey, ...]]:
    """SQLite's SQL text in PostgreSQL's spelling, and where each ``$n`` takes its value from:
    a position in a parameter sequence (``?``, ``?NNN``) or a name in a mapping (``:name``).

    String literals, quoted names and ``--`` comments are copied untouched, so a ``?`` or a
    ``:`` inside them is never read as a parameter."""
    out: list[str] = []
    keys: list[ParamKey] = []
    numbers: dict[ParamKey, int] = {}
    positional = 0
    i, n = 0, len(sql)

    def number_of(key: ParamKey) -> str:
        if key not in numbers:
            keys.append(key)
            numbers[key] = len(keys)
        return f"${numbers[key]}"

    while i < n:
        char = sql[i]
        if char in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == char:
                    if end + 1 < n and sql[end + 1] == char:  # '' inside a literal
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end])
            i = end
        elif char == "?":
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            if j > i + 1:
                index = int(sql[i + 1 : j]) - 1
                out.append(number_of(index))
                positional = max(positional, index + 1)  # as SQLite numbers a later "?"
            else:
                out.append(number_of(positional))
                positional += 1
            i = j
        elif char == ":" and sql.startswith("::", i):
            out.append("::")
            i += 2
        elif char == ":" and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_"):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            out.append(number_of(sql[i + 1 : j]))
            i = j
        elif char.isalpha() or char == "_":
            j = i
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            word = sql[i:j]
            rest = sql[j:].lstrip()
            if word.lower() in RENAMED_FUNCTIONS and rest.startswith("("):
                out.append(RENAMED_FUNCTIONS[word.lower()])
            elif word.upper() == "IS" and _is_param(rest):
                out.append("IS NOT DISTINCT FROM")  # SQLite's ``IS ?``: NULL-safe equality
            elif word.upper() == "IS" and rest[:4].upper() == "NOT " and _is_param(rest[4:]):
                out.append("IS DISTINCT FROM")
                j = sql.upper().index("NOT", j) + 3
            elif word.upper() == "IN" and rest.startswith("(") and rest[1:].lstrip()[:1] == ")":
                # SQLite: ``x IN ()`` is false and ``x NOT IN ()`` true. An untyped '{}'
                # becomes an empty array of x's type.
                close = sql.index(")", j)
                text = "".join(out).rstrip()
                if text.upper().endswith(" NOT"):
                    out[:] = [text[:-4], " <> ALL ('{}')"]
                else:
                    out.append("= ANY ('{}')")
                j = close + 1
            else:
                out.append(word)
            i = j
        else:
            out.append(char)
            i += 1
    return "".join(out), tuple(keys)


def _is_param(text: str) -> bool:
    text = text.lstrip()
    return text.startswith("?") or (text.startswith(":") and not text.startswith("::"))


def bind(keys: Sequence[ParamKey], params: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
    """The values for ``to_postgres``'s ``$1, $2, ...`` from SQLite-style parameters."""
    if isinstance(params, Mapping):
        return [params[key] for key in keys]  # type: ignore[index]
    return [params[key] for key in keys]  # type: ignore[index]


class Dialect:
    """SQLite's spelling of what differs (the default)."""

    name = "sqlite"
    # Appended to a SELECT: lock the rows it reads until the transaction ends. SQLite's write
    # transaction holds the whole database already.
    for_update = ""
    # Recompute job ``?``'s usage facts from its request and timings (``usage_schema``).
    update_usage_facts = UPDATE_USAGE_FACTS

    def search_prompts(self) -> str:
        """A condition on ``jobs``: its prompt holds every word of the query (one parameter,
        from ``search_query``)."""
        return "jobs.rowid IN (SELECT rowid FROM jobs_fts WHERE jobs_fts MATCH ?)"

    def search_query(self, words: Sequence[str]) -> str:
        """Every word, the last as a prefix (as someone types); quoted, so nothing in the
        words is read as query syntax."""
        if not words:
            return '""'  # matches nothing
        quoted = [f'"{word}"' for word in words]
        quoted[-1] += "*"
        return " ".join(quoted)

    def index_job_prompt(self) -> str | None:
        """After inserting job ``?``: index its prompt (None: the database does it)."""
        return "INSERT INTO jobs_fts (rowid, prompt) SELECT rowid, prompt FROM jobs WHERE id = ?"

    def unindex_user_prompts(self) -> str | None:
        """Before deleting user ``?``'s jobs: drop their prompts from the index."""
        return (
            "INSERT INTO jobs_fts (jobs_fts, rowid, prompt)"
            " SELECT 'delete', rowid, prompt FROM jobs WHERE user_id = ?"
        )

    def id_in_json_list(self, column: str, param: str) -> str:
        """``column`` is one of the integers of the JSON list in parameter ``:param``."""
        return f"{column} IN (SELECT value FROM json_each(:{param}))"


class PostgresDialect(Dialect):
    name = "postgres"
    for_update = " FOR UPDATE"
    update_usage_facts = PG_UPDATE_USAGE_FACTS

    def search_prompts(self) -> str:
        # The expression of the GIN index ``jobs_prompt_search`` (migration 7's PG form).
        return (
            "to_tsvector('simple', dc_unaccent(jobs.prompt))"
            " @@ to_tsquery('simple', dc_unaccent(?))"
        )

    def search_query(self, words: Sequence[str]) -> str:
        if not words:
            return ""  # an empty query: matches nothing
        quoted = [f"'{word}'" for word in words]
        quoted[-1] += ":*"
        return " & ".join(quoted)

    def index_job_prompt(self) -> str | None:
        return None

    def unindex_user_prompts(self) -> str | None:
        return None

    def id_in_json_list(self, column: str, param: str) -> str:
        return (
            f"{column} IN (SELECT value::bigint FROM jsonb_array_elements_text(CAST(:{param}"
            " AS jsonb)))"
        )


SQLITE = Dialect()
POSTGRES = PostgresDialect()
