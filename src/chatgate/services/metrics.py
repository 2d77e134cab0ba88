"""Prometheus metrics, kept in process and rendered in the text exposition format.

Request counters and latency histograms are recorded as requests finish; deployment health,
queue depth and busy engine slots are read from the providers at scrape time.
"""

import math
from collections import defaultdict
from collections.abc import Callable

from chatgate.services.catalogue import ModelRegistry

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, math.inf)

UNKNOWN_MODEL = "unknown"  # the label of requests for a model not in the catalogue

Labels = tuple[tuple[str, str], ...]


def escape(value: str) -> str:
    """A label value as the text exposition format writes it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels) + "}"


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BUCKETS)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._histograms: dict[str, dict[Labels, Histogram]] = defaultdict(lambda: defaultdict(Histogram))
        self._help: dict[str, tuple[str, str]] = {}
        self._sources: list[Callable[[], list[str]]] = []

    def add_source(self, lines: Callable[[], list[str]]) -> None:
        """Lines read at scrape time from a part that keeps its own counters (the database's fast path)."""
        self._sources.append(lines)

    def count(self, name: str, help_text: str, amount: float = 1, **labels: str) -> None:
        self._help[name] = ("counter", help_text)
        self._counters[name][tuple(sorted(labels.items()))] += amount

    def observe(self, name: str, help_text: str, value: float, **labels: str) -> None:
        self._help[name] = ("histogram", help_text)
        self._histograms[name][tuple(sorted(labels.items()))].observe(value)

    def request(
        self,
        *,
        model: str,
        status: str,
        code: str | None,
        seconds: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self.count(
            "chatgate_requests_total",
            "Chat requests by model and outcome.",
            model=model,
            status=status,
            code=code or "",
        )
        self.observe("chatgate_request_seconds", "Chat request latency.", seconds, model=model)
        self.count("chatgate_tokens_total", "Tokens in and out.", prompt_tokens, model=model, kind="prompt")
        self.count(
            "chatgate_tokens_total", "Tokens in and out.", completion_tokens, model=model, kind="completion"
        )

    def first_token(self, *, model: str, seconds: float) -> None:
        self.observe(
            "chatgate_time_to_first_token_seconds", "Time to the first streamed token.", seconds, model=model
        )

    def render(self, registry: ModelRegistry) -> str:
        lines: list[str] = []
        for name, series in self._counters.items():
            kind, help_text = self._help[name]
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{_labels(labels)} {value:g}" for labels, value in series.items()]
        for name, histograms in self._histograms.items():
            _, help_text = self._help[name]
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            for labels, histogram in histograms.items():
                for bound, count in zip(LATENCY_BUCKETS, histogram.counts, strict=True):
                    le = "+Inf" if math.isinf(bound) else f"{bound:g}"
                    lines.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {count}")
                lines.append(f"{name}_sum{_labels(labels)} {histogram.total:g}")
                lines.append(f"{name}_count{_labels(labels)} {histogram.count}")
        lines += self._live(registry)
        for source in self._sources:
            lines += source()
        return "\n".join(lines) + "\n"

    def _live(self, registry: ModelRegistry) -> list[str]:
        up = ["# HELP chatgate_deployment_up Whether a deployment takes traffic (1) or is cooling down (0).",
              "# TYPE chatgate_deployment_up gauge"]  # fmt: skip
        load = ["# HELP chatgate_engine_load Queue depth, busy slots and in-flight requests per model.",
                "# TYPE chatgate_engine_load gauge"]  # fmt: skip
        traffic = ["# HELP chatgate_deployment_requests_total Requests sent to a deployment, and those that failed.",
                   "# TYPE chatgate_deployment_requests_total counter"]  # fmt: skip
        stats = registry.stats()  # chat and embedding models alike
        for model, deployments in registry.health().items():
            for entry in deployments:
                labels = (("deployment", str(entry["deployment"])), ("model", model))
                up.append(f"chatgate_deployment_up{_labels(labels)} {1 if entry['up'] else 0}")
                for outcome in ("requests", "failures"):
                    if outcome in entry:
                        traffic.append(
                            f"chatgate_deployment_requests_total{_labels((*labels, ('outcome', outcome)))} {entry[outcome]}"
                        )
            for key, value in stats.get(model, {}).items():
                load.append(f"chatgate_engine_load{_labels((('model', model), ('what', key)))} {value}")
        return up + traffic + load
