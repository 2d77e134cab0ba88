"""Several deployments behind one model name: weighted choice, retries and fallback before the first byte.

A deployment is picked at random in proportion to its weight among those that are healthy and have
room; when the weights are equal, the least busy one. A failure before the engine has accepted the
request (connection refused, a time-out, an upstream 5xx or 429, a full local queue) is retried
with backoff on another deployment. Once output has started nothing is retried, so nothing is ever
sent twice. A deployment that fails (broken, timed out, rate limited: not merely busy)
``failure_threshold`` times in a row cools down for ``cooldown`` seconds, then gets traffic again.
A deployment the operator disabled (or that was disabled automatically, see
services/deployments.py) gets no traffic at all; when every deployment of a model is disabled,
requests get 503 ``model_unavailable`` from ``prepare``, before anything is reserved.

A request is planned on every deployment: it is bounded at the most any of them can cost, so
whichever runs it stays within what was reserved, and it goes only to the deployments that take
it (one that refuses a parameter is left out; if all do, the first refusal is the answer).

Every attempt that reached a deployment is reported to an ``Observer`` (the deployment statistics
shared across replicas) with its duration and how it ended.
"""

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Collection
from dataclasses import dataclass
from typing import Protocol

from chatgate.errors import (
    ChatgateError,
    EngineBusy,
    EngineFailure,
    InvalidRequest,
    ModelUnavailable,
    UpstreamFailed,
    UpstreamRefused,
    UpstreamTimeout,
)
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import AnyProvider, Bound, Plan, ProviderEvent, count_prompt

RETRYABLE_STATUSES = {408, 409, 429}


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, UpstreamRefused):
        return exc.status in RETRYABLE_STATUSES
    return isinstance(exc, UpstreamFailed | UpstreamTimeout | EngineBusy)


def failure(exc: BaseException) -> bool:
    """Whether an attempt's error is the deployment's failing (what automatic disabling counts):
    broken, timed out or rate limited, not a caller's bad request nor a full local queue."""
    if isinstance(exc, UpstreamRefused):
        return exc.status == 429
    return isinstance(exc, UpstreamFailed | UpstreamTimeout | EngineFailure)


def error(exc: BaseException) -> bool:
    """Whether an attempt's error counts against the deployment in its statistics: anything but the
    caller's own fault (a request the deployment refused as invalid)."""
    if isinstance(exc, UpstreamRefused):
        return exc.status == 429 or exc.status >= 500
    return not isinstance(exc, InvalidRequest)


@dataclass(eq=False)
class Deployment:
    name: str
    provider: AnyProvider
    weight: int = 1
    max_concurrency: int | None = None
    id: str = ""  # the stable id its state and statistics are kept under (default: its name)
    model: str = ""  # the public model it serves
    kind: str = "upstream"  # local | upstream
    disabled: bool = False  # by the operator, or automatically; kept in the database
    in_flight: int = 0
    consecutive_failures: int = 0
    cooling_until: float = 0.0
    requests: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self.id = self.id or self.name

    def healthy(self, now: float) -> bool:
        return now >= self.cooling_until

    def state(self, now: float) -> str:
        """up, cooling or disabled."""
        if self.disabled:
            return "disabled"
        return "up" if self.healthy(now) else "cooling"

    def has_room(self) -> bool:
        return self.max_concurrency is None or self.in_flight < self.max_concurrency


@dataclass(frozen=True)
class RouterPlan(Plan):
    plans: dict[Deployment, Plan]  # the deployments that take the request, each with its plan


class Observer(Protocol):
    """Told how every attempt on a deployment ended."""

    def attempted(self, deployment: Deployment, seconds: float, exc: BaseException | None) -> None:
        """``exc`` is None for an answer delivered in full; a cancellation is a CancelledError or
        GeneratorExit (the client left)."""
        ...


class RouterProvider:
    def __init__(
        self,
        deployments: list[Deployment],
        *,
        retries: int = 2,
        backoff: float = 0.1,
        failure_threshold: int = 3,
        cooldown: float = 30.0,
        observer: Observer | None = None,
    ) -> None:
        self.deployments = deployments
        self.retries = retries
        self.backoff = backoff
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.observer = observer

    async def start(self) -> None:
        for deployment in self.deployments:
            await deployment.provider.start()

    async def aclose(self) -> None:
        for deployment in self.deployments:
            await deployment.provider.aclose()

    def stats(self) -> dict[str, int]:
        """The router's figures, and the sum of each figure its deployments report of their own
        (a local engine's instances, queue and cancellations)."""
        now = time.monotonic()
        figures = {
            "deployments": len(self.deployments),
            "healthy": sum(d.state(now) == "up" for d in self.deployments),
            "in_flight": sum(d.in_flight for d in self.deployments),
        }
        for deployment in self.deployments:
            for key, value in deployment.provider.stats().items():
                if key not in ("deployments", "healthy", "in_flight"):
                    figures[key] = figures.get(key, 0) + value
        return figures

    def health(self) -> list[dict[str, object]]:
        now = time.monotonic()
        entries: list[dict[str, object]] = []
        for d in self.deployments:
            inner = d.provider.health()
            own = {k: v for k, v in inner[0].items() if k not in ("deployment", "up")} if inner else {}
            engine_up = bool(inner[0].get("up", True)) if inner else True
            entries.append(
                {
                    **own,
                    "deployment": d.name,
                    "id": d.id,
                    "up": d.state(now) == "up" and engine_up,
                    "state": d.state(now),
                    "in_flight": d.in_flight,
                    "requests": d.requests,
                    "failures": d.failures,
                    "cooling_for_s": max(0.0, round(d.cooling_until - now, 1)),
                }
            )
        return entries

    def pick(
        self, exclude: set[Deployment], among: Collection[Deployment] | None = None
    ) -> Deployment | None:
        now = time.monotonic()
        candidates = [
            d
            for d in self.deployments
            if d not in exclude
            and not d.disabled
            and d.weight > 0
            and d.has_room()
            and (among is None or d in among)
        ]
        healthy = [d for d in candidates if d.healthy(now)]
        pool = healthy or candidates  # when every deployment is cooling down, try one anyway
        if not pool:
            return None
        if len({d.weight for d in pool}) == 1:
            least = min(d.in_flight for d in pool)
            return random.choice([d for d in pool if d.in_flight == least])
        return random.choices(pool, weights=[d.weight for d in pool])[0]

    def _failed(self, deployment: Deployment) -> None:
        deployment.failures += 1
        deployment.consecutive_failures += 1
        if deployment.consecutive_failures >= self.failure_threshold:
            deployment.cooling_until = time.monotonic() + self.cooldown

    def _observe(self, deployment: Deployment, began: float, exc: BaseException | None) -> None:
        if self.observer is not None:
            self.observer.attempted(deployment, time.monotonic() - began, exc)

    def _all_disabled(self) -> bool:
        return bool(self.deployments) and all(d.disabled for d in self.deployments)

    def prepare(self, request: ChatCompletionRequest) -> RouterPlan:
        if self._all_disabled():
            raise ModelUnavailable(
                "Every deployment of this model is disabled by the operator; try again later.",
                param="model",
            )
        plans: dict[Deployment, Plan] = {}
        refusal: ChatgateError | None = None
        for deployment in self.deployments:
            try:
                plans[deployment] = deployment.provider.prepare(request)
            except ChatgateError as exc:
                refusal = refusal or exc
        if not plans:
            assert refusal is not None
            raise refusal
        bounds = [plan.bound for plan in plans.values()]
        bound = Bound(
            max(b.prompt_tokens for b in bounds),
            max(b.completion_tokens for b in bounds),
            max(b.extra_cost for b in bounds),
        )
        return RouterPlan(request, bound, plans=plans)

    async def count_prompt(self, plan: RouterPlan) -> int:
        """As the first deployment that takes the request counts it."""
        deployment, inner = next(iter(plan.plans.items()))
        return await count_prompt(deployment.provider, inner)

    async def run(self, plan: RouterPlan) -> AsyncGenerator[ProviderEvent, None]:
        tried: set[Deployment] = set()
        last_error: ChatgateError | None = None
        for attempt in range(self.retries + 1):
            deployment = self.pick(tried, plan.plans) or (self.pick(set(), plan.plans) if tried else None)
            if deployment is None:
                break
            tried.add(deployment)
            deployment.in_flight += 1
            deployment.requests += 1
            began = time.monotonic()
            outcome: BaseException | None = None
            events = deployment.provider.run(plan.plans[deployment])
            try:
                try:
                    first = await anext(events)
                except StopAsyncIteration:
                    deployment.consecutive_failures = 0
                    return
                except ChatgateError as exc:
                    outcome = exc
                    await events.aclose()
                    if not retryable(exc):
                        raise
                    if failure(exc):  # a full local queue is busy, not failing: it does not cool down
                        self._failed(deployment)
                    last_error = exc
                    if attempt < self.retries:
                        await asyncio.sleep(self.backoff * (2**attempt) * (0.5 + random.random()))
                    continue
                # The engine took it (or output began): from here on, nothing is retried.
                yield first
                try:
                    async for event in events:
                        yield event
                except ChatgateError as exc:
                    if failure(exc):
                        self._failed(deployment)
                    raise
                deployment.consecutive_failures = 0
                return
            except BaseException as exc:  # told to the observer, then raised on
                outcome = exc
                raise
            finally:
                deployment.in_flight -= 1
                await events.aclose()
                self._observe(deployment, began, outcome)
        if last_error is not None:
            raise last_error
        raise EngineBusy("Every deployment of this model is at its concurrency limit.", retry_after=1)
