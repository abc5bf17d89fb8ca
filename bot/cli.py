"""The ``diffusion-chat`` command: run the bot, generate without Discord, and maintenance.

Every subcommand first loads the env file (``.env``, or ``--env-file``) into the process
environment without overriding variables that are already set. That way settings that other
libraries read straight from the environment (``HF_HOME``, ``HF_HUB_OFFLINE``) work from
``.env`` too, and the real environment still wins, as it does in ``core.config``.

Heavy imports (discord.py, torch, the engine) happen inside the subcommand that needs them,
so ``--help``, ``doctor``'s settings checks and the container health check stay fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dotenv import load_dotenv

from core.config import SettingsError, load_settings

PROG = "diffusion-chat"
DEFAULT_ENV_FILE = Path(".env")
# Exit codes: 1 for "it ran and found a problem", 2 for "fix your command or settings".
EXIT_PROBLEM = 1
EXIT_USAGE = 2

if TYPE_CHECKING:
    from core.storage import ImageStore


class CommandError(Exception):
    """A message for the operator; printed without a traceback."""

    def __init__(self, message: str, code: int = EXIT_PROBLEM) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Diffusion Chat: a Discord bot that runs Stable Diffusion.",
        epilog="Settings come from the environment and .env; see .env.example.",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="read settings from this file instead of ./.env",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("run", help="start the bot", description="Start the Discord bot.")
    commands.add_parser(
        "generate",
        help="generate images without Discord (the engine's CLI; see generate --help)",
        add_help=False,
    )
    commands.add_parser(
        "models", help="list the models in the registry (MODELS_FILE)", add_help=False
    )
    commands.add_parser(
        "doctor",
        help="check the token, GPU, models, disk and database, and say what to fix",
        description="Check the deployment and print what to fix. Exit code 1 on a problem.",
    )
    migrate = commands.add_parser(
        "migrate",
        help="bring the database schema up to date",
        description="Apply pending database migrations (the bot also does this at start).",
    )
    migrate.add_argument(
        "--no-backup",
        action="store_true",
        help="do not copy the database to <name>.v<version>.bak before changing it",
    )
    cleanup = commands.add_parser(
        "cleanup",
        help="delete old images that nobody favourited, and free their disk space",
        description=(
            "Delete images older than N days that nobody favourited, and their files; job "
            "records and favourites stay. Safe while the bot runs."
        ),
    )
    cleanup.add_argument(
        "--older-than-days",
        type=_non_negative_float,
        required=True,
        metavar="N",
        help="age in days above which an unfavourited image is deleted",
    )
    apikey = commands.add_parser(
        "apikey",
        help="make, list and revoke keys for the HTTP API",
        description="Keys for the HTTP API. Each key is an account with its own quotas.",
    )
    apikeys = apikey.add_subparsers(dest="apikey_command", metavar="ACTION", required=True)
    create = apikeys.add_parser("create", help="make a key and print it (once)")
    create.add_argument("name", help="what the key is for (shown in listings)")
    # SUPPRESS: an option not given is absent, so the account keeps the default policy.
    create.add_argument(
        "--daily-images",
        type=_limit,
        default=argparse.SUPPRESS,
        metavar="N",
        help="images a day, or 'unlimited' (default: DEFAULT_DAILY_IMAGES)",
    )
    create.add_argument(
        "--concurrent-jobs",
        type=_limit,
        default=argparse.SUPPRESS,
        metavar="N",
        help="unfinished jobs at once (default: DEFAULT_CONCURRENT_JOBS)",
    )
    create.add_argument(
        "--priority",
        choices=["low", "normal", "high"],
        help="queue priority (default: normal)",
    )
    create.add_argument(
        "--operator",
        action="store_true",
        help="may read the operator dashboard (/api/cv/diffusion/admin/usage)",
    )
    apikeys.add_parser("list", help="list the keys (never the keys themselves)")
    revoke = apikeys.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("id", type=int, help="the key's number, from `apikey list`")
    commands.add_parser(
        "healthcheck",
        help="ask a running bot's /healthz (for container health checks)",
        description="Exit 0 when the running bot's /healthz says ok (or metrics are off).",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # "generate" and "models" hand everything after them, --help included, to the engine's
    # own parser.
    split = _command_index(args)
    passthrough: list[str] = []
    if split is not None and args[split] in ("generate", "models"):
        args, passthrough = args[: split + 1], args[split + 1 :]
    options = parser.parse_args(args)
    try:
        _load_env_file(options.env_file)
        return _dispatch(options, passthrough)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except CommandError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return 130


def _dispatch(options: argparse.Namespace, passthrough: list[str]) -> int:
    command: str = options.command
    if command == "run":
        return _run()
    if command in ("generate", "models"):
        return _engine(command, passthrough)
    if command == "doctor":
        from bot.doctor import run_doctor

        return run_doctor(env_file=_env_file(options.env_file))
    if command == "migrate":
        return _migrate(backup=not options.no_backup)
    if command == "cleanup":
        return _cleanup(options.older_than_days)
    if command == "healthcheck":
        return _healthcheck()
    if command == "apikey":
        return _apikey(options)
    raise AssertionError(f"unhandled command {command!r}")


def _command_index(args: list[str]) -> int | None:
    """Index of the subcommand, skipping the global options before it."""
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--env-file":
            index += 2
        elif arg.startswith("-"):
            index += 1
        else:
            return index
    return None


def _env_file(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    return DEFAULT_ENV_FILE if DEFAULT_ENV_FILE.is_file() else None


def _load_env_file(explicit: Path | None) -> None:
    if explicit is not None and not explicit.is_file():
        raise CommandError(f"the env file {explicit} does not exist", EXIT_USAGE)
    path = _env_file(explicit)
    if path is not None:
        load_dotenv(path, override=False)


def _version() -> str:
    try:
        return metadata.version("diffusion-chat")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _non_negative_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


# --- commands ---------------------------------------------------------------------------------


def _run() -> int:
    from app.main import main as app_main

    return app_main(env_file=None)  # main() already loaded --env-file (or ./.env)


def _engine(command: str, argv: list[str]) -> int:
    """Run the engine's CLI (``python -m engine``) with this deployment's settings as
    defaults: MODELS_FILE, DEFAULT_MODEL, DEVICE, DTYPE and CPU_OFFLOAD."""
    try:
        from engine.__main__ import main as engine_main
    except ImportError as error:
        raise CommandError(f"the engine's command line is not available: {error}") from None
    settings = load_settings(env_file=None, require_token=False)
    # --debug is the engine parser's own option, before its subcommand.
    debug = ["--debug"] if "--debug" in argv else []
    args = [arg for arg in argv if arg != "--debug"]
    defaults: list[str] = []
    if settings.models_file is not None and not _has_option(args, "--models-file"):
        defaults += ["--models-file", str(settings.models_file)]
    if command == "generate":
        if settings.default_model and not _has_option(args, "--model"):
            defaults += ["--model", settings.default_model]
        if settings.device != "auto" and not _has_option(args, "--device"):
            defaults += ["--device", settings.device]
        if settings.dtype != "auto" and not _has_option(args, "--dtype"):
            defaults += ["--dtype", settings.dtype]
        if settings.cpu_offload and "--cpu-offload" not in args:
            defaults.append("--cpu-offload")
    try:
        return engine_main([*debug, command, *args, *defaults], prog=PROG)
    except SystemExit as done:  # argparse exits for --help and usage errors
        return _exit_code(done.code)


def _has_option(args: list[str], name: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in args)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # SystemExit("message") prints and exits 1
    return EXIT_PROBLEM


def _migrate(*, backup: bool) -> int:
    from core.image_storage import image_store
    from core.storage import migrate
    from core.storage.migrations import backup_path
    from core.storage_failures import STARTUP_STORAGE_ERRORS, explain_storage_failure

    settings = load_settings(env_file=None, require_token=False)
    images = image_store(settings)
    if settings.database_url:
        return _migrate_postgres(settings.database_url, images, settings.data_dir)
    path = settings.database_path
    existed = path.exists()
    try:
        before, after = asyncio.run(migrate(path, images=images, backup=backup))
    except STARTUP_STORAGE_ERRORS as error:
        raise CommandError(explain_storage_failure(error, settings.data_dir)) from None
    if not existed:
        print(f"Created {path} at schema version {after}.")
    elif before == after:
        print(f"{path} is up to date (schema version {after}).")
    else:
        saved = (
            f"; the old version is saved as {backup_path(path, before)}"
            if before and backup
            else ""
        )
        print(f"Migrated {path} from schema version {before} to {after}{saved}.")
    return 0


def _migrate_postgres(url: str, images: ImageStore, data_dir: Path) -> int:
    """``migrate`` with DATABASE_URL: the same migrations, on the PostgreSQL server (which
    keeps no copy beside a file: back it up with pg_dump first)."""
    from core.storage import migrate
    from core.storage.dialect import redact_url
    from core.storage_failures import STARTUP_STORAGE_ERRORS, explain_storage_failure

    where = redact_url(url)
    try:
        before, after = asyncio.run(migrate(url, images=images))
    except STARTUP_STORAGE_ERRORS as error:
        raise CommandError(explain_storage_failure(error, data_dir)) from None
    if before == after:
        print(f"{where} is up to date (schema version {after}).")
    else:
        print(f"Migrated {where} from schema version {before} to {after}.")
    return 0


def _cleanup(older_than_days: float) -> int:
    from core.downloads import human_size
    from core.image_storage import image_store
    from core.storage import Database
    from core.storage_failures import STARTUP_STORAGE_ERRORS, explain_storage_failure

    settings = load_settings(env_file=None, require_token=False)
    path = settings.database
    if not settings.database_url and not settings.database_path.exists():
        print(f"Nothing to clean up: there is no database at {path} yet.")
        return 0

    async def clean() -> str:
        # migrate=False: retention must not upgrade a schema behind the operator's back.
        async with Database.open(path, images=image_store(settings), migrate=False) as db:
            report = await db.cleanup(older_than_days)
        return (
            f"Deleted {report.images_deleted} image record(s) older than {older_than_days:g} "
            f"day(s) and {report.files_deleted} file(s), freeing {human_size(report.bytes_freed)}"
            f" ({report.orphan_files_deleted} orphaned file(s), "
            f"{report.temp_files_deleted} temporary file(s)); kept "
            f"{report.files_kept_recent} file(s) written in the last hour; forgot "
            f"{report.tokens_cleared} expired interaction token(s)."
        )

    try:
        print(asyncio.run(clean()))
    except STARTUP_STORAGE_ERRORS as error:
        raise CommandError(explain_storage_failure(error, settings.data_dir)) from None
    return 0


def _limit(raw: str) -> int | None:
    if raw.strip().lower() in ("unlimited", "none"):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more (or 'unlimited')")
    return value


def _apikey(options: argparse.Namespace) -> int:
    from core.image_storage import image_store
    from core.storage import (
        Database,
        InvalidInput,
        NotFound,
        Priority,
        QuotaScope,
    )
    from core.storage_failures import STARTUP_STORAGE_ERRORS, explain_storage_failure

    settings = load_settings(env_file=None, require_token=False)
    action: str = options.apikey_command

    async def act() -> str:
        async with Database.open(settings.database, images=image_store(settings)) as db:
            if action == "create":
                key, secret = await db.api_keys.create(options.name, operator=options.operator)
                limits: dict[str, Any] = {
                    name: getattr(options, name)
                    for name in ("daily_images", "concurrent_jobs")
                    if hasattr(options, name)
                }
                if options.priority is not None:
                    limits["priority"] = Priority[options.priority.upper()]
                if limits:
                    await db.quotas.set_policy(None, QuotaScope.USER, key.user_id, **limits)
                return (
                    f"Key {key.id} ({key.name}) made. It is shown only now; keep it secret:\n"
                    f"{secret}\n"
                    "Send it as the header `Authorization: Bearer <key>`."
                )
            if action == "list":
                keys = await db.api_keys.all()
                if not keys:
                    return "No API keys yet: make one with `diffusion-chat apikey create NAME`."
                return "\n".join(
                    f"{key.id:>4}  {key.prefix}…  {key.name}  made {key.created_at:%Y-%m-%d}"
                    + ("  OPERATOR" if key.operator else "")
                    + (f"  REVOKED {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "")
                    for key in keys
                )
            key = await db.api_keys.revoke(options.id)
            return f"Key {key.id} ({key.name}) is revoked: requests with it are refused now."

    try:
        print(asyncio.run(act()))
    except (InvalidInput, NotFound) as error:
        raise CommandError(str(error)) from None
    except STARTUP_STORAGE_ERRORS as error:
        raise CommandError(explain_storage_failure(error, settings.data_dir)) from None
    return 0


def _healthcheck() -> int:
    settings = load_settings(env_file=None, require_token=False)
    if not settings.metrics_port:
        print("metrics are off (METRICS_PORT=0): nothing to check")
        return 0
    host = settings.metrics_host
    # A wildcard address is for listening; connect to this machine's loopback instead.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.metrics_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    except urllib.error.HTTPError as error:
        print(f"unhealthy: {error.code} {error.read().decode(errors='replace')}")
        return EXIT_PROBLEM
    except (urllib.error.URLError, OSError) as error:
        print(f"no answer from {url}: {error}")
        return EXIT_PROBLEM
    print(body)
    return 0 if json.loads(body).get("status") == "ok" else EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())
