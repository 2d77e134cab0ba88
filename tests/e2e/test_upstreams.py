"""chatgate as a gateway in front of real OpenAI-compatible servers, and a misbehaving one."""

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e import infra
from tests.e2e.conftest import SMALL, Spec, ledger_checked, sse_events
from tests.e2e.infra import API_KEY, Server

HI: list[Any] = [{"role": "user", "content": "Name three colours."}]
CREDITS = 1_000_000

verified = ledger_checked("gateway", lambda gateway: gateway.server)


@dataclass
class Gateway:
    server: Server
    key: str  # a user's token
    faulty_port: int

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.base_url + "/v1", api_key=self.key, max_retries=0)

    def usage(self) -> dict[str, Any]:
        with httpx.Client(base_url=self.server.base_url) as http:
            report: dict[str, Any] = http.get(
                "/v1/usage", headers={"authorization": f"Bearer {self.key}"}
            ).json()
            return report

    def upstream_requests(self) -> dict[str, int]:
        with httpx.Client() as http:
            counts: dict[str, int] = http.get(f"http://127.0.0.1:{self.faulty_port}/stats").json()
            return counts


def catalogue(main: Server, llama_port: int, faulty_port: int, closed_port: int) -> str:
    faulty = f"http://127.0.0.1:{faulty_port}/v1"

    def up(base: str, model: str, **extra: Any) -> str:
        fields = {"kind": "openai_compatible", "base_url": base, "model": model, **extra}
        return json.dumps(fields)

    lines = [
        "models:",
        f"  - {{name: relay-chatgate, deployment: {up(main.base_url + '/v1', SMALL, api_key_env='UPSTREAM_KEY')}}}",
        f"  - {{name: relay-llama, deployment: {up(f'http://127.0.0.1:{llama_port}/v1', 'smol')}}}",
        f"  - {{name: refused, retries: 1, deployment: {up(f'http://127.0.0.1:{closed_port}/v1', 'x')}}}",
        f"  - name: fallback\n    retries: 2\n    deployments:\n"
        f"      - {up(f'http://127.0.0.1:{closed_port}/v1', 'x', weight=1000)}\n      - {up(faulty, 'ok', weight=1)}",
        f"  - {{name: flaky, retries: 1, deployment: {up(faulty, 'flaky')}}}",
        f"  - {{name: stall, retries: 0, deployment: {up(faulty, 'stall', timeout=1)}}}",
        f"  - {{name: drop, deployment: {up(faulty, 'drop')}}}",
        f"  - {{name: malformed, deployment: {up(faulty, 'malformed')}}}",
        f"  - {{name: ratelimit, retries: 1, deployment: {up(faulty, 'ratelimit')}}}",
        f"  - {{name: badrequest, deployment: {up(faulty, 'badrequest')}}}",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def gateway(server: Server, llama_server: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    faulty_port, closed_port = infra.free_port(), infra.free_port()
    workdir = tmp_path_factory.mktemp("gateway")
    faulty = [sys.executable, str(Path(__file__).with_name("faulty_upstream.py")), "--port", str(faulty_port)]
    with infra.process(faulty, faulty_port, workdir / "faulty.log"):
        text = catalogue(server, llama_server, faulty_port, closed_port)
        env = {"UPSTREAM_KEY": API_KEY, "CHATGATE_FREE_CREDITS": str(CREDITS)}
        with infra.chatgate(workdir / "chatgate", text, **env) as running:
            key = running.cli("keys", "create", "--user", "relay@example.com").strip().splitlines()[-1]
            yield Gateway(running, key, faulty_port)


def direct(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)


@pytest.mark.parametrize("relay", ["relay-chatgate", "relay-llama"])
def test_relay_gives_the_same_answer_as_the_upstream(
    gateway: Gateway, server: Server, llama_server: int, relay: str, spec: Spec
) -> None:
    if relay == "relay-chatgate":
        upstream, upstream_model = direct(server), SMALL
    else:
        upstream = openai.OpenAI(
            base_url=f"http://127.0.0.1:{llama_server}/v1", api_key="none", max_retries=0
        )
        upstream_model = "smol"
    options: dict[str, Any] = {"messages": HI, "max_tokens": 12, "temperature": 0, "seed": 1}
    with upstream, gateway.client() as relayed:
        want = upstream.chat.completions.create(model=upstream_model, **options)
        raw = relayed.chat.completions.with_raw_response.create(model=relay, **options)
        spec.validate("CreateChatCompletionResponse", raw.http_response.json())
        got = raw.parse()
        assert got.model == relay
        assert got.choices[0].message.content == want.choices[0].message.content
        # The upstream's own fingerprint, or none when it sends none (llama.cpp's server): never one made up.
        assert got.system_fingerprint == want.system_fingerprint
        assert got.usage is not None and want.usage is not None
        assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (
            want.usage.prompt_tokens,
            want.usage.completion_tokens,
        )
        chunks = list(
            relayed.chat.completions.create(
                model=relay, stream=True, stream_options={"include_usage": True}, **options
            )
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            == want.choices[0].message.content
        )
        assert (
            chunks[-1].usage is not None
            and chunks[-1].usage.completion_tokens == want.usage.completion_tokens
        )
        assert {c.system_fingerprint for c in chunks} == {want.system_fingerprint}


def test_a_seed_is_passed_on_and_the_upstreams_fingerprint_comes_back(
    gateway: Gateway, server: Server
) -> None:
    """Sampled at temperature 1: only the seed, passed on, makes the relayed answer the upstream's own."""
    options: dict[str, Any] = {"messages": HI, "max_tokens": 12, "temperature": 1.0, "seed": 4321}
    with direct(server) as upstream, gateway.client() as relayed:
        want = upstream.chat.completions.create(model=SMALL, **options)
        got = relayed.chat.completions.create(model="relay-chatgate", **options)
        chunks = list(relayed.chat.completions.create(model="relay-chatgate", stream=True, **options))
    assert want.system_fingerprint and want.system_fingerprint.startswith("fp_")
    assert got.choices[0].message.content == want.choices[0].message.content
    assert got.system_fingerprint == want.system_fingerprint
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == want.choices[0].message.content
    )
    assert {c.system_fingerprint for c in chunks} == {want.system_fingerprint}


def test_fallback_before_the_first_byte(gateway: Gateway) -> None:
    before = gateway.upstream_requests().get("ok", 0)
    with gateway.client() as client:
        answer = client.chat.completions.create(model="fallback", messages=HI, max_tokens=8)
    assert answer.choices[0].message.content == "Hello from upstream."
    assert gateway.upstream_requests()["ok"] == before + 1


def test_a_500_then_200_is_retried(gateway: Gateway) -> None:
    with gateway.client() as client:
        answer = client.chat.completions.create(model="flaky", messages=HI, max_tokens=8)
    assert answer.choices[0].message.content == "Hello from upstream."


@pytest.mark.parametrize(
    ("model", "status", "kind"),
    [
        ("refused", 502, "api_error"),
        ("stall", 504, "api_error"),
        ("ratelimit", 429, "rate_limit_error"),
        ("badrequest", 400, "invalid_request_error"),
    ],
)
def test_failures_before_the_first_byte_cost_nothing(
    gateway: Gateway, spec: Spec, model: str, status: int, kind: str
) -> None:
    left = gateway.usage()["credits_left"]
    with httpx.Client(base_url=gateway.server.base_url, timeout=30) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": HI, "max_tokens": 8},
            headers={"authorization": f"Bearer {gateway.key}"},
        )
    assert response.status_code == status, response.text
    spec.validate("ErrorResponse", response.json())
    assert response.json()["error"]["type"] == kind
    assert response.json()["trace_id"] == response.headers["x-request-id"]
    assert response.headers["x-ratelimit-remaining-requests"]  # the caller's limits, on failures too
    if model == "badrequest":
        assert response.json()["error"]["param"] == "messages"  # the upstream's own words, kept
    assert gateway.usage()["credits_left"] == left


@pytest.mark.parametrize("model", ["drop", "malformed"])
def test_a_stream_that_breaks_midway_is_not_retried_and_costs_what_was_delivered(
    gateway: Gateway, model: str
) -> None:
    before = gateway.upstream_requests().get(model, 0)
    with (
        httpx.Client(base_url=gateway.server.base_url, timeout=30) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": model, "messages": HI, "max_tokens": 8, "stream": True},
            headers={"authorization": f"Bearer {gateway.key}"},
        ) as response,
    ):
        assert response.status_code == 200
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in payloads if c.get("choices"))
        == "Hello from"
    )
    assert payloads[-1]["error"]["type"] == "api_error"
    assert gateway.upstream_requests()[model] == before + 1  # never sent twice once content went out
    report = gateway.usage()
    assert report["credits_used"] == CREDITS - report["credits_left"]


def test_readyz_and_metrics(gateway: Gateway) -> None:
    with gateway.client() as client:
        for _ in range(3):  # three failures in a row: the deployment cools down
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model="refused", messages=HI, max_tokens=4)
    with httpx.Client(
        base_url=gateway.server.base_url, headers={"authorization": f"Bearer {API_KEY}"}
    ) as http:
        ready = http.get("/readyz")
        metrics = http.get("/metrics").text
    assert ready.status_code == 503
    refused = ready.json()["models"]["refused"]
    assert refused[0]["up"] is False and ready.json()["models"]["flaky"][0]["up"] is True
    assert 'chatgate_requests_total{code="",model="fallback",status="ok"}' in metrics
    assert "chatgate_deployment_up{deployment=" in metrics
    assert "chatgate_request_seconds_bucket" in metrics


def test_one_json_log_line_per_request_with_its_trace_id(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.server.base_url) as http:
        trace = f"trace-{time.time_ns()}"
        http.post(
            "/v1/chat/completions",
            json={"model": "flaky", "messages": HI, "max_tokens": 4},
            headers={"authorization": f"Bearer {gateway.key}", "x-request-id": trace},
        )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and trace not in gateway.server.log.read_text():
        time.sleep(0.05)
    lines = [json.loads(line) for line in gateway.server.log.read_text().splitlines() if trace in line]
    assert len(lines) == 1 and lines[0]["event"] == "chat_request" and lines[0]["model"] == "flaky"


# Relayed to the upstream chatgate's small model: far longer than any test waits for it.
LONG_ANSWER = {
    "model": "relay-chatgate",
    "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
    "max_tokens": 1500,
    "temperature": 0,
}


def cancelled_upstream(upstream: httpx.Client, expected: int) -> int:
    """The upstream's count of cancelled generations, once it reaches ``expected`` (or 10 s pass)."""
    deadline = time.monotonic() + 10
    while (count := upstream.get("/healthz").json()["models"][SMALL]["cancelled"]) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return int(count)


def test_a_client_disconnect_cancels_the_upstream_request(gateway: Gateway, server: Server) -> None:
    """The gateway drops its upstream connection, and the upstream (a chatgate) stops generating."""
    with httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {API_KEY}"}) as upstream:
        before = upstream.get("/healthz").json()["models"][SMALL]["cancelled"]
        body = {**LONG_ANSWER, "stream": True}
        with (
            httpx.Client(base_url=gateway.server.base_url, timeout=30) as http,
            http.stream(
                "POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {gateway.key}"}
            ) as response,
        ):
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
        assert cancelled_upstream(upstream, before + 1) == before + 1


def test_a_client_that_leaves_before_the_answer_cancels_the_upstream_and_pays_nothing(
    gateway: Gateway, server: Server
) -> None:
    """Non-streamed: the gateway is still waiting for the upstream's whole answer when the client goes."""
    with httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {API_KEY}"}) as upstream:
        before = upstream.get("/healthz").json()["models"][SMALL]["cancelled"]
        left = gateway.usage()["credits_left"]
        body = {
            **LONG_ANSWER,
            "logit_bias": {"2": -100},
        }  # the small model's end of turn: it can't stop early
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=gateway.server.base_url) as http:
            http.post(
                "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {gateway.key}"},
                timeout=httpx.Timeout(10, read=1.0),
            )
        assert cancelled_upstream(upstream, before + 1) == before + 1
        deadline = time.monotonic() + 5  # the refund is settled as the request unwinds
        while gateway.usage()["credits_left"] != left and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gateway.usage()["credits_left"] == left
