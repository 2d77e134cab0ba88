"""What relayed requests cost and report: the prompt bound, the output bound sent upstream, usage
estimated when the upstream sends none, odd answers, and what /metrics and /readyz show."""

import base64
import io
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests import website
from tests.e2e import infra
from tests.e2e.conftest import ledger_checked
from tests.e2e.infra import API_KEY, Server

CREDITS = 10_000_000  # at the default price, a credit a token
SECRET = "hunter2pass"

verified = ledger_checked("gateway", lambda gateway: gateway.server)


@dataclass
class Gateway:
    server: Server
    key: str  # a user's token
    upstream: str

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.base_url + "/v1", api_key=self.key, max_retries=0)

    def credits_left(self) -> int:
        with httpx.Client(base_url=self.server.base_url) as http:
            report = http.get("/v1/usage", headers={"authorization": f"Bearer {self.key}"}).json()
        return int(report["credits_left"])

    def charged(self, before: int, expected: int) -> int:
        """Credits spent since ``before``, once refunds (applied in batches) reach ``expected``."""
        deadline = time.monotonic() + 3
        while before - self.credits_left() != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        return before - self.credits_left()

    def last_body(self, model: str) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.upstream}/last").json()[model]
        return body


def catalogue(port: int) -> str:
    base = f"http://127.0.0.1:{port}/v1"

    def up(model: str, url: str = base, **extra: Any) -> str:
        return json.dumps({"kind": "openai_compatible", "base_url": url, "model": model, **extra})

    credentials = f"http://admin:{SECRET}@127.0.0.1:{port}/v1?key={SECRET}"
    drawer = {
        "kind": "image_generation",
        "base": "counting",
        "image_price": 1000,
        "sizes": ["256x256"],
        "backend": {"backend": "openai_images", "base_url": base, "model": "imgflaky"},
    }
    lines = [
        "models:",
        f"  - {{name: counting, retries: 0, deployment: {up('counting')}}}",
        f"  - {{name: seeing, retries: 0, deployment: {up('counting', vision=True)}}}",
        f"  - {{name: capped, retries: 0, deployment: {up('counting', max_tokens=10)}}}",
        f"  - {{name: nousage, retries: 0, deployment: {up('nousage')}}}",
        f"  - {{name: nullusage, retries: 0, deployment: {up('nullusage')}}}",
        f"  - {{name: noid, retries: 0, deployment: {up('noid')}}}",
        f"  - {{name: refusal, retries: 0, deployment: {up('refusal')}}}",
        f"  - {{name: credentials, retries: 0, deployment: {up('counting', credentials)}}}",
        f"  - {{name: open, retries: 0, deployment: {up('counting', extra_fields=list(FIELDS))}}}",
        f"  - {{name: drawer, deployment: {json.dumps(drawer)}}}",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = infra.free_port()
    workdir = tmp_path_factory.mktemp("accounting")
    faulty = [sys.executable, str(Path(__file__).with_name("faulty_upstream.py")), "--port", str(port)]
    with infra.process(faulty, port, workdir / "faulty.log"):
        # The tests' own web site (on loopback) may be fetched, so a fetch before admission would show.
        env = {"CHATGATE_FREE_CREDITS": str(CREDITS), "CHATGATE_BROWSING_ALLOW_HOSTS": "127.0.0.1"}
        with infra.chatgate(workdir / "chatgate", catalogue(port), **env) as running:
            key = running.cli("keys", "create", "--user", "payer@example.com").strip().splitlines()[-1]
            yield Gateway(running, key, f"http://127.0.0.1:{port}")


def png_url() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


# Fields that change the bill or where the data is kept, and extensions of OpenAI-compatible servers.
FIELDS: dict[str, Any] = {
    "service_tier": "priority",
    "store": True,
    "metadata": {"project": "x"},
    "prediction": {"type": "content", "content": "Hello"},
    "top_k": 20,
    "repetition_penalty": 1.1,
    "chat_template_kwargs": {"enable_thinking": False},
}
BIG = "x" * 40_000
TOOL_HISTORY: list[Any] = [
    {"role": "user", "content": "Call it."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "f", "arguments": json.dumps({"b": BIG})},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
]
ASK: list[Any] = [{"role": "user", "content": "Go on."}]
BIG_TOOL = {
    "type": "function",
    "function": {"name": "f", "description": BIG, "parameters": {"type": "object"}},
}
BIG_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "s", "schema": {"type": "object", "description": BIG}},
}
PROMPTS: dict[str, tuple[str, dict[str, Any]]] = {
    "tool calls": ("counting", {"messages": TOOL_HISTORY}),
    "tool definitions": ("counting", {"messages": ASK, "tools": [BIG_TOOL]}),
    "response schema": ("counting", {"messages": ASK, "response_format": BIG_SCHEMA}),
    "images": (
        "seeing",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What are these?"},
                        *[{"type": "image_url", "image_url": {"url": png_url()}}] * 3,
                    ],
                }
            ]
        },
    ),
}


@pytest.mark.parametrize("what", PROMPTS)
def test_every_part_of_the_prompt_is_charged_as_the_upstream_counts_it(gateway: Gateway, what: str) -> None:
    model, fields = PROMPTS[what]
    before = gateway.credits_left()
    with gateway.client() as client:
        answer = client.chat.completions.create(model=model, max_tokens=1, **fields)
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > (2000 if what == "images" else 9000)  # the upstream's own count
    assert gateway.charged(before, answer.usage.total_tokens) == answer.usage.total_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_the_reserved_output_bound_is_sent_upstream_when_the_client_sets_none(
    gateway: Gateway, stream: bool
) -> None:
    """The deployment's max_tokens (10) is what credits are reserved for, so the upstream gets it."""
    before = gateway.credits_left()
    with gateway.client() as client:
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model="capped", messages=ASK, stream=True, stream_options={"include_usage": True}
                )
            )
            usage = chunks[-1].usage
        else:
            usage = client.chat.completions.create(model="capped", messages=ASK).usage
    assert gateway.last_body("counting")["max_tokens"] == 10
    assert usage is not None and usage.completion_tokens == 10
    assert gateway.charged(before, usage.total_tokens) == usage.total_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_usage_is_estimated_when_the_upstream_sends_none(gateway: Gateway, stream: bool) -> None:
    prompt = "hello world " * 250  # 3,000 bytes: about 600 tokens, 1,000 at 3 bytes a token
    messages: list[Any] = [{"role": "user", "content": prompt}]
    before = gateway.credits_left()
    with gateway.client() as client:
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model="nousage",
                    messages=messages,
                    max_tokens=30,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            usage = chunks[-1].usage
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            answer = client.chat.completions.create(model="nousage", messages=messages, max_tokens=30)
            usage, text = answer.usage, answer.choices[0].message.content or ""
    assert text == " word" * 30
    assert usage is not None
    assert 600 <= usage.prompt_tokens <= 1010  # neither a token a byte nor zero
    assert 0 < usage.completion_tokens <= 30
    assert gateway.charged(before, usage.total_tokens) == usage.total_tokens


def test_a_usage_with_null_counts_is_estimated_not_an_error(gateway: Gateway) -> None:
    before = gateway.credits_left()
    with gateway.client() as client:
        chunks = list(
            client.chat.completions.create(
                model="nullusage",
                messages=ASK,
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " word" * 5
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens == 5
    assert gateway.charged(before, usage.total_tokens) == usage.total_tokens


def test_a_tool_call_without_an_id_is_given_one(gateway: Gateway) -> None:
    tool: Any = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    with gateway.client() as client:
        answer = client.chat.completions.create(model="noid", messages=ASK, tools=[tool])
        chunks = list(client.chat.completions.create(model="noid", messages=ASK, tools=[tool], stream=True))
    calls = answer.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].id.startswith("call_") and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert answer.choices[0].finish_reason == "tool_calls"
    pieces = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert pieces[0].id is not None and pieces[0].id.startswith("call_")
    assert "".join(p.function.arguments or "" for p in pieces if p.function) == '{"city": "Paris"}'


def test_a_refusal_is_passed_on(gateway: Gateway) -> None:
    with gateway.client() as client:
        message = client.chat.completions.create(model="refusal", messages=ASK).choices[0].message
        chunks = list(client.chat.completions.create(model="refusal", messages=ASK, stream=True))
    assert message.refusal == "I can't help with that." and message.content is None
    streamed = "".join(c.choices[0].delta.refusal or "" for c in chunks if c.choices)
    assert streamed == "I can't help with that."


SAMPLE = re.compile(r'^[a-z_:]+(\{([a-z_]+="([^"\\\n]|\\[\\"n])*",?)*\})? \S+$')


def test_metrics_and_readyz_survive_hostile_model_names_and_hide_credentials(gateway: Gateway) -> None:
    hostile = 'nope"}\nchatgate_requests_total{model="counting",status="ok",code=""} 1e9\n# x'
    with httpx.Client(base_url=gateway.server.base_url, timeout=30) as http:
        for name in (hostile, "nope-1", "nope-2"):
            response = http.post(
                "/v1/chat/completions",
                json={"model": name, "messages": ASK},
                headers={"authorization": f"Bearer {gateway.key}"},
            )
            assert response.status_code == 404
        with gateway.client() as client:
            client.chat.completions.create(model="credentials", messages=ASK, max_tokens=1)
        operator = {"authorization": f"Bearer {API_KEY}"}  # their detail is the operator's
        metrics, ready = (
            http.get("/metrics", headers=operator).text,
            http.get("/readyz", headers=operator).text,
        )
    for line in metrics.splitlines():
        assert line.startswith("# ") or SAMPLE.match(line), line
    assert 'chatgate_requests_total{code="model_not_found",model="unknown",status="error"} 3' in metrics
    assert "nope" not in metrics
    port = gateway.upstream.rsplit(":", 1)[1]
    assert f'deployment="http://127.0.0.1:{port}/v1#counting"' in metrics
    assert SECRET not in metrics and SECRET not in ready and "admin" not in ready


def test_a_failed_images_request_costs_nothing(gateway: Gateway) -> None:
    """The image backend draws the first image, then fails: no image is returned, none is charged."""
    before = gateway.credits_left()
    with httpx.Client(base_url=gateway.server.base_url, timeout=60) as http:
        response = http.post(
            "/v1/images/generations",
            json={"model": "drawer", "prompt": "a red car", "n": 2, "size": "256x256"},
            headers={"authorization": f"Bearer {gateway.key}"},
        )
    assert response.status_code == 502, response.text
    assert httpx.get(f"{gateway.upstream}/stats").json()["images"] == 2
    assert gateway.charged(before, 0) == 0
    with httpx.Client(base_url=gateway.server.base_url, timeout=60) as http:
        response = http.post(
            "/v1/images/generations",
            json={"model": "drawer", "prompt": "a red car", "n": 1, "size": "256x256"},
            headers={"authorization": f"Bearer {gateway.key}"},
        )
    assert response.status_code == 200, response.text
    assert gateway.charged(before, 1000) == 1000  # one image, at its price


def test_fields_that_change_the_bill_go_upstream_only_where_the_catalogue_allows(gateway: Gateway) -> None:
    before = gateway.credits_left()
    with gateway.client() as client:
        for field, value in FIELDS.items():
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(
                    model="counting", messages=ASK, max_tokens=2, extra_body={field: value}
                )
            error = caught.value.body
            assert isinstance(error, dict) and (error["code"], error["param"]) == (
                "unsupported_parameter",
                field,
            )
        assert gateway.charged(before, 0) == 0  # refused before anything was reserved
        answer = client.chat.completions.create(model="open", messages=ASK, max_tokens=2, extra_body=FIELDS)
    sent = gateway.last_body("counting")
    assert {field: sent.get(field) for field in FIELDS} == FIELDS
    assert answer.usage is not None


def test_a_token_with_one_credit_is_refused_before_its_images_are_fetched(gateway: Gateway) -> None:
    key = (
        gateway.server.cli("keys", "create", "--user", "poor@example.com", "--quota", "1")
        .strip()
        .splitlines()[-1]
    )
    page = website.Page(png_url_bytes(), "image/png")
    with website.website({"/big.png": page}) as site, httpx.Client(base_url=gateway.server.base_url) as http:
        parts = [{"type": "text", "text": "What is this?"}] + [
            {"type": "image_url", "image_url": {"url": site.url("/big.png")}}
        ] * 8
        response = http.post(
            "/v1/chat/completions",
            json={"model": "seeing", "messages": [{"role": "user", "content": parts}]},
            headers={"authorization": f"Bearer {key}"},
        )
        assert response.status_code == 429 and response.json()["error"]["code"] == "insufficient_quota"
        assert site.hits.get("/big.png") is None  # nothing was fetched, decoded or analysed
        spent = gateway.server.cli("keys", "list", "--user", "poor@example.com")
    assert "spent=0\t" in spent


def test_a_token_with_no_credits_left_is_refused_before_its_body_is_read(gateway: Gateway) -> None:
    key = (
        gateway.server.cli("keys", "create", "--user", "broke@example.com", "--quota", "0")
        .strip()
        .splitlines()[-1]
    )
    with httpx.Client(base_url=gateway.server.base_url) as http:
        response = http.post(
            "/v1/chat/completions", content=b"{not json at all", headers={"authorization": f"Bearer {key}"}
        )
    assert response.status_code == 429 and response.json()["error"]["code"] == "insufficient_quota"


def png_url_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(out, format="PNG")
    return out.getvalue()
