"""Credits and answers survive ``kill -9``, on SQLite and on PostgreSQL: a server killed mid-stream
gives the credits its streams held back when it starts again; an answer received in full is in the
usage log even if the server dies the next instant; and a process starting beside a live one (a
replica, or another worker of the host) leaves that one's requests in flight alone, while one that
is gone has its reservations swept by the survivors without a restart. One scenario per database,
so that each starts only three servers."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import infra
from tests.e2e.conftest import assert_ledger_adds_up
from tests.e2e.infra import Server

FREE = 10_000
QUOTA = 5_000


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = infra.free_port()
    command = [sys.executable, str(Path(__file__).with_name("faulty_upstream.py")), "--port", str(port)]
    with infra.process(command, port, tmp_path_factory.mktemp("crash-upstream") / "log"):
        yield f"http://127.0.0.1:{port}/v1"


@dataclass
class Node:
    """One chatgate process that a test may kill."""

    server: Server
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


class Cluster:
    """chatgate processes on one database (SQLite file or PostgreSQL), started and killed at will."""

    def __init__(self, workdir: Path, upstream: str, database: str | None) -> None:
        self.workdir = workdir
        (workdir / "catalogue.yaml").write_text(
            "models:\n"
            f"  - {{name: slow, retries: 0, deployment: {{kind: openai_compatible, base_url: '{upstream}', model: slow}}}}\n"
            f"  - {{name: ok, retries: 0, deployment: {{kind: openai_compatible, base_url: '{upstream}', model: ok}}}}\n"
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONTRACEMALLOC"},
            "CHATGATE_API_KEY": infra.API_KEY,
            "CHATGATE_DATA_DIR": str(workdir / "data"),
            "CHATGATE_CATALOGUE": str(workdir / "catalogue.yaml"),
            "CHATGATE_FREE_CREDITS": str(FREE),
            "CHATGATE_LEASE_SECONDS": "3",  # swept every second
            "CHATGATE_LOG_LEVEL": "warning",
        }
        if database is not None:
            self.env["CHATGATE_DATABASE_URL"] = database
        subprocess.run(
            [sys.executable, "-m", "chatgate", "migrate"], env=self.env, check=True, capture_output=True
        )
        self.nodes: list[Node] = []

    def start(self) -> Node:
        port, log = infra.free_port(), self.workdir / f"server-{len(self.nodes)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "chatgate", "serve", "--port", str(port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        node = Node(Server(f"http://127.0.0.1:{port}", log, self.env), process)
        self.nodes.append(node)
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(node.server.base_url + "/healthz", timeout=1).status_code == 200:
                    return node
            assert time.monotonic() < deadline, "chatgate did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.terminate()
                node.process.wait(timeout=20)


@pytest.fixture(params=["sqlite", "postgres"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path, upstream: str) -> Iterator[Cluster]:
    database = None
    if request.param == "postgres":
        name = f"crash{time.time_ns()}"
        database = request.getfixturevalue("postgres").create_database(name)
    running = Cluster(tmp_path, upstream, database)
    try:
        yield running
    finally:
        running.stop()


class Account:
    """A user signed up on the console, with a token capped at QUOTA credits."""

    def __init__(self, node: Node) -> None:
        with httpx.Client(base_url=node.server.base_url) as http:
            email = f"crash-{time.time_ns()}@example.com"
            signed = http.post("/api/signup", json={"email": email, "password": "correct horse battery"})
            assert signed.status_code == 201, signed.text
            created = http.post(
                "/api/tokens",
                json={"name": "t", "quota_cap": QUOTA},
                headers={"x-csrf-token": signed.json()["csrf_token"]},
            )
            assert created.status_code == 201, created.text
        self.key: str = created.json()["key"]

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    def usage(self, node: Node) -> dict[str, Any]:
        report: dict[str, Any] = httpx.get(node.server.base_url + "/v1/usage", headers=self.headers()).json()
        return report


def streaming(
    http: httpx.Client, account: Account, words: int
) -> contextlib.AbstractContextManager[httpx.Response]:
    """A stream of ``words`` words from the slow model, open while the block runs."""
    return http.stream(
        "POST", "/v1/chat/completions", json=body("slow", words, True), headers=account.headers()
    )


def body(model: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Go on."}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def test_credits_and_answers_survive_kill_9(cluster: Cluster) -> None:
    first = cluster.start()
    account = Account(first)
    readers = []  # kept: a reader dropped mid-stream closes its connection
    with contextlib.ExitStack() as streams:
        http = streams.enter_context(httpx.Client(base_url=first.server.base_url, timeout=30))
        for _ in range(3):  # three streams in flight, each having delivered a few words
            response = streams.enter_context(streaming(http, account, 400))
            readers.append(response.iter_lines())
            for _ in range(6):
                next(readers[-1])
        assert account.usage(first)["credits_left"] < QUOTA - 3 * 400  # each holds its whole bound
        answered = http.post("/v1/chat/completions", json=body("ok", 16, False), headers=account.headers())
        streamed = http.post("/v1/chat/completions", json=body("ok", 16, True), headers=account.headers())
        assert answered.status_code == streamed.status_code == 200
        assert streamed.text.endswith("data: [DONE]\n\n")
        first.kill()  # the very instant the two answers are in: no batch, no graceful shut-down
    second = cluster.start()
    report = account.usage(second)
    # The two answers are recorded and charged; what the three cut streams held is back.
    assert [m["requests"] for m in report["models"]] == [2, 3]  # ok: answered; slow: interrupted
    slow = report["models"][1]
    assert slow["credits_used"] == 0
    assert report["credits_used"] == 2 * answered.json()["usage"]["total_tokens"]  # a credit a token
    assert report["credits_left"] == QUOTA - report["credits_used"]
    assert_ledger_adds_up(second.server, cli=True)

    # A process starting beside a live one (a replica, or another worker of the host) leaves the
    # live one's requests alone...
    with (
        httpx.Client(base_url=second.server.base_url, timeout=60) as http,
        streaming(http, account, 40) as response,
    ):
        lines = response.iter_lines()
        next(lines)
        third = cluster.start()  # its start-up sweep runs now, and again every second
        time.sleep(1.5)
        assert "".join(lines).endswith("data: [DONE]")  # the second process finishes its stream
    report = account.usage(third)
    assert report["models"][1]["requests"] == 4 and report["models"][1]["credits_used"] > 0

    # ...and sweeps what one that died held, without waiting for a restart.
    left = report["credits_left"]
    with (
        httpx.Client(base_url=second.server.base_url, timeout=60) as http,
        streaming(http, account, 400) as response,
    ):
        lines = response.iter_lines()  # kept: a reader dropped closes the connection, and the server
        next(lines)  # then settles the stream as the client leaving (prompt and a word) before the kill
        assert account.usage(third)["credits_left"] < left - 400  # in flight: its whole bound held
        second.kill()
    deadline = time.monotonic() + 15  # the survivor sweeps each second: a bound, not a timing test
    while account.usage(third)["credits_left"] != left and time.monotonic() < deadline:
        time.sleep(0.2)
    assert account.usage(third)["credits_left"] == left
    assert_ledger_adds_up(third.server)


def test_while_the_database_is_unreachable_requests_fail_closed_and_nothing_is_lost(
    tmp_path: Path, upstream: str
) -> None:
    """PostgreSQL goes away mid-stream: the stream ends with an error instead of its final chunk,
    nothing new is served, and once it is back the held credits are swept back and the ledger adds up."""
    with infra.postgres() as own:
        cluster = Cluster(tmp_path, upstream, own.create_database("unreachable"))
        try:
            node = cluster.start()
            account = Account(node)
            with (
                httpx.Client(base_url=node.server.base_url, timeout=60) as http,
                streaming(http, account, 20) as response,
            ):
                lines = response.iter_lines()
                next(lines)
                own.stop()
                events = [line for line in lines if line.startswith("data: ")]
                refused = http.post(
                    "/v1/chat/completions", json=body("ok", 4, False), headers=account.headers()
                )
            assert events[-1] == "data: [DONE]"
            assert json.loads(events[-2][len("data: ") :])["error"]["code"] == "storage_unavailable"
            assert not any('"finish_reason":"stop"' in line for line in events)  # no end without a record
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "storage_unavailable"
            own.start()
            deadline = time.monotonic() + 20  # the sweep, each second, once the database answers again
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, KeyError):
                    if account.usage(node)["credits_left"] == QUOTA:
                        break
                time.sleep(0.3)
            report = account.usage(node)
            assert report["credits_left"] == QUOTA and report["credits_used"] == 0
            assert_ledger_adds_up(node.server)
        finally:
            cluster.stop()
