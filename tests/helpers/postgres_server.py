"""A throwaway PostgreSQL server for tests: initdb into a temporary folder, a free loopback port,
password (scram-sha-256) logins over TCP, and stop/start/restart mid-test.

PostgreSQL refuses to run as root. As root the server runs as another user: $DMLT_PG_OS_USER,
else Debian's `postgres` (made by the postgresql package), else `nobody`. The binaries come
from $DMLT_PG_BINDIR, else the newest /usr/lib/postgresql/*/bin (Debian), else $PATH;
hack/setup.sh installs them.

    with PostgresServer.create() as pg:
        url = pg.create_database("optuna")   # postgresql+psycopg2://dmlt:...@127.0.0.1:PORT/optuna
        pg.restart()
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "dmlt"
BINARIES = ("initdb", "pg_ctl", "postgres")


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be run here (binaries or a non-root user missing)."""


def find_bindir() -> Path:
    """The folder holding initdb, pg_ctl and postgres, or PostgresUnavailable saying how to get them."""
    candidates = []
    if os.environ.get("DMLT_PG_BINDIR"):
        candidates.append(Path(os.environ["DMLT_PG_BINDIR"]))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in BINARIES):
            return folder
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        f"{', '.join(map(str, candidates)) or '$PATH or /usr/lib/postgresql/*/bin'}: run hack/setup.sh "
        "(as root it installs Debian's postgresql package) or set DMLT_PG_BINDIR"
    )


def server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (this process's user) unless we are root."""
    if os.geteuid() != 0:
        return None
    names = [os.environ["DMLT_PG_OS_USER"]] if os.environ.get("DMLT_PG_OS_USER") else ["postgres", "nobody"]
    for name in names:
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        if user.pw_uid != 0:
            return user
    raise PostgresUnavailable(
        f"PostgreSQL refuses to run as root and none of the users {', '.join(names)} exists: "
        "install Debian's postgresql package (hack/setup.sh) or set DMLT_PG_OS_USER"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, root: Path, bindir: Path, user: pwd.struct_passwd | None, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.bindir = bindir
        self.user = user
        self.port = port
        self.password = secrets.token_urlsafe(12)
        self.running = False

    # ---- lifecycle -----------------------------------------------------------------------
    @classmethod
    def create(cls, port: int | None = None) -> PostgresServer:
        """initdb a fresh cluster in a new temporary folder and start it."""
        bindir, user = find_bindir(), server_user()
        # Not under pytest's tmp_path: its root is private to root, and the server user must reach it.
        root = Path(tempfile.mkdtemp(prefix="dmlt-pg-"))
        server = cls(root, bindir, user, port or free_port())
        try:
            server._initdb()
            server.start()
        except BaseException:
            server.close()
            raise
        return server

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            for path in (self.root, pwfile):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        pwfile.unlink()

    def start(self) -> None:
        # Loopback TCP only; the Unix socket in the data folder (no system-wide socket dir needed);
        # no fsync: a test database need not survive a power cut, only a (fast) restart.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{self.data}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: fast (disconnect clients, clean shutdown) or immediate (a crash)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
            self.running = False

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down for down_s seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- use -----------------------------------------------------------------------------
    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its SQLAlchemy URL."""
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.password, dbname="postgres"
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return self.url(name)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _run(self, binary: str, *args: str) -> None:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {"PATH": f"{self.bindir}:/usr/bin:/bin", "LANG": "C", "LC_ALL": "C"}
        if self.user is not None:
            env["HOME"] = str(self.root)
        proc = subprocess.run(
            [str(self.bindir / binary), *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{binary} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n"
                f"server log:\n{self.log_tail()}"
            )
