"""Real servers for the end-to-end tests: chatgate, PostgreSQL and Redis, each started and stopped here."""

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
API_KEY = "sk-test-" + "k" * 24
# The logs of the servers running now, oldest first: a failing test's report ends with their last
# lines (tests/e2e/conftest.py), so a failure in CI says what the server was doing.
RUNNING_LOGS: list[Path] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    base_url: str
    log: Path
    env: dict[str, str]
    proc: "subprocess.Popen[bytes] | None" = None  # to kill it outright (SIGKILL) in a test

    def kill(self) -> None:
        """SIGKILL the server: nothing of it runs after this."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def cli(self, *args: str) -> str:
        """Run a `chatgate` command against this server's database; its stdout."""
        result = subprocess.run(
            [sys.executable, "-m", "chatgate", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout


# Every test signs up from 127.0.0.1, and some run dozens of requests at once as one user: the
# servers of the tests start with the per-address and per-user limits out of the way (the tests of
# those limits set them back).
UNDER_LOAD = {
    "CHATGATE_SIGNUPS_PER_HOUR": "0",
    "CHATGATE_DEFAULT_CONCURRENCY": "1000",
}


@contextlib.contextmanager
def chatgate(workdir: Path, catalogue: str, **env_overrides: str) -> Iterator[Server]:
    """A chatgate server on a free port, its database migrated first; its output goes to ``server.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "catalogue.yaml").write_text(catalogue)
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONTRACEMALLOC"},
        **UNDER_LOAD,
        "CHATGATE_API_KEY": API_KEY,
        "CHATGATE_DATA_DIR": str(workdir / "data"),
        "CHATGATE_MODEL_DIR": str(ROOT / ".chatgate" / "models"),
        "CHATGATE_CATALOGUE": str(workdir / "catalogue.yaml"),
        "CHATGATE_ENGINE_THREADS": "2",
        "CHATGATE_USAGE_FLUSH_SECONDS": "0.2",
        **env_overrides,
    }
    subprocess.run([sys.executable, "-m", "chatgate", "migrate"], env=env, check=True, capture_output=True)
    port, log = free_port(), workdir / "server.log"
    command = [sys.executable, "-m", "chatgate", "serve", "--port", str(port)]
    with process(command, port, log, env, timeout=300) as proc:  # it listens once its models are loaded
        yield Server(f"http://127.0.0.1:{port}", log, env, proc)


@dataclass
class Replicas:
    """Two chatgate processes sharing one database and one Redis."""

    a: Server
    b: Server
    redis: "Redis"


def _pg_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (make test installs it)")
    return found


@dataclass
class Postgres:
    port: int
    socket_dir: str
    data: str = ""  # its data directory, options and log file: for stopping and starting it again
    options: str = ""
    log: str = ""

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        subprocess.run(
            _as_postgres(
                [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name]
            ),
            check=True,
            capture_output=True,
        )
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once, as a crash would: its clients' connections drop."""
        command = [_pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "stop"]
        subprocess.run(_as_postgres(command), check=True, capture_output=True)

    def start(self) -> None:
        command = [_pg_bin("pg_ctl"), "-D", self.data, "-o", self.options, "-w", "-l", self.log, "start"]
        subprocess.run(_as_postgres(command), check=True, capture_output=True)


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; as root, run its tools as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on loopback, trusting local connections."""
    base = tempfile.mkdtemp(prefix="chatgate-pg-")
    data, sockets = os.path.join(base, "data"), os.path.join(base, "sock")
    os.makedirs(sockets)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres([_pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(
        _as_postgres(
            [_pg_bin("pg_ctl"), "-D", data, "-o", options, "-w", "-l", os.path.join(base, "log"), "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield Postgres(port, sockets, data, options, os.path.join(base, "log"))
    finally:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", data, "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Redis:
    port: int
    _stop: contextlib.ExitStack

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self._stop.close()


@contextlib.contextmanager
def redis() -> Iterator[Redis]:
    """A throwaway redis-server on loopback, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make test installs it)")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(process(command, port, Path(tempfile.mkdtemp(prefix="chatgate-redis-")) / "log"))
        server = Redis(port, stack.pop_all())  # a test may stop it early (stop() is idempotent)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def process(
    command: list[str],
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Any server started as a subprocess, ready once its port accepts connections."""
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    RUNNING_LOGS.append(log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[:3]} did not listen on {port}")
            time.sleep(0.1)
        yield proc
    finally:
        RUNNING_LOGS.remove(log)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(check: Callable[[], T], timeout: float) -> T:
    """Poll until check() is truthy (a bound on waiting, not a performance assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
