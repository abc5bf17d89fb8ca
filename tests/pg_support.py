"""A throwaway PostgreSQL server for the tests (Debian's postgresql package's binaries).

``PgCluster.start`` runs initdb into a temporary folder and starts the server listening only
on 127.0.0.1 at a free port, its unix socket in that folder. initdb and postgres refuse to
run as root, so as root they run as the ``postgres`` system user. Durability is switched off
(fsync): the tests kill front processes, never this server.

No binaries and REQUIRE_POSTGRES unset: the tests that need it skip. CI sets
REQUIRE_POSTGRES=1 (after ``apt-get install postgresql``), so there they fail instead.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

SKIP_REASON = (
    "PostgreSQL's binaries (/usr/lib/postgresql/*/bin/initdb) are not installed: "
    "apt-get install postgresql, or set REQUIRE_POSTGRES=1 to make this a failure"
)


def find_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    return Path(found[-1]).parent if found else None


def _major(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


def require_bin_dir() -> Path:
    """The binaries' folder, or skip (fail under REQUIRE_POSTGRES=1)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(
                "REQUIRE_POSTGRES=1 but no PostgreSQL binaries "
                "(/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
            )
        pytest.skip(SKIP_REASON)
    return bin_dir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="dc-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}\n{result.stderr}")

    def start(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--lc-collate=C",  # text sorts by code point, as in SQLite
            "--lc-ctype=C.UTF-8",  # lower() folds every script's case
            "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200"
            # Each test's database is a copy of a template, written through the WAL: keep
            # the WAL small, or it grows to a gigabyte that takes long to delete.
            " -c max_wal_size=64MB -c min_wal_size=32MB"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self) -> None:
        import time

        t = time.time()
        with open("/tmp/pgstop.log", "a") as f:
            f.write(f"stop begins {t}\n")
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_name(self) -> str:
        return f"dc_test_{next(self._names)}"
