"""Two replicas sharing PostgreSQL and Redis: a user's requests at once are counted across both, the
slots of a replica killed mid-request come back when its leases run out, and with
CHATGATE_LIMITS_FAIL_CLOSED every request is refused while Redis is away."""

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e import infra
from tests.e2e.conftest import faulty_catalogue
from tests.e2e.infra import Replicas, Server

HELD = {"model": "held", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 8, "stream": True}
FAST = {"model": "fast", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 8}


@pytest.fixture(scope="module")
def replicas(
    postgres: infra.Postgres, faulty_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    url = postgres.create_database("shared_limits")
    with infra.redis() as redis:
        env = {
            "CHATGATE_DATABASE_URL": url,
            "CHATGATE_REDIS_URL": redis.url,
            "CHATGATE_DEFAULT_CONCURRENCY": "1",
            "CHATGATE_LIMITS_LEASE_SECONDS": "5",
            "CHATGATE_LIMITS_FAIL_CLOSED": "true",
        }
        catalogue = faulty_catalogue(faulty_port, fast="ok", held="hold")
        with (
            infra.chatgate(tmp_path_factory.mktemp("shared-a"), catalogue, **env) as a,
            infra.chatgate(tmp_path_factory.mktemp("shared-b"), catalogue, **env) as b,
        ):
            yield Replicas(a, b, redis)


def new_key(server: Server) -> str:
    return (
        server.cli("keys", "create", "--user", f"shared-{time.time_ns()}@example.com")
        .strip()
        .splitlines()[-1]
    )


def api(server: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=60)


def admitted_eventually(server: Server, key: str) -> int:
    """The status of /v1/models once it is no longer 429, polling for up to a minute."""
    deadline = time.monotonic() + 60
    with api(server, key) as http:
        while (status := http.get("/v1/models").status_code) == 429 and time.monotonic() < deadline:
            time.sleep(0.25)
    return status


def test_a_users_requests_at_once_count_on_every_replica(replicas: Replicas) -> None:
    key = new_key(replicas.a)
    with api(replicas.a, key) as on_a, on_a.stream("POST", "/v1/chat/completions", json=HELD) as running:
        lines = running.iter_lines()
        assert next(lines).startswith("data: ")
        with api(replicas.b, key) as on_b:
            refused = on_b.post("/v1/chat/completions", json=FAST)
        assert refused.status_code == 429
        assert "at most 1 may run at a time" in refused.json()["error"]["message"]
    assert admitted_eventually(replicas.b, key) == 200  # the stream closed: its slot came back


def test_the_slots_of_a_replica_killed_mid_request_come_back_when_its_lease_runs_out(
    replicas: Replicas,
) -> None:
    key = new_key(replicas.b)
    with api(replicas.a, key) as on_a, on_a.stream("POST", "/v1/chat/completions", json=HELD) as running:
        lines = running.iter_lines()
        assert next(lines).startswith("data: ")
        with api(replicas.b, key) as on_b:
            assert on_b.get("/v1/models").status_code == 429  # held by a request running on A
        replicas.a.kill()  # SIGKILL: A never gives the slot back, nor renews its lease
    assert admitted_eventually(replicas.b, key) == 200


def test_with_fail_closed_limits_nothing_is_served_while_redis_is_away(replicas: Replicas) -> None:
    """Runs last in this module: it stops the shared Redis."""
    key = new_key(replicas.b)
    with api(replicas.b, key) as http:
        assert http.post("/v1/chat/completions", json=FAST).status_code == 200
        replicas.redis.stop()
        for response in (http.post("/v1/chat/completions", json=FAST), http.get("/v1/models")):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "limits_unavailable"
            assert response.headers["retry-after"] == "1"
    assert "requests refused until it is back" in replicas.b.log.read_text()
