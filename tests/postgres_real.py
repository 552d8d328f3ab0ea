"""The postgres tier's real PostgreSQL: Debian's server, started by
scripts/start-postgres.sh on a free loopback port in a run folder of its own (the
``postgres`` fixture of conftest), and what tests need to drive it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO_ROOT, unavailable

START = REPO_ROOT / "scripts" / "start-postgres.sh"
WAIT = 60.0


def _bindir() -> Path | None:
    """The newest installed server's programs (Debian keeps them out of PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@dataclass(frozen=True)
class Postgres:
    folder: Path  # the script's run folder
    url: str
    password: str
    bindir: Path

    def pg_ctl(self, *args: str) -> None:
        """pg_ctl on this cluster, as its OS user (postgres when the tests run as root)."""
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.folder / "data"), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(
            cmd, cwd="/", capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"pg_ctl {' '.join(args)}: {done.stdout}{done.stderr}"

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "fast", "-w")

    def database(self) -> str:
        """A new empty database owned by the script's role: its URL (a study storage of
        its own for one test)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        cmd = [str(self.bindir / "psql"), "-X", "-q", "-h", str(self.folder), "-p", self.port]
        cmd += ["-d", "postgres", "-c", f"CREATE DATABASE {name} OWNER trainchain"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return self.url.rsplit("/", 1)[0] + "/" + name

    @property
    def port(self) -> str:
        """The server's port, from its URL."""
        return self.url.rsplit(":", 1)[1].split("/", 1)[0]

    def start(self) -> None:
        self.pg_ctl("start", "-w", "-t", f"{WAIT:.0f}", "-l", str(self.folder / "postgres.log"))


def require_postgres() -> Path:
    """The server's programs; the tier is skipped (failed where CI is set) without them."""
    bindir = _bindir()
    if bindir is None or shutil.which("psql") is None:
        unavailable(
            "PostgreSQL is not installed (scripts/start-postgres.sh --install-only installs "
            "Debian's postgresql)",
            "postgres",
        )
    return bindir


@contextmanager
def started() -> Iterator[Postgres]:
    """A PostgreSQL of scripts/start-postgres.sh on a free port, stopped at the end. Its run
    folder is under /tmp, not pytest's: run as root the server runs as the postgres user,
    which pytest's private temporary folders keep out."""
    bindir = require_postgres()
    folder = Path(tempfile.mkdtemp(prefix="trainchain-test-postgres."))
    try:
        started = subprocess.run(
            [str(START), "--port", "0", "--dir", str(folder)],
            capture_output=True,
            text=True,
            timeout=600,  # installing the package, where missing, takes a minute
            check=False,
        )
        assert started.returncode == 0, started.stderr
        exported = dict(
            line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines()
        )
        password = (folder / "password").read_text()
        assert password not in started.stderr  # the password is printed only for eval
        assert exported["TRAINCHAIN_POSTGRES_DIR"] == str(folder)
        assert exported["TRAINCHAIN_STUDY_STORAGE"] == exported["TRAINCHAIN_POSTGRES_URL"]
        yield Postgres(folder, exported["TRAINCHAIN_POSTGRES_URL"], password, bindir)
    finally:
        subprocess.run([str(START), "--stop", str(folder)], timeout=120, check=False)
        shutil.rmtree(folder, ignore_errors=True)
