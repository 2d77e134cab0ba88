"""An upstream's Responses API answers, whole and streamed, read as provider events."""

import pytest

from chatgate.errors import UpstreamFailed
from chatgate.providers import responses_relay
from chatgate.providers.base import Finished, TextDelta, ToolCallDelta, UsageReport

USAGE = {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19}


def test_a_whole_response_gives_its_text_calls_reason_and_usage() -> None:
    body = {
        "status": "completed",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "Hi."}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        ],
        "usage": USAGE,
    }
    events = responses_relay.whole(body, limit=100)
    assert events[0] == TextDelta("Hi.")
    assert events[1] == ToolCallDelta(0, "{}", "c1", "f")
    assert isinstance(events[2], Finished) and events[2].reason == "tool_calls"
    assert events[3] == UsageReport(12, 7)


def test_an_incomplete_response_finished_on_its_length() -> None:
    body = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "output": []}
    (finished,) = responses_relay.whole(body, limit=5)
    assert isinstance(finished, Finished) and finished.reason == "length"


def test_a_stream_gives_deltas_and_ends_on_completed() -> None:
    parser = responses_relay.StreamParser(limit=100)
    seen = []
    for event in [
        {"type": "response.created", "response": {}},
        {"type": "response.output_text.delta", "delta": "Hel"},
        {"type": "response.output_text.delta", "delta": "lo"},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {"type": "function_call", "call_id": "c", "name": "f"},
        },
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": "{}"},
        {"type": "response.completed", "response": {"status": "completed", "usage": USAGE}},
    ]:
        seen += parser.feed(event)
    assert parser.done
    assert [type(e).__name__ for e in seen] == [
        "TextDelta",
        "TextDelta",
        "ToolCallDelta",
        "ToolCallDelta",
        "Finished",
        "UsageReport",
    ]
    assert seen[-2] == Finished("tool_calls", 0, 3) and seen[-1] == UsageReport(12, 7)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.failed", "response": {"error": {"code": "server_error", "message": "boom"}}},
        {"type": "error", "message": "boom"},
    ],
)
def test_an_upstream_failure_mid_stream_is_a_failed_upstream(event: dict[str, object]) -> None:
    with pytest.raises(UpstreamFailed, match="boom"):
        responses_relay.StreamParser(limit=10).feed(event)
