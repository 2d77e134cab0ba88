"""Past one machine, on one machine: nginx balancing three chatgate replicas over PostgreSQL and Redis,
with llama.cpp's own server as the engine deployment, and a shared files directory (docs/deployment.md).

Under steady load through nginx, one replica is killed (SIGKILL): the requests sent after it are
all served by the other two, limits hold across the survivors, and the killed replica's credits
come back. Then a rolling restart (SIGTERM, each replica in turn, started again on its port) fails
no request at all. nginx's side of it is its config below: it retries a request that could not
reach a replica on another, and names each request (X-Request-Id) so that a retry can never be
charged twice (a replica refuses a request id that was already reserved).
"""

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from PIL import Image

from chatgate.providers.local import assets
from chatgate.services.tokens import PREFIX_LENGTH
from tests.e2e import infra
from tests.e2e.infra import API_KEY, ROOT, wait_for

GRANTED = 1_000_000  # each user's free credits
MODEL = "smol"
ASK: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3}

NGINX = """
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
{body}
}}
"""


def nginx_config(work: Path, port: int, replicas: list[int]) -> str:
    """The balancer's part of docs/deployment.md, listening on ``port``."""
    body = (ROOT / "deploy" / "nginx.conf").read_text()
    body = body.replace("listen 80;", f"listen 127.0.0.1:{port};")
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n" for p in replicas)
    start = body.index("upstream chatgate {") + len("upstream chatgate {\n")
    end = body.index("    keepalive ", start)
    body = body[:start] + servers + body[end:]
    return NGINX.format(work=work, body="    " + body.replace("\n", "\n    "))


@dataclass
class Replica:
    name: str
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "chatgate", "serve", "--port", str(self.port)]
        with self.log.open("a") as out:
            self.process = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5).status_code == 200
            return False

        wait_for(ready, 300)

    def wait_for_traffic(self) -> None:
        """Until the balancer sends it requests again: a request answered after this call. Ready is
        not enough: nginx keeps a replica it could not reach out of the rotation for
        ``fail_timeout`` (2 s here), and then tries it with one request before the rest follow, so
        a replica stopped right after the previous one's ``/readyz`` can leave none in rotation."""
        start = self.log.stat().st_size

        def served() -> bool:
            with self.log.open("rb") as log:
                log.seek(start)
                return b'"event": "chat_request"' in log.read()

        wait_for(served, 120)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=120)
        finally:
            self.process = None


@dataclass
class Topology:
    url: str  # nginx
    replicas: list[Replica]
    database: str  # for asyncpg
    keys: list[str] = field(default_factory=list)

    def cli(self, *args: str) -> str:
        command = [sys.executable, "-m", "chatgate", *args]
        result = subprocess.run(command, env=self.replicas[0].env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def new_key(self, *options: str) -> str:
        email = f"topology-{time.time_ns()}@example.com"
        return self.cli("keys", "create", "--user", email, *options).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def topology(postgres: infra.Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    work = tmp_path_factory.mktemp("topology")
    (work / "nginx-tmp").mkdir()
    files = work / "files"  # what every replica reads and writes: stands in for a shared volume
    model = assets.ensure(assets.resolve("smollm2-135m-instruct-q4_1"), ROOT / ".chatgate" / "models")
    url = postgres.create_database("topology")
    llama_port, nginx_port = infra.free_port(), infra.free_port()
    ports = [infra.free_port() for _ in range(3)]
    llama = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL,
        "--host", "127.0.0.1", "--port", str(llama_port), "--n_ctx", "2048", "--n_threads", "1",
        "--interrupt_requests", "False",  # a new request must not cut the one being answered short
    ]  # fmt: skip
    catalogue = work / "catalogue.yaml"
    catalogue.write_text(
        "models:\n"
        f"  - name: {MODEL}\n"
        f"    deployment: {{kind: openai_compatible, base_url: 'http://127.0.0.1:{llama_port}/v1', model: {MODEL},"
        " max_tokens: 16}\n"
    )
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(infra.redis())
        stack.enter_context(infra.process(llama, llama_port, work / "llama.log"))
        base_env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONTRACEMALLOC"},
            **infra.UNDER_LOAD,
            "CHATGATE_DEFAULT_RPM": "10000000",  # the load runs past a user's default 600 a minute
            "CHATGATE_API_KEY": API_KEY,
            "CHATGATE_DATABASE_URL": url,
            "CHATGATE_REDIS_URL": redis.url,
            "CHATGATE_CATALOGUE": str(catalogue),
            "CHATGATE_FILES_DIR": str(files),
            "CHATGATE_PUBLIC_URL": f"http://127.0.0.1:{nginx_port}",
            "CHATGATE_FREE_CREDITS": str(GRANTED),
            "CHATGATE_USAGE_FLUSH_SECONDS": "0.2",
            "CHATGATE_DRAIN_SECONDS": "60",
        }
        subprocess.run(
            [sys.executable, "-m", "chatgate", "migrate"], env=base_env, check=True, capture_output=True
        )
        replicas = [
            Replica(f"r{i}", port, {**base_env, "CHATGATE_DATA_DIR": str(work / f"r{i}")}, work / f"r{i}.log")
            for i, port in enumerate(ports)
        ]
        for replica in replicas:
            replica.start()
            stack.callback(lambda r=replica: r.process is not None and r.stop(signal.SIGKILL))
        for replica in replicas:
            replica.wait_ready()
        (work / "nginx.conf").write_text(nginx_config(work, nginx_port, ports))
        nginx = ["nginx", "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"]
        stack.enter_context(infra.process(nginx, nginx_port, work / "nginx.log"))
        database = url.replace("postgresql+asyncpg://", "postgresql://")
        yield Topology(f"http://127.0.0.1:{nginx_port}", replicas, database)


@dataclass
class Sent:
    started: float
    ended: float
    status: int  # 0: the connection failed
    stream: bool
    complete: bool  # a stream that ended with [DONE]; a plain answer with its JSON


class Load:
    """Steady traffic through nginx from a few users, streamed and not, until stopped."""

    def __init__(self, url: str, keys: list[str], threads: int = 3) -> None:
        self.url, self.keys = url, keys
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def wait(self, more: int) -> None:
        """Until ``more`` requests beyond those already done have finished."""
        target = len(self.sent) + more
        wait_for(lambda: len(self.sent) >= target, 300)

    def _run(self, index: int) -> None:
        key = self.keys[index % len(self.keys)]
        with httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=120) as http:
            for n in range(10_000):  # bounded: at most this many requests a thread
                if self._stop.is_set():
                    return
                stream = (n + index) % 2 == 0
                started = time.monotonic()
                status, complete = 0, False
                try:
                    if stream:
                        with http.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True}) as r:
                            status = r.status_code
                            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
                            complete = status == 200 and lines[-1:] == ["data: [DONE]"]
                    else:
                        r = http.post("/v1/chat/completions", json=ASK)
                        status = r.status_code
                        complete = status == 200 and r.json()["usage"]["completion_tokens"] > 0
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                self.sent.append(Sent(started, time.monotonic(), status, stream, complete))


def usage(url: str, key: str) -> dict[str, Any]:
    report: dict[str, Any] = httpx.get(f"{url}/v1/usage", headers={"authorization": f"Bearer {key}"}).json()
    return report


def logged_cost(database: str, key: str) -> int:
    """What the usage log charged the user of ``key``, read from PostgreSQL itself."""

    async def query() -> int:
        conn = await asyncpg.connect(database)
        try:
            return int(
                await conn.fetchval(
                    "SELECT coalesce(sum(u.cost), 0) FROM usage_log u JOIN api_tokens t ON t.user_id = u.user_id"
                    " WHERE t.prefix = $1",
                    key[:PREFIX_LENGTH],
                )
            )
        finally:
            await conn.close()

    return asyncio.run(query())


KILLED: dict[str, Any] = {}  # what the kill test leaves for the credit check after it


def test_a_file_made_through_one_replica_is_read_through_another(topology: Topology) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (32, 16), (200, 40, 40)).save(picture, format="PNG")
    first, second = topology.replicas[0], topology.replicas[1]
    upload = httpx.post(
        f"http://127.0.0.1:{first.port}/v1/files",
        headers={"authorization": f"Bearer {API_KEY}"},
        files={"file": ("red.png", picture.getvalue(), "image/png")},
        data={"purpose": "vision"},
    )
    assert upload.status_code == 200, upload.text
    made = upload.json()
    assert made["url"].startswith(topology.url + "/files/")  # the link every client can follow
    fetched = httpx.get(f"http://127.0.0.1:{second.port}/files/{made['id']}")
    assert fetched.status_code == 200
    assert fetched.content == picture.getvalue()
    assert httpx.get(made["url"]).content == picture.getvalue()  # and through the balancer


def test_killing_a_replica_under_load_fails_only_what_it_was_running(topology: Topology) -> None:
    topology.keys[:] = [topology.new_key("--rpm", "100000") for _ in range(3)]
    victim = topology.replicas[1]
    with Load(topology.url, topology.keys) as load:
        load.wait(12)
        killed_at = time.monotonic()
        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        load.wait(24)
    after = [s for s in load.sent if s.started > killed_at]
    assert after and all(s.status == 200 and s.complete for s in after), [s for s in after if not s.complete]
    cut = [s for s in load.sent if s.started <= killed_at and not s.complete]
    assert len(cut) <= 3  # at most what the three clients had in flight when it died
    KILLED.update(sent=load.sent)

    # Limits hold across the two survivors (counted in Redis).
    key = topology.new_key("--rpm", "3")
    if time.time() % 60 > 45:  # a minute's count must not straddle two minutes
        time.sleep(61 - time.time() % 60)
    with httpx.Client(base_url=topology.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
        statuses = [http.post("/v1/chat/completions", json=ASK).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]

    victim.start()  # back for what follows
    victim.wait_ready()


def test_no_credit_is_lost_or_charged_twice_when_a_replica_is_killed(topology: Topology) -> None:
    assert KILLED, "runs after the kill test"

    def settled() -> bool:
        for key in topology.keys:
            report = usage(topology.url, key)
            if report["credits_used"] + report["credits_left"] != GRANTED:
                return False  # the killed replica's reservations are not all given back yet
        return True

    wait_for(settled, 120)
    for key in topology.keys:
        report = usage(topology.url, key)
        assert report["credits_used"] + report["credits_left"] == GRANTED
        assert report["credits_used"] == logged_cost(topology.database, key)
    verify = subprocess.run(
        [sys.executable, "-m", "chatgate", "ledger", "verify"],
        env=topology.replicas[0].env,
        capture_output=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_rolling_restart_under_load_fails_no_request(topology: Topology) -> None:
    keys = topology.keys or [topology.new_key("--rpm", "100000") for _ in range(3)]
    with Load(topology.url, keys) as load:
        load.wait(6)
        for replica in topology.replicas:
            # Drained: it finished what it had, then exited (uvicorn ends by re-raising the signal).
            assert replica.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
            replica.start()
            replica.wait_ready()
            replica.wait_for_traffic()  # back in nginx's rotation before the next one goes
            load.wait(6)
    failed = [s for s in load.sent if not (s.status == 200 and s.complete)]
    assert not failed, failed
    assert len(load.sent) >= 24
