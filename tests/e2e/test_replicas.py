"""Two chatgate processes sharing PostgreSQL and Redis: one token's limits and quota hold across both."""

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e import infra
from tests.e2e.conftest import SMALL, admitted_until_the_limit, ledger_checked, well_inside_a_minute
from tests.e2e.infra import Replicas, Server

CATALOGUE = f"""
models:
  - name: {SMALL}
    deployment: {{kind: local, asset: smollm2-135m-instruct-q4_1, context_length: 2048, instances: 1}}
"""
BODY: dict[str, Any] = {"model": SMALL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3}

verified = ledger_checked("replicas", lambda replicas: replicas.a)


@pytest.fixture(scope="module")
def replicas(postgres: infra.Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    url = postgres.create_database("replicas")
    with infra.redis() as redis:
        env = {"CHATGATE_DATABASE_URL": url, "CHATGATE_REDIS_URL": redis.url, "CHATGATE_MAX_QUEUE": "16"}
        with (
            infra.chatgate(tmp_path_factory.mktemp("replica-a"), CATALOGUE, **env) as a,
            infra.chatgate(tmp_path_factory.mktemp("replica-b"), CATALOGUE, **env) as b,
        ):
            yield Replicas(a, b, redis)


def new_key(server: Server, *options: str) -> str:
    email = f"replica-{time.time_ns()}@example.com"
    return server.cli("keys", "create", "--user", email, *options).strip().splitlines()[-1]


def call(server: Server, key: str) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        return http.post("/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"})


def usage_when(server: Server, key: str, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """/v1/usage once the other replica's batch has landed too (a bound on waiting, not a timing test)."""
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=server.base_url) as http:
        while True:
            report: dict[str, Any] = http.get("/v1/usage", headers={"authorization": f"Bearer {key}"}).json()
            if ready(report) or time.monotonic() > deadline:
                return report
            time.sleep(0.1)


def test_rpm_limit_holds_across_both_processes(replicas: Replicas) -> None:
    key = new_key(replicas.a, "--rpm", "5")
    well_inside_a_minute()
    responses = [call(replicas.a if i % 2 == 0 else replicas.b, key) for i in range(8)]
    codes = [r.status_code for r in responses]
    assert codes == [200] * 5 + [429] * 3, codes
    refused = responses[-1]
    assert refused.json()["error"]["code"] == "too_many_requests"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "5"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert responses[0].headers["x-ratelimit-remaining-requests"] == "4"


def test_tpm_limit_holds_across_both_processes(replicas: Replicas) -> None:
    key = new_key(replicas.a, "--tpm", "60", "--rpm", "1000")
    well_inside_a_minute()
    responses = [call(replicas.a if i % 2 == 0 else replicas.b, key) for i in range(8)]
    admitted_until_the_limit(responses, 60)  # each replica counts what the other's requests used
    assert responses[-1].headers["x-ratelimit-limit-tokens"] == "60"
    assert responses[-1].headers["x-ratelimit-remaining-tokens"] == "0"


def test_quota_holds_across_both_processes(replicas: Replicas) -> None:
    key = new_key(replicas.a, "--quota", "150", "--rpm", "1000")
    codes = [call(replicas.a if i % 2 == 0 else replicas.b, key).status_code for i in range(12)]
    assert 200 in codes and 429 in codes
    report = usage_when(replicas.b, key, lambda r: r["requests"] == 12)  # each replica logs in batches
    assert report["credits_used"] <= 150
    assert report["credits_left"] >= 0


def test_without_redis_limits_fail_open_and_quota_still_holds(replicas: Replicas) -> None:
    """Runs last in this module: it stops the shared Redis."""
    key = new_key(replicas.a, "--rpm", "2", "--quota", "120")
    replicas.redis.stop()
    codes = [call(replicas.a if i % 2 == 0 else replicas.b, key).status_code for i in range(6)]
    assert codes.count(200) > 2  # the per-minute limit of 2 is not enforced while Redis is down
    assert set(codes) <= {200, 429}
    with httpx.Client(base_url=replicas.a.base_url) as http:
        report = http.get("/v1/usage", headers={"authorization": f"Bearer {key}"}).json()
    assert report["credits_used"] <= 120  # but no one spends past their quota
    assert "redis unreachable" in replicas.a.log.read_text() + replicas.b.log.read_text()
