"""A private, throw-away PostgreSQL cluster on 127.0.0.1 that a test may stop and start.

The machine's own server must never be restarted by a test, so the tests
that take the database away mid-sync run against a cluster of their own:
`initdb` into a temporary directory, `pg_ctl` on a free loopback port, trust
authentication for the `postgres` role. PostgreSQL refuses to run as root,
so when the tests run as root every binary runs as the `postgres` user
through `runuser`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

#: Where Debian installs the PostgreSQL 15 server binaries.
BINARIES = Path("/usr/lib/postgresql/15/bin")

#: The operating system user that owns the cluster when the tests run as root.
SERVER_USER = "postgres"

#: Seconds pg_ctl waits for the server to start or stop before it gives up.
PG_CTL_TIMEOUT = 30


def unavailable_reason() -> str | None:
    """Return why a private cluster cannot be started here, or None when it can."""
    for name in ("initdb", "pg_ctl"):
        if not (BINARIES / name).is_file():
            return f"{BINARIES / name} not found; install the postgresql-15 server package"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"the user {SERVER_USER!r} does not exist; PostgreSQL will not run as root"
        if shutil.which("runuser") is None:
            return "runuser not found; it is needed to run PostgreSQL as the postgres user"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresCluster:
    """One cluster in a temporary directory; use it as a context manager, or call `start()` and `close()`."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._root = Path(tempfile.mkdtemp(prefix="syncd-pg-"))
        self.data = self._root / "data"
        self.log_file = self._root / "server.log"
        self._as_root = os.geteuid() == 0

    @property
    def admin_url(self) -> str:
        """The SQLAlchemy URL of the cluster's `postgres` database."""
        return f"postgresql+psycopg://{SERVER_USER}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresCluster:
        """Create the cluster on first use, then start the server and wait until it accepts connections."""
        if not self.data.exists():
            self._prepare()
        self._pg_ctl("start", "-l", str(self.log_file), "-o", self._server_options())
        return self

    def stop(self) -> None:
        """Stop the server at once: open connections are cut, as in a crash of the database host."""
        self._pg_ctl("stop", "-m", "fast")

    def restart(self) -> None:
        """Stop and start the server; pooled connections of clients are dead afterwards."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log_file), "-o", self._server_options())

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _prepare(self) -> None:
        if self._as_root:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self._root, account.pw_uid, account.pw_gid)
        # fsync off and no sync after initdb: the cluster lives for one test run.
        self._run(
            BINARIES / "initdb", "-D", str(self.data), "-U", SERVER_USER, "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )

    def _server_options(self) -> str:
        # The socket goes into the cluster's own directory, so that the
        # machine's server and its socket in /var/run/postgresql are not touched.
        return (
            f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )

    def _pg_ctl(self, *args: str) -> None:
        self._run(BINARIES / "pg_ctl", "-D", str(self.data), "-w", "-t", str(PG_CTL_TIMEOUT), *args)

    def _run(self, binary: Path, *args: str) -> None:
        command = [str(binary), *args]
        if self._as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(
            command, cwd=self._root, capture_output=True, text=True, timeout=PG_CTL_TIMEOUT + 10, check=False
        )
        if result.returncode != 0:
            log_tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(
                f"{binary.name} {' '.join(args)} failed with exit code {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}\n{log_tail}"
            )
