"""Why a message ended, as Anthropic's Messages API says it, from what the chat engine reported."""

import pytest

from chatgate.services.messages_chat import matched_stop, stop_reason


@pytest.mark.parametrize(
    ("reason", "called", "stop", "expected"),
    [
        ("stop", False, None, "end_turn"),
        ("stop", False, "\n\n", "stop_sequence"),  # the local engine knows which stop matched
        ("length", False, None, "max_tokens"),
        ("length", False, "x", "max_tokens"),  # cut by max_tokens: no stop sequence was reached
        ("tool_calls", True, None, "tool_use"),
        ("stop", True, "x", "tool_use"),  # a forced named call ends with "stop" in Chat Completions
        ("content_filter", False, None, "refusal"),
    ],
)
def test_stop_reason(reason: str, called: bool, stop: str | None, expected: str) -> None:
    ended = stop_reason(reason, called, stop)  # type: ignore[arg-type]
    assert ended == expected
    assert matched_stop(ended, stop) == (stop if expected == "stop_sequence" else None)
