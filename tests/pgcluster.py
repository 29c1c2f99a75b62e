"""A throwaway PostgreSQL cluster of a test's own, to stop and start at will.

The shared server (``TEST_POSTGRES_URL``) is never stopped by a test: tests that take the
database away make their own cluster with ``initdb`` in a temporary folder, on a free port
with its socket in that folder, and remove it afterwards. As root, PostgreSQL refuses to
run, so the cluster then belongs to the ``postgres`` OS user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import free_port

BIN_DIRS = (
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
)


class ClusterUnavailable(RuntimeError):
    """This machine cannot run a cluster of its own (no binaries, or no user to run them)."""


def find_binaries() -> Path:
    override = os.environ.get("PG_BIN_DIR")
    candidates = [override] if override else list(BIN_DIRS)
    on_path = shutil.which("pg_ctl")
    if on_path and not override:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    raise ClusterUnavailable(
        f"no PostgreSQL server binaries (initdb, pg_ctl) in {', '.join(c for c in candidates if c)}"
        " (set PG_BIN_DIR)"
    )


@dataclass
class Cluster:
    bin_dir: Path
    base: Path
    port: int
    user: str | None  # the OS user the server runs as; None: this process's user
    paused: list[int] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    @property
    def url(self) -> str:
        """The cluster's ``postgres`` database, as the service's DATABASE_URL."""
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def asyncpg_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str, timeout: float = 60) -> None:
        args = [str(self.bin_dir / command[0]), *command[1:]]
        if self.user is not None:
            args = ["runuser", "-u", self.user, "--", *args]
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.base
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command[:2])} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n{self.server_log()}"
            )

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def init(self) -> None:
        # --no-sync: a test's cluster need not survive a power cut of the test machine.
        self._run(
            "initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
            "--no-sync", "--no-instructions", "-E", "UTF8",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log), "-o", options, "-w", "-t",
            "30", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stops the server: ``fast`` (clients are disconnected, a clean shutdown) or
        ``immediate`` (every server process quits at once, as in a crash)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def server_processes(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, ...)."""
        postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        processes = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            # "pid (name) state ppid ...": the name may hold spaces and parentheses.
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == postmaster:
                processes.append(int(entry.name))
        return processes

    def pause(self) -> None:
        """Freezes every server process (SIGSTOP): the server still accepts TCP connections
        (the kernel does that) but answers nothing, like a host that hangs."""
        self.paused = self.server_processes()
        for pid in self.paused:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused = []

    def remove(self) -> None:
        self.resume()
        if self.running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterUnavailable(
            "running as root, and there is no 'postgres' OS user to run a cluster as"
        ) from None
    if shutil.which("runuser") is None:
        raise ClusterUnavailable("running as root, and runuser is missing")
    return "postgres"


def check_own_cluster_possible() -> None:
    """Raises ClusterUnavailable, saying why, where this machine cannot run one."""
    find_binaries()
    _server_user()


@contextmanager
def own_cluster() -> Iterator[Cluster]:
    """A started cluster of its own, stopped and removed on the way out, whatever happens."""
    bin_dir = find_binaries()
    user = _server_user()
    # Not under pytest's tmp_path: that folder is private to root, and the server's user must
    # reach its data directory.
    base = Path(tempfile.mkdtemp(prefix="order-events-pg-"))
    cluster = Cluster(bin_dir=bin_dir, base=base, port=free_port(), user=user)
    try:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(base, entry.pw_uid, entry.pw_gid)
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
