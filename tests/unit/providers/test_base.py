"""Draining a provider stream: what is charged when no exact count comes, tool calls, refusals."""

from collections.abc import AsyncIterator

from chatgate.providers.base import (
    Accepted,
    Finished,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    UsageReport,
    collect,
)


async def replay(events: list[ProviderEvent]) -> AsyncIterator[ProviderEvent]:
    for event in events:
        yield event


async def test_without_a_usage_report_the_prompt_is_charged_at_the_estimate() -> None:
    events: list[ProviderEvent] = [
        Accepted(1000),
        TextDelta("a"),
        Finished("stop", 0, 7),
    ]
    completion = await collect(replay(events))
    assert (completion.prompt_tokens, completion.completion_tokens) == (1000, 7)


async def test_a_usage_report_replaces_the_estimates() -> None:
    events: list[ProviderEvent] = [
        Accepted(1000),
        Finished("stop", 0, 7),
        UsageReport(600, 5),
    ]
    completion = await collect(replay(events))
    assert (completion.prompt_tokens, completion.completion_tokens) == (600, 5)


async def test_a_tool_call_without_an_id_gets_one() -> None:
    events: list[ProviderEvent] = [
        Accepted(1),
        ToolCallDelta(0, '{"a":', name="f"),
        ToolCallDelta(0, " 1}"),
        ToolCallDelta(1, "{}", "call_given", "g"),
        Finished("tool_calls", 0, 1),
    ]
    calls = (await collect(replay(events))).choices[0].tool_calls
    assert [c.function.arguments for c in calls] == ['{"a": 1}', "{}"]
    assert calls[0].id.startswith("call_") and calls[1].id == "call_given"


async def test_a_refusal_is_kept_apart_from_the_content() -> None:
    events: list[ProviderEvent] = [
        Accepted(1),
        TextDelta("No", refusal=True),
        TextDelta(".", refusal=True),
        Finished("stop", 0, 2),
    ]
    choice = (await collect(replay(events))).choices[0]
    assert (choice.text, choice.refusal) == ("", "No.")
