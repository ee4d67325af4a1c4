"""A throwaway PostgreSQL server for the answer-log tests, and ``db_url``: the same test on both databases.

Debian's ``postgresql`` package (binaries under /usr/lib/postgresql/<version>/bin, or
``$LLMCAL_PG_BIN``): the session fixture ``initdb``'s a cluster in a temporary folder (as the
``postgres`` or ``nobody`` user when the tests run as root: PostgreSQL refuses root), starts it
on a free loopback port with trust authentication, and stops it afterwards.  Each test that
asks for ``db_url`` gets a fresh database.  Where the binaries are missing or the server does
not start, the PostgreSQL half skips with the reason; the SQLite half always runs.

Import the fixtures into a test module: ``from pg_server import db_url, postgres_server  # noqa: F401``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    env = os.environ.get("LLMCAL_PG_BIN")
    cands = [env] if env else sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                     key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for c in reversed(cands):
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir: Path, root: Path, port: int, as_user: str | None) -> None:
        self.bin_dir, self.root, self.port, self.as_user = bin_dir, root, port, as_user
        self.data = root / "data"
        self.sockets = root / "sock"

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        return ["runuser", "-u", self.as_user, "--", *cmd] if self.as_user else cmd

    def start(self) -> None:
        self.sockets.mkdir()
        if self.as_user:
            pw = pwd.getpwnam(self.as_user)
            for p in (self.root, self.sockets):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        subprocess.run(self._cmd("initdb", "-D", str(self.data), "-A", "trust", "-U", "llmcal", "--no-sync",
                                 "-E", "UTF8"), check=True, capture_output=True, timeout=120)
        opts = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        subprocess.run(self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log.txt"), "-o", opts,
                                 "-w", "-t", "60", "start"), check=True, capture_output=True, timeout=90)

    def stop(self) -> None:
        subprocess.run(self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                       capture_output=True, timeout=60)

    def new_database(self) -> str:
        """A fresh, empty database; its URL (postgresql://, which the answer log reads with psycopg)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=llmcal dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://llmcal@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres_server():
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; or set LLMCAL_PG_BIN)")
    as_user = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                as_user = name
                break
            except KeyError:
                continue
        if as_user is None or shutil.which("runuser") is None:
            pytest.skip("running as root, with no 'postgres'/'nobody' user or runuser to start PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="llmcal-pg-"))
    server = PostgresServer(bin_dir, root, _free_port(), as_user)
    try:
        server.start()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        detail = getattr(err, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not be started: {err} {detail.decode(errors='replace')[-300:]}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh database URL: a SQLite file, then a new database on the throwaway PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'serve.db'}"
    return request.getfixturevalue("postgres_server").new_database()
