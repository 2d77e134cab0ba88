"""Seeded sampling on the local engine: one request and seed, one answer, whatever serves it (issue 15).

Either of a model's two sequences (its "instances"), a cold or a warm prompt cache, one thread or
two, alone or among other generations, and each of ``n`` choices. The comparisons are of text,
sampled at temperature 1, where a difference in the logits' last bits changes the answer.
"""

import asyncio
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import QWEN, SMALL
from tests.e2e.infra import API_KEY, Server

# The issue's request: on main at cc927d2, the first answer differed from the three after it.
DRAGON: dict[str, Any] = {
    "model": QWEN,
    "messages": [{"role": "user", "content": "Invent a name for a dragon."}],
    "temperature": 1.0,
    "max_tokens": 12,
    "seed": 1234,
}
# Well over two of the engine's 256-token prompt chunks, so a warm cache gives some of it.
FACTS = " ".join(f"Fact {i}: a tower of {i} floors has {i * 12} windows." for i in range(1, 31))


# A bound on a hang, not a measure: on a machine whose cores are shared, two-thread steps can crawl.
PATIENCE = 600.0


@pytest.fixture
def patient(client: openai.OpenAI) -> openai.OpenAI:
    return client.with_options(timeout=PATIENCE)


def answer_text(answer: Any) -> str:
    return str(answer.choices[0].message.content)


def async_client(server: Server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=PATIENCE
    )


def cached_prompt_tokens(http: httpx.Client) -> int:
    return int(http.get("/healthz").json()["models"][QWEN]["cached_prompt_tokens"])


def test_the_issues_request_gives_one_answer_cold_warm_and_four_at_once(
    patient: openai.OpenAI, server: Server
) -> None:
    first = patient.chat.completions.create(**DRAGON)
    assert first.system_fingerprint and first.system_fingerprint.startswith("fp_")
    again = [patient.chat.completions.create(**DRAGON) for _ in range(3)]

    async def at_once() -> list[Any]:
        async with async_client(server) as c:  # both sequences generate, two requests queue behind them
            return list(await asyncio.gather(*(c.chat.completions.create(**DRAGON) for _ in range(4))))

    together = asyncio.run(at_once())
    assert [answer_text(a) for a in again + together] == [answer_text(first)] * 7
    assert {a.system_fingerprint for a in again + together} == {first.system_fingerprint}


def test_a_prompt_from_the_cache_gives_the_answer_of_a_cold_one_on_either_sequence(
    patient: openai.OpenAI, server: Server, http: httpx.Client
) -> None:
    def ask(question: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": FACTS}, {"role": "user", "content": question}]
        return {"model": QWEN, "messages": messages, "temperature": 1.0, "max_tokens": 16, "seed": 99}

    before = cached_prompt_tokens(http)
    cold = answer_text(patient.chat.completions.create(**ask("How many windows has the tallest tower?")))
    patient.chat.completions.create(**ask("Which tower has 84 windows?"))  # the same facts, another question
    warm = answer_text(patient.chat.completions.create(**ask("How many windows has the tallest tower?")))
    assert cached_prompt_tokens(http) >= before + 2 * 2 * 256  # both later prompts began from the cache
    assert warm == cold

    async def both_sequences() -> list[Any]:
        question = ask("How many windows has the tallest tower?")
        async with async_client(server) as c:  # one takes the warm sequence, the other the second one
            return list(await asyncio.gather(*(c.chat.completions.create(**question) for _ in range(2))))

    assert [answer_text(a) for a in asyncio.run(both_sequences())] == [cold, cold]


def test_each_of_n_choices_is_the_answer_of_its_own_seed(patient: openai.OpenAI) -> None:
    together = patient.chat.completions.create(**{**DRAGON, "n": 3})
    texts = [str(choice.message.content) for choice in together.choices]
    assert len(set(texts)) > 1  # three samples, not one three times
    alone = [answer_text(patient.chat.completions.create(**{**DRAGON, "seed": 1234 + k})) for k in range(3)]
    assert texts == alone  # choice k: seed + k, from the state the first choice started from
    assert [
        str(c.message.content) for c in patient.chat.completions.create(**{**DRAGON, "n": 3}).choices
    ] == texts
    streamed: dict[int, str] = {}
    for chunk in patient.chat.completions.create(**{**DRAGON, "n": 3}, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    assert [streamed[k] for k in range(3)] == texts


def test_a_seeded_answer_is_the_same_alone_and_among_other_generations(
    patient: openai.OpenAI, server: Server
) -> None:
    request = {**DRAGON, "seed": 77, "max_tokens": 24}
    alone = answer_text(patient.chat.completions.create(**request))  # a lone stream: every thread

    async def among_others() -> str:
        long: dict[str, Any] = {"temperature": 1.0, "max_tokens": 400, "stream": True}
        others = [
            (QWEN, "Tell a long story about a lighthouse."),
            (SMALL, "Write a long essay about rivers."),
            (SMALL, "List every country you know."),
        ]
        async with async_client(server) as c:
            streams = [
                await c.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": text}], **long
                )
                for model, text in others
            ]
            try:
                for stream in streams:
                    await anext(aiter(stream))  # each is generating: the threads are shared four ways
                return answer_text(await c.chat.completions.create(**request))
            finally:
                for stream in streams:
                    await stream.close()

    assert asyncio.run(among_others()) == alone
