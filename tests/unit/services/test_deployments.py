"""Deployment health over a real SQLite database shared by two monitors (two replicas), with
scripted deployments: figures add up, disabling reaches the other replica, the policy disables a
failing deployment and the probe enables it again, each automatic change in the audit log."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatgate.config import HealthPolicy, Price
from chatgate.errors import UpstreamFailed
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import collect
from chatgate.providers.router import Deployment, RouterProvider
from chatgate.services.audit import Actor, AuditLog
from chatgate.services.catalogue import ModelRegistry, Route
from chatgate.services.deployments import DeploymentMonitor, bucket, percentile
from chatgate.storage import users
from chatgate.storage.database import Database, migrate
from tests.unit.providers.test_router import Scripted

FAILURE = UpstreamFailed("The upstream failed with status 500: down")
HI = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def replica(
    db: Database, engines: dict[str, Scripted], policy: HealthPolicy
) -> tuple[RouterProvider, DeploymentMonitor]:
    """One replica's router over the same deployments (same ids), and its monitor."""
    deployments = [Deployment(f"upstream {i}", engines[i], id=i, model="m") for i in engines]
    router = RouterProvider(deployments, retries=0, backoff=0)
    registry = ModelRegistry([Route("m", "me", 0, router, "fp", Price())], {})
    return router, DeploymentMonitor(db, registry, policy=policy, sync_seconds=3600)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'health.db'}"
    await asyncio.to_thread(migrate, url)
    database = Database(url)
    async with database.transaction() as session:  # the admin who acts in these tests: user 1
        await users.insert(session, email="admin@example.com", password_hash=None, credits=0, is_admin=True)
    yield database
    await database.dispose()


def test_latency_buckets_are_a_fifth_apart_and_percentiles_fall_inside_them() -> None:
    assert bucket(0.5) == 0 and bucket(1.2) == 1 and bucket(1.21) == 2
    histogram: dict[str, int] = {}
    for ms in [10] * 50 + [100] * 45 + [1000] * 5:
        histogram[str(bucket(ms))] = histogram.get(str(bucket(ms)), 0) + 1
    p50, p95 = percentile(histogram, 0.5), percentile(histogram, 0.95)
    assert p50 is not None and 10 / 1.2 < p50 <= 10 * 1.2  # within the bucket that holds 10 ms
    assert p95 is not None and 100 / 1.2 < p95 <= 100 * 1.2
    assert percentile({}, 0.5) is None


async def test_figures_from_two_replicas_add_up_and_a_disable_reaches_the_other(db: Database) -> None:
    engines = {"x": Scripted(), "y": Scripted()}
    router_a, a = replica(db, engines, HealthPolicy())
    router_b, b = replica(db, engines, HealthPolicy())
    for router in (router_a, router_b, router_a):
        for _ in range(4):
            await collect(router.run(router.prepare(HI)))
    await a.sync()
    view = {d["id"]: d for d in await b.overview()}
    assert view["x"]["requests"] + view["y"]["requests"] == 12
    assert view["x"]["p50_ms"] is not None and view["x"]["state"] == "up"

    await a.set_disabled("x", True, Actor.admin(1))
    assert router_a.deployments[0].disabled and not router_b.deployments[0].disabled
    await b.sync()  # what every replica does every few seconds
    assert router_b.deployments[0].disabled
    calls = engines["x"].calls
    for _ in range(5):
        await collect(router_b.run(router_b.prepare(HI)))
    assert engines["x"].calls == calls
    restarted_router, restarted = replica(db, engines, HealthPolicy())
    await restarted.sync()
    assert restarted_router.deployments[0].disabled


async def test_the_policy_disables_after_failures_in_a_row_and_the_probe_enables_again(db: Database) -> None:
    engines = {"x": Scripted()}
    router, monitor = replica(db, engines, HealthPolicy(auto_disable_after=3, probe_seconds=1))
    engines["x"].error = FAILURE
    for _ in range(3):
        with pytest.raises(UpstreamFailed):
            await collect(router.run(router.prepare(HI)))
    assert router.deployments[0].disabled  # at once, on this replica
    await monitor.sync()
    view = (await monitor.overview())[0]
    assert view["state"] == "disabled" and view["automatic"] and view["errors"] == 3
    assert "3 failed requests in a row" in view["reason"] and "status 500" in view["last_error"]

    await monitor.probe()  # still failing: stays disabled
    assert router.deployments[0].disabled
    engines["x"].error = None
    await monitor.probe()
    assert not router.deployments[0].disabled
    assert (await monitor.overview())[0]["state"] == "up"
    actions = [(e["action"], e["actor"]) for e in (await AuditLog(db).page())["data"]]
    assert actions == [("deployment.auto_enable", "chatgate"), ("deployment.auto_disable", "chatgate")]


async def test_the_probe_never_enables_what_an_admin_disabled(db: Database) -> None:
    engines = {"x": Scripted()}
    router, monitor = replica(db, engines, HealthPolicy(auto_disable_after=1))
    await monitor.set_disabled("x", True, Actor.admin(1))
    await monitor.probe()
    await monitor.sync()
    assert router.deployments[0].disabled
    tested = await monitor.test("x")  # a test still reaches it
    assert tested.ok and tested.reply == "OK"
