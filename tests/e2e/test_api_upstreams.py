"""The Responses and Messages APIs in front of real upstreams: translated to Chat Completions for
llama.cpp's server, relayed as they came to an upstream that speaks the Responses API (another
chatgate), and a stream cut short by a faulty upstream. Each is metered like a chat request."""

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.e2e import infra
from tests.e2e.conftest import SMALL, Spec, typed_events, user_key
from tests.e2e.infra import API_KEY, Server

CREDITS = 1_000_000
ASK = "Name three colours."


@dataclass
class Gateway:
    server: Server
    key: str  # a user's token

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.server.base_url + "/v1", api_key=self.key, max_retries=0, timeout=120
        )

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.server.base_url, api_key=self.key, max_retries=0, timeout=120
        )

    def usage(self) -> dict[str, Any]:
        return usage_of(self.server, self.key)


def usage_of(server: Server, key: str) -> dict[str, Any]:
    with httpx.Client(base_url=server.base_url) as http:
        report: dict[str, Any] = http.get("/v1/usage", headers={"authorization": f"Bearer {key}"}).json()
    return report


def apis(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {a["api"]: a for a in report["apis"]}


@pytest.fixture(scope="module")
def gateway(server: Server, llama_server: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("api-gateway")
    faulty_port = infra.free_port()
    faulty = [sys.executable, str(Path(__file__).with_name("faulty_upstream.py")), "--port", str(faulty_port)]

    def up(name: str, base: str, model: str, **extra: Any) -> str:
        fields = {"kind": "openai_compatible", "base_url": base, "model": model, **extra}
        return f"  - {{name: {name}, retries: 0, deployment: {json.dumps(fields)}}}"

    catalogue = "\n".join(
        [
            "models:",
            up("llama", f"http://127.0.0.1:{llama_server}/v1", "smol"),
            up("native", server.base_url + "/v1", SMALL, api_key_env="UPSTREAM_KEY", responses_api=True),
            up("drop", f"http://127.0.0.1:{faulty_port}/v1", "drop"),
        ]
    )
    with infra.process(faulty, faulty_port, workdir / "faulty.log"):
        env = {"UPSTREAM_KEY": API_KEY, "CHATGATE_FREE_CREDITS": str(CREDITS)}
        with infra.chatgate(workdir / "chatgate", catalogue + "\n", **env) as running:
            yield Gateway(running, user_key(running, f"apis-{time.time_ns()}@example.com"))


def test_translated_for_a_chat_completions_upstream(
    gateway: Gateway, llama_server: int, responses_spec: Spec
) -> None:
    direct = openai.OpenAI(base_url=f"http://127.0.0.1:{llama_server}/v1", api_key="none", max_retries=0)
    with direct:
        want = direct.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": ASK}], max_tokens=12, temperature=0, seed=1
        )
    assert want.usage is not None
    text = want.choices[0].message.content
    with gateway.openai() as client:
        raw = client.responses.with_raw_response.create(
            model="llama", input=ASK, max_output_tokens=12, temperature=0, extra_body={"seed": 1}
        )
        responses_spec.validate("Response", raw.http_response.json())
        response = raw.parse()
        streamed = "".join(
            e.delta
            for e in client.responses.create(
                model="llama",
                input=ASK,
                max_output_tokens=12,
                temperature=0,
                stream=True,
                extra_body={"seed": 1},
            )
            if e.type == "response.output_text.delta"
        )
    assert response.output_text == streamed == text
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        want.usage.prompt_tokens,
        want.usage.completion_tokens,
    )
    with gateway.anthropic() as claude:
        message = claude.messages.create(
            model="llama",
            max_tokens=12,
            messages=[{"role": "user", "content": ASK}],
            extra_body={"temperature": 0, "seed": 1},
        )
    assert message.content[0].type == "text" and message.content[0].text == text
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        want.usage.prompt_tokens,
        want.usage.completion_tokens,
    )


def test_relayed_as_is_to_an_upstream_that_speaks_the_responses_api(gateway: Gateway, server: Server) -> None:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0) as direct:
        want = direct.responses.create(
            model=SMALL, input=ASK, max_output_tokens=10, temperature=0, store=False
        )
    upstream_before = apis(usage_of(server, API_KEY))
    mine_before = apis(gateway.usage()).get(
        "responses", {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    )
    with gateway.openai() as client:
        got = client.responses.create(model="native", input=ASK, max_output_tokens=10, temperature=0)
        with client.responses.stream(
            model="native", input=ASK, max_output_tokens=10, temperature=0
        ) as stream:
            streamed = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    upstream_after = apis(usage_of(server, API_KEY))
    assert got.output_text == streamed == want.output_text
    # The upstream was asked through its Responses API, not its Chat Completions.
    assert upstream_after["responses"]["requests"] == upstream_before["responses"]["requests"] + 2
    chat_before = upstream_before.get("chat.completions", {"requests": 0})["requests"]
    assert upstream_after.get("chat.completions", {"requests": 0})["requests"] == chat_before
    # Charged on the upstream's own count.
    assert got.usage is not None and want.usage is not None
    assert (got.usage.input_tokens, got.usage.output_tokens) == (
        want.usage.input_tokens,
        want.usage.output_tokens,
    )
    mine = apis(gateway.usage())["responses"]
    assert mine["requests"] == mine_before["requests"] + 2
    assert mine["prompt_tokens"] - mine_before["prompt_tokens"] == 2 * want.usage.input_tokens


def test_a_stream_cut_short_fails_in_each_apis_shape_and_costs_what_was_sent(
    gateway: Gateway, responses_spec: Spec, anthropic_spec: Spec
) -> None:
    before = gateway.usage()
    headers = {"authorization": f"Bearer {gateway.key}"}
    with httpx.Client(base_url=gateway.server.base_url, headers=headers, timeout=60) as http:
        body = {"model": "drop", "input": ASK, "max_output_tokens": 20, "stream": True}
        with http.stream("POST", "/v1/responses", json=body) as response:
            events = [payload for _, payload in typed_events(response)]
        body = {
            "model": "drop",
            "max_tokens": 20,
            "stream": True,
            "messages": [{"role": "user", "content": ASK}],
        }
        with http.stream("POST", "/v1/messages", json=body) as response:
            messages = typed_events(response)
    for payload in events:
        responses_spec.validate("ResponseStreamEvent", payload)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["Hello", " from"]
    name, error = messages[-1]
    assert name == "error" and error["error"]["type"] == "api_error"
    anthropic_spec.validate("ErrorResponse", {**error, "request_id": None})
    after = gateway.usage()
    assert after["completion_tokens"] - before["completion_tokens"] == 4  # two pieces delivered, twice
    assert after["credits_used"] + after["credits_left"] == CREDITS
