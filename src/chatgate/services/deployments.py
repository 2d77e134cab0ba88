"""Deployment health across replicas: traffic figures, disabling by hand or by policy, tests and probes.

Every attempt the routers make is counted here, in memory, per deployment and per minute (requests,
errors, a latency histogram); every ``sync_seconds`` each replica writes its own rows for the
minutes that changed and reads back which deployments are disabled, so a deployment disabled on one
replica stops getting traffic on every replica within that interval, and after a restart. The
console's figures over the last 15 minutes add up the rows of every replica.

Automatic disabling (the catalogue's ``health.auto_disable_after``) counts failed requests in a row
as one replica sees them; a probe every ``health.probe_seconds`` sends a small request to each
deployment disabled that way, and enables it again once it answers. Each automatic change is
written to the audit log and logged.
"""

import asyncio
import contextlib
import functools
import logging
import math
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from chatgate.config import HealthPolicy
from chatgate.errors import ChatgateError, NotFound
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import generate
from chatgate.providers.router import Deployment, error, failure
from chatgate.services.audit import CHATGATE, Actor, record
from chatgate.services.catalogue import ModelRegistry
from chatgate.storage import deployments as store
from chatgate.storage.database import Database
from chatgate.storage.deployments import MinuteFigures

log = logging.getLogger("chatgate.deployments")

WINDOW_MINUTES = 15  # what the console's figures cover
KEEP_MINUTES = 24 * 60  # rows older than this are removed
RATIO = 1.2  # latency buckets: each 20% wider than the one before, from 1 ms up
TEST_PROMPT = "Reply with the single word OK."
TEST_TOKENS = 8
TEST_TIMEOUT = 60.0


def bucket(milliseconds: float) -> int:
    """The histogram bucket of a latency: 0 below 1 ms, then i for (RATIO**(i-1), RATIO**i] ms."""
    if milliseconds <= 1:
        return 0
    return math.ceil(math.log(milliseconds) / math.log(RATIO) - 1e-9)


def percentile(histogram: dict[str, int], q: float) -> float | None:
    """The q-quantile of a latency histogram in ms, interpolated within its bucket (to within 20%)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for index in sorted(histogram, key=int):
        count = histogram[index]
        if seen + count >= rank:
            i = int(index)
            low, high = (0.0, 1.0) if i == 0 else (RATIO ** (i - 1), RATIO**i)
            fraction = (rank - seen) / count if count else 1.0
            return round(low + (high - low) * fraction, 1)
        seen += count
    return None


def _merge(into: dict[str, int], other: dict[str, int]) -> None:
    for index, count in other.items():
        into[index] = into.get(index, 0) + count


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ChatgateError):
        return f"{exc.code}: {exc.message}"
    return f"internal_error: {type(exc).__name__}"


def _minute(at: float | None = None) -> int:
    return int((time.time() if at is None else at) // 60)


def replica_name() -> str:
    """This process among the replicas: host, pid and a random part (a restarted pid is a new replica)."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Tested:
    ok: bool
    latency_ms: int
    reply: str | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "latency_ms": self.latency_ms, "reply": self.reply, "error": self.error}


class DeploymentMonitor:
    """The routers' observer and the console's view of every deployment."""

    def __init__(
        self,
        db: Database,
        registry: ModelRegistry,
        *,
        policy: HealthPolicy | None = None,
        sync_seconds: float = 2.0,
        replica: str | None = None,
    ) -> None:
        self._db = db
        self._policy = policy or HealthPolicy()
        self.sync_seconds = sync_seconds
        self.replica = replica or replica_name()
        self._deployments: dict[str, Deployment] = {}
        for router in registry.routers:
            router.observer = self
            for deployment in router.deployments:
                self._deployments[deployment.id] = deployment
        self._minutes: dict[tuple[str, int], MinuteFigures] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._gauges: dict[str, tuple[int, float]] = {}  # as last written: in-flight, cooling until
        self._in_a_row: dict[str, int] = {}
        self._to_disable: dict[str, str] = {}  # by the policy, not yet written: id -> reason
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._last_probe = time.monotonic()
        self._last_prune = 0.0

    @property
    def deployments(self) -> dict[str, Deployment]:
        return dict(self._deployments)

    # -- the routers' observer: called on every attempt, so it only counts -----------------------

    def attempted(self, deployment: Deployment, seconds: float, exc: BaseException | None) -> None:
        key = (deployment.id, _minute())
        figures = self._minutes.get(key)
        if figures is None:
            figures = self._minutes[key] = MinuteFigures(deployment.id, key[1], latency={})
        self._dirty.add(key)
        figures.requests += 1
        if exc is None:
            assert figures.latency is not None
            index = str(bucket(seconds * 1000))
            figures.latency[index] = figures.latency.get(index, 0) + 1
            self._in_a_row[deployment.id] = 0
            return
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            return  # the client left: neither an answer nor the deployment's fault
        if error(exc):
            figures.errors += 1
            figures.last_error = _describe(exc)
            figures.last_error_at = datetime.now(UTC)
        if failure(exc):
            self._failed(deployment, exc)

    def _failed(self, deployment: Deployment, exc: BaseException) -> None:
        limit = self._policy.auto_disable_after
        count = self._in_a_row.get(deployment.id, 0) + 1
        self._in_a_row[deployment.id] = count
        if limit is None or count < limit or deployment.disabled:
            return
        deployment.disabled = True  # here at once; the other replicas at their next sync
        self._to_disable[deployment.id] = f"{count} failed requests in a row; the last: {_describe(exc)}"[
            :500
        ]

    # -- the background work: write the figures, read the states, probe, prune ----------------

    async def start(self) -> None:
        await self.sync()  # a deployment disabled before a restart stays disabled from the first request
        self._task = asyncio.create_task(self._run(), name="deployment-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.sync()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.sync_seconds)
            try:
                await self.sync()
                if self._policy.auto_disable_after is not None and (
                    time.monotonic() - self._last_probe >= self._policy.probe_seconds
                ):
                    self._last_probe = time.monotonic()
                    await self.probe()
            except Exception:
                log.exception("could not sync deployment state and figures; will retry")

    async def sync(self) -> None:
        """Write this replica's figures and automatic disablings; read every deployment's state."""
        async with self._lock:
            # The figures first: whoever reads a deployment disabled for its failures reads them too.
            await self._write_figures()
            await self._disable_failing()
            async with self._db.sessions() as session:
                states = await store.states(session)
            for deployment_id, deployment in self._deployments.items():
                state = states.get(deployment_id)
                deployment.disabled = (
                    state is not None and state.disabled
                ) or deployment_id in self._to_disable

    async def _disable_failing(self) -> None:
        for deployment_id, reason in list(self._to_disable.items()):
            try:
                changed = await self._change(deployment_id, True, CHATGATE, reason, automatic=True)
            except IntegrityError:
                changed = False  # another replica disabled it at the same moment
            del self._to_disable[deployment_id]
            if changed:
                log.warning("deployment %s disabled automatically: %s", deployment_id, reason)

    async def _write_figures(self) -> None:
        now, minute = time.time(), _minute()
        monotonic = time.monotonic()
        for deployment_id, deployment in self._deployments.items():
            cooling = (
                now + (deployment.cooling_until - monotonic) if deployment.cooling_until > monotonic else 0.0
            )
            gauges = (deployment.in_flight, round(cooling, 1))
            # Live figures are rewritten while they are not zero (a reader takes only recent rows)
            # and once when they drop to zero.
            if gauges != self._gauges.get(deployment_id, (0, 0.0)) or gauges != (0, 0.0):
                key = (deployment_id, minute)
                if key not in self._minutes:
                    self._minutes[key] = MinuteFigures(deployment_id, minute, latency={})
                figures = self._minutes[key]
                figures.in_flight, figures.cooling_until = gauges
                self._dirty.add(key)
                self._gauges[deployment_id] = gauges
        dirty = [self._minutes[key] for key in sorted(self._dirty)]
        if dirty:
            fast = self._db.sqlite_fast
            if fast is not None:  # every 2 s: never the write lock across an await (see SqliteFastPath.write)
                work = functools.partial(store.write_minutes_inline, replica=self.replica, figures=dirty)
                for figures, row_id in await fast.write("figures", work):
                    figures.row_id = row_id
            else:
                async with self._db.transaction() as session:
                    await store.write_minutes(session, replica=self.replica, figures=dirty)
            self._dirty.clear()
        for key in [k for k in self._minutes if k[1] < minute]:
            del self._minutes[key]  # written whole: a past minute changes no more
        if now - self._last_prune > 600:
            self._last_prune = now
            async with self._db.transaction() as session:
                await store.prune(session, before_minute=minute - KEEP_MINUTES)

    # -- what admins see and do ---------------------------------------------------------------

    async def overview(self) -> list[dict[str, Any]]:
        """Every deployment of the catalogue with its state and its figures across all replicas."""
        await self.sync()
        now = datetime.now(UTC)
        live_since = now - timedelta(seconds=3 * self.sync_seconds + 1)
        async with self._db.sessions() as session:
            rows = await store.since(session, minute=_minute() - WINDOW_MINUTES + 1)
            states = await store.states(session)
            errors = await store.last_errors(session)
        totals: dict[str, dict[str, Any]] = {
            d: {"requests": 0, "errors": 0, "latency": {}, "in_flight": 0, "cooling": False}
            for d in self._deployments
        }
        newest: dict[tuple[str, str], Any] = {}
        for row in rows:
            total = totals.get(row.deployment_id)
            if total is None:
                continue  # a deployment no longer in the catalogue
            total["requests"] += row.requests
            total["errors"] += row.errors
            _merge(total["latency"], row.latency)
            key = (row.deployment_id, row.replica)
            if key not in newest or row.updated_at > newest[key].updated_at:
                newest[key] = row
        for (deployment_id, _), row in newest.items():
            if row.updated_at >= live_since:
                totals[deployment_id]["in_flight"] += row.in_flight
                totals[deployment_id]["cooling"] |= row.cooling_until > now.timestamp()
        out = []
        for deployment_id, deployment in self._deployments.items():
            total, state = totals[deployment_id], states.get(deployment_id)
            disabled = state is not None and state.disabled
            last = errors.get(deployment_id)
            out.append(
                {
                    "id": deployment_id,
                    "model": deployment.model,
                    "name": deployment.name,
                    "kind": deployment.kind,
                    "weight": deployment.weight,
                    "state": "disabled" if disabled else "cooling" if total["cooling"] else "up",
                    "automatic": bool(state and state.disabled and state.automatic),
                    "reason": state.reason if state and state.disabled else None,
                    "changed_at": state.changed_at.isoformat() if state else None,
                    "in_flight": total["in_flight"],
                    "requests": total["requests"],
                    "errors": total["errors"],
                    "p50_ms": percentile(total["latency"], 0.5),
                    "p95_ms": percentile(total["latency"], 0.95),
                    "last_error": last[0] if last else None,
                    "last_error_at": last[1].isoformat() if last else None,
                }
            )
        return out

    def _known(self, deployment_id: str) -> Deployment:
        deployment = self._deployments.get(deployment_id)
        if deployment is None:
            raise NotFound(f"No deployment with id {deployment_id!r}.", param="id")
        return deployment

    async def set_disabled(self, deployment_id: str, disabled: bool, actor: Actor) -> None:
        """Disable or enable by hand: kept in the database, honoured here at once."""
        deployment = self._known(deployment_id)
        async with self._lock:
            self._to_disable.pop(deployment_id, None)
            await self._change(
                deployment_id, disabled, actor, "by hand" if disabled else None, automatic=False
            )
        self._reset(deployment, disabled=disabled)

    def _reset(self, deployment: Deployment, *, disabled: bool) -> None:
        """A deployment changed by hand or by the probe starts afresh: no failures counted, no cool-down."""
        deployment.disabled = disabled
        deployment.consecutive_failures = 0
        deployment.cooling_until = 0.0
        self._in_a_row[deployment.id] = 0

    async def _change(
        self, deployment_id: str, disabled: bool, actor: Actor, reason: str | None, *, automatic: bool
    ) -> bool:
        async with self._db.transaction() as session:
            changed = await store.set_state(
                session,
                deployment_id=deployment_id,
                disabled=disabled,
                automatic=automatic,
                reason=reason,
                changed_by=actor.user_id,
            )
            if changed:
                action = ("deployment.auto_" if automatic else "deployment.") + (
                    "disable" if disabled else "enable"
                )
                await record(session, actor, action, deployment_id, {"reason": reason} if reason else {})
            return changed

    async def test(self, deployment_id: str) -> Tested:
        """A small real request to this deployment alone, whether it is disabled or not; nobody is
        charged for it and it is not counted in the figures."""
        deployment = self._known(deployment_id)
        request = ChatCompletionRequest.model_validate(
            {
                "model": deployment.model,
                "messages": [{"role": "user", "content": TEST_PROMPT}],
                "max_tokens": TEST_TOKENS,
            }
        )
        began = time.monotonic()
        try:
            async with asyncio.timeout(TEST_TIMEOUT):
                completion = await generate(deployment.provider, request)
        except (ChatgateError, TimeoutError) as exc:
            latency = int((time.monotonic() - began) * 1000)
            text = (
                _describe(exc)
                if isinstance(exc, ChatgateError)
                else f"timeout: no answer in {TEST_TIMEOUT:.0f} s"
            )
            return Tested(False, latency, None, text)
        latency = int((time.monotonic() - began) * 1000)
        reply = completion.choices[0].text if completion.choices else ""
        return Tested(True, latency, reply, None)

    async def probe(self) -> None:
        """Send each deployment disabled by the policy a small request; enable those that answer."""
        async with self._db.sessions() as session:
            states = await store.states(session)
        for deployment_id, state in states.items():
            if not (state.disabled and state.automatic) or deployment_id not in self._deployments:
                continue
            tested = await self.test(deployment_id)
            if not tested.ok:
                continue
            reason = f"the probe was answered in {tested.latency_ms} ms"
            if await self._change(deployment_id, False, CHATGATE, reason, automatic=True):
                log.warning("deployment %s enabled again automatically: %s", deployment_id, reason)
            self._reset(self._deployments[deployment_id], disabled=False)
