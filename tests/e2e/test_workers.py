"""`chatgate serve --workers 2`: two processes on one port, one engine process, limits shared without Redis.

Each test picks its connections by the worker that accepted them (read from /proc: which process
holds the server's end of the connection), so a request is known to run on one worker or the
other, never left to chance.
"""

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import infra
from tests.e2e.conftest import EMBED, SMALL, well_inside_a_minute
from tests.e2e.infra import API_KEY, ROOT, wait_for

CATALOGUE = f"""
models:
  - name: {SMALL}
    deployment: {{kind: local, asset: smollm2-135m-instruct-q4_1, context_length: 2048, instances: 1}}
  - name: {EMBED}
    deployment: {{kind: local_embedding, asset: all-minilm-l6-v2, workers: 1}}
"""
HI: dict[str, Any] = {"model": SMALL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}
# Far longer than any test waits for: the small model's end of turn is banned, so it cannot stop early.
LONG: dict[str, Any] = {
    "model": SMALL,
    "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
    "max_tokens": 1500,
    "temperature": 0,
    "logit_bias": {"2": -100},
    "stream": True,
}


@dataclass
class Workers:
    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    log: Path
    opened: list[http.client.HTTPConnection] = field(default_factory=list)

    def descendants(self) -> list[int]:
        return _descendants(self.process.pid)

    def workers(self) -> list[int]:
        return [pid for pid in self.descendants() if "spawn_main" in _cmdline(pid)]

    def engines(self) -> list[int]:
        return [pid for pid in self.descendants() if "chatgate engine" in _cmdline(pid)]

    def connection(self, worker: int) -> http.client.HTTPConnection:
        """A keep-alive connection that ``worker`` accepted."""
        for _ in range(100):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            if _holder(conn, self.port, self.workers()) == worker:
                self.opened.append(conn)
                return conn
            conn.close()
        raise AssertionError(f"worker {worker} accepted none of 100 connections")

    def cli(self, *args: str) -> str:
        command = [sys.executable, "-m", "chatgate", *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True).stdout


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _holder(conn: http.client.HTTPConnection, port: int, pids: list[int]) -> int | None:
    """The process holding the server's end of ``conn``."""
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if int(local, 16) == port and int(remote, 16) == client_port:
            inode = fields[9]
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    workdir = tmp_path_factory.mktemp("workers")
    (workdir / "catalogue.yaml").write_text(CATALOGUE)
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONTRACEMALLOC"},
        **infra.UNDER_LOAD,
        "CHATGATE_API_KEY": API_KEY,
        "CHATGATE_DATA_DIR": str(workdir / "data"),
        "CHATGATE_MODEL_DIR": str(ROOT / ".chatgate" / "models"),
        "CHATGATE_CATALOGUE": str(workdir / "catalogue.yaml"),
        "CHATGATE_ENGINE_THREADS": "1",
        "CHATGATE_USAGE_FLUSH_SECONDS": "0.2",
        "CHATGATE_MAX_QUEUE": "1",
        "CHATGATE_DRAIN_SECONDS": "300",  # the drain test's stream must end on its own, however busy the machine
    }
    subprocess.run([sys.executable, "-m", "chatgate", "migrate"], env=env, check=True, capture_output=True)
    port, log = infra.free_port(), workdir / "server.log"
    command = [sys.executable, "-m", "chatgate", "serve", "--port", str(port), "--workers", "2"]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "listening" in log.read_text() or process.poll() is not None, 300)
        assert process.poll() is None, log.read_text()
        running = Workers(process, port, env, log)
        wait_for(lambda: len(running.workers()) == 2, 30)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(autouse=True)
def _close_connections(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "workers" in request.fixturenames:
        running: Workers = request.getfixturevalue("workers")
        for conn in running.opened:
            conn.close()
        running.opened.clear()


def post(
    conn: http.client.HTTPConnection, body: dict[str, Any], key: str = API_KEY
) -> http.client.HTTPResponse:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers)
    return conn.getresponse()


def engine_stats(conn: http.client.HTTPConnection) -> dict[str, Any]:
    conn.request(
        "GET", "/healthz", headers={"authorization": f"Bearer {API_KEY}"}
    )  # the detail: the operator's
    stats: dict[str, Any] = json.loads(conn.getresponse().read())["models"][SMALL]
    return stats


def test_the_local_model_is_loaded_once_in_the_engine_process(workers: Workers) -> None:
    engines, pids = workers.engines(), workers.workers()
    assert len(engines) == 1 and len(pids) == 2

    def weights_mapped(pid: int) -> bool:
        return ".gguf" in Path(f"/proc/{pid}/maps").read_text()

    # The workers read the model's vocabulary (to check and bound requests before admitting them),
    # never its weights.
    assert weights_mapped(engines[0])
    assert not any(weights_mapped(pid) for pid in pids)
    for pid in pids:  # and both workers answer from it
        response = post(workers.connection(pid), HI)
        assert response.status == 200
        assert json.loads(response.read())["usage"]["completion_tokens"] == 2


def test_the_local_embedding_model_is_loaded_once_in_the_engine_process(workers: Workers) -> None:
    """Issue 18: the workers hold what they need to check and bound a request (its vector length,
    vocabulary, limits, read from the engine), never ONNX Runtime or the model; both answer from the
    one the engine process loaded, with the same vectors and the same exact count."""
    engines, pids = workers.engines(), workers.workers()

    def onnx_loaded(pid: int) -> bool:
        return "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()

    assert onnx_loaded(engines[0])
    assert not any(onnx_loaded(pid) for pid in pids)
    body = {"model": EMBED, "input": ["the shared engine", "one copy of the weights"]}
    answers = []
    for pid in pids:
        conn = workers.connection(pid)
        headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
        conn.request("POST", "/v1/embeddings", body=json.dumps(body), headers=headers)
        response = conn.getresponse()
        assert response.status == 200
        answers.append(json.loads(response.read()))
    first, second = answers
    assert [len(item["embedding"]) for item in first["data"]] == [384, 384]
    assert first["data"] == second["data"] and first["usage"] == second["usage"]
    assert first["usage"]["prompt_tokens"] > 0
    # A request the worker can refuse alone (vectors longer than the model's) never reaches the engine.
    conn = workers.connection(pids[0])
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    conn.request("POST", "/v1/embeddings", body=json.dumps({**body, "dimensions": 100}), headers=headers)
    response = conn.getresponse()
    assert response.status == 400 and json.loads(response.read())["error"]["param"] == "dimensions"


def test_a_tokens_requests_per_minute_hold_across_workers(workers: Workers) -> None:
    email = f"workers-{time.time_ns()}@example.com"
    key = workers.cli("keys", "create", "--user", email, "--rpm", "4").strip().splitlines()[-1]
    well_inside_a_minute()
    one, other = (workers.connection(pid) for pid in workers.workers())  # idle ones close after 5 s
    statuses = []
    for i in range(6):
        response = post(one if i % 2 == 0 else other, HI, key)
        response.read()
        statuses.append(response.status)
    assert statuses == [200] * 4 + [429] * 2
    assert response.getheader("x-ratelimit-limit-requests") == "4"
    assert response.getheader("x-ratelimit-remaining-requests") == "0"


def test_one_engine_queue_for_all_workers_and_a_client_that_leaves_frees_its_slot(workers: Workers) -> None:
    """One instance and a queue of one: the first stream generates, the second waits, and a third
    request, on the other worker, finds the queue full (429). Then both clients leave."""
    first_worker, second_worker = workers.workers()
    before = engine_stats(workers.connection(first_worker))["cancelled"]
    first = workers.connection(first_worker)
    generating = post(first, LONG)
    assert generating.status == 200
    generating.readline()  # its first chunk: it holds the engine's only instance
    second = workers.connection(second_worker)
    second.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(LONG),
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )
    third = workers.connection(first_worker)
    wait_for(lambda: engine_stats(third)["queued"] == 1, 30)

    refused = post(third, HI)
    body = json.loads(refused.read())
    assert refused.status == 429
    assert body["error"]["code"] == "too_many_requests"
    assert int(refused.getheader("retry-after") or 0) >= 1

    first.close()  # both clients leave: the engine stops the generation and drops the waiter
    second.close()
    stats = wait_for(lambda: (s := engine_stats(third))["busy"] == 0 and s["queued"] == 0 and s, 30)
    assert stats["cancelled"] >= before + 1


def _reservations(workers: Workers) -> dict[str, int]:
    """Each open reservation's request id, and the pid of the worker holding it."""
    database = Path(workers.env["CHATGATE_DATA_DIR"]) / "chatgate.db"
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT r.trace_id, l.pid FROM reservations r JOIN leases l ON l.owner = r.owner"
        ).fetchall()
    return {trace: pid for trace, pid in rows}


def _logged(workers: Workers, trace_id: str) -> tuple[str, str | None, int]:
    database = Path(workers.env["CHATGATE_DATA_DIR"]) / "chatgate.db"
    with sqlite3.connect(database) as db:
        row = db.execute(
            "SELECT status, error_code, cost FROM usage_log WHERE trace_id = ?", (trace_id,)
        ).fetchone()
    assert row is not None, trace_id
    return row[0], row[1], int(row[2])


def test_a_worker_that_starts_leaves_a_live_siblings_reservations_alone(workers: Workers) -> None:
    """Each worker holds its reservations under a lease of its own: when one is killed, the worker
    that replaces it refunds the dead one's at start-up, and leaves its live sibling's alone (which
    its own worker settles, when its client leaves, for what it delivered)."""
    email = f"sibling-{time.time_ns()}@example.com"
    key = workers.cli("keys", "create", "--user", email).strip().splitlines()[-1]
    survivor, victim = workers.workers()
    ids = {pid: f"sibling-{pid}-{time.time_ns()}" for pid in (survivor, victim)}
    first = workers.connection(survivor)
    assert first.sock is not None
    first.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # unread, it holds the stream back
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    first.request(
        "POST", "/v1/chat/completions", json.dumps(LONG), {**headers, "x-request-id": ids[survivor]}
    )
    generating = first.getresponse()
    assert generating.status == 200
    generating.readline()  # it holds the engine's one instance
    second = workers.connection(victim)  # waits in the engine's queue, its credits reserved
    second.request("POST", "/v1/chat/completions", json.dumps(LONG), {**headers, "x-request-id": ids[victim]})
    wait_for(lambda: _reservations(workers) == {ids[survivor]: survivor, ids[victim]: victim}, 30)

    os.kill(victim, signal.SIGKILL)
    # Its replacement starts, and its start-up sweep gives back what the dead worker held.
    wait_for(lambda: len(workers.workers()) == 2 and ids[victim] not in _reservations(workers), 120)
    assert _reservations(workers) == {ids[survivor]: survivor}  # the live sibling's stream is untouched
    assert _logged(workers, ids[victim]) == ("error", "interrupted", 0)

    generating.readline()  # the survivor's stream goes on; then its client leaves
    first.close()
    wait_for(lambda: ids[survivor] not in _reservations(workers), 60)
    status, code, cost = _logged(workers, ids[survivor])  # settled by its own worker, and charged
    assert status in ("cancelled", "ok") and code is None and cost > 0
    assert "ledger verified" in workers.cli("ledger", "verify")


def test_past_the_drain_deadline_a_stream_is_cut_and_charged_for_what_it_delivered(
    tmp_path: Path,
) -> None:
    """One process, a drain of one second: SIGTERM cuts a long stream at the deadline, and the
    process settles it (delivered tokens charged, the rest refunded) before it exits."""
    (tmp_path / "catalogue.yaml").write_text(CATALOGUE)
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONTRACEMALLOC"},
        **infra.UNDER_LOAD,
        "CHATGATE_API_KEY": API_KEY,
        "CHATGATE_DATA_DIR": str(tmp_path / "data"),
        "CHATGATE_MODEL_DIR": str(ROOT / ".chatgate" / "models"),
        "CHATGATE_CATALOGUE": str(tmp_path / "catalogue.yaml"),
        "CHATGATE_ENGINE_THREADS": "1",
        "CHATGATE_DRAIN_SECONDS": "1",
    }
    run = [sys.executable, "-m", "chatgate"]
    subprocess.run([*run, "migrate"], env=env, check=True, capture_output=True)
    key = (
        subprocess.run(
            [*run, "keys", "create", "--user", "drain@example.com"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    port = infra.free_port()
    command = [*run, "serve", "--port", str(port)]
    with infra.process(command, port, tmp_path / "server.log", env, timeout=300) as server:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        response = post(conn, LONG, key)
        trace_id = response.getheader("x-request-id")
        assert response.readline().startswith(b"data: ")
        server.send_signal(signal.SIGTERM)
        with contextlib.suppress(http.client.HTTPException, OSError):
            response.read()  # cut at the deadline, long before its 1,500 tokens
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
        conn.close()
    with sqlite3.connect(tmp_path / "data" / "chatgate.db") as db:
        status, prompt, completion, cost = db.execute(
            "SELECT status, prompt_tokens, completion_tokens, cost FROM usage_log WHERE trace_id = ?",
            (trace_id,),
        ).fetchone()
        assert db.execute("SELECT count(*) FROM reservations").fetchone() == (0,)
    assert status == "cancelled"
    assert 0 < completion < 1500 and cost == prompt + completion  # one credit a token
    verified = subprocess.run([*run, "ledger", "verify"], env=env, capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout


def test_sigterm_drains_a_stream_in_flight_then_exits(workers: Workers) -> None:
    """Runs last in this module: it stops the server."""
    conn = workers.connection(workers.workers()[0])
    body = {**LONG, "max_tokens": 12, "stream_options": {"include_usage": True}}
    response = post(conn, body)
    trace_id = response.getheader("x-request-id")
    assert response.readline().startswith(b"data: ")
    workers.process.send_signal(signal.SIGTERM)

    rest = response.read().decode()  # the stream goes on to its end
    frames = [line.removeprefix("data: ") for line in rest.splitlines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[-2])["usage"]["completion_tokens"] == 12
    assert workers.process.wait(timeout=60) == 0
    assert not workers.descendants()
    late = http.client.HTTPConnection("127.0.0.1", workers.port, timeout=5)
    with pytest.raises(OSError):  # nothing listens any more
        late.request("GET", "/healthz")
    late.close()
    database = Path(workers.env["CHATGATE_DATA_DIR"]) / "chatgate.db"
    with sqlite3.connect(database) as db:
        row = db.execute(
            "SELECT status, completion_tokens FROM usage_log WHERE trace_id = ?", (trace_id,)
        ).fetchone()
    assert row == ("ok", 12)  # settled and written before the worker exited
