"""An upstream's Responses API answers (``POST /responses``, whole or streamed) as provider events.

Relayed requests go on the chat path's meter like any other: the events carry the text, refusals
and function calls the upstream wrote, how it finished, and its exact usage (``input_tokens``,
``output_tokens``, reasoning included). Reasoning items and built-in tool calls are the
upstream's own: they are not carried back.
"""

from dataclasses import dataclass, field
from typing import Any

from chatgate.errors import UpstreamFailed
from chatgate.protocol.responses import FinishReason
from chatgate.providers.base import (
    Finished,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    UsageReport,
    new_call_id,
)

BYTES_PER_TOKEN = 3  # as for Chat Completions upstreams (see upstream.py)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_report(usage: Any) -> UsageReport | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    if prompt is None or completion is None:
        return None
    return UsageReport(prompt, completion)


def finish_reason(response: dict[str, Any], called: bool) -> FinishReason:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if called else "stop"


def _failure(response: dict[str, Any]) -> UpstreamFailed:
    error = response.get("error") or {}
    message = error.get("message") if isinstance(error, dict) else None
    return UpstreamFailed(f"The upstream failed mid-answer: {message or 'no message'}")


def whole(body: dict[str, Any], limit: int) -> list[ProviderEvent]:
    """A whole Response object as events (raises TypeError, KeyError... when it is not one)."""
    if body.get("status") == "failed":
        raise _failure(body)
    events: list[ProviderEvent] = []
    written = calls = 0
    for item in body["output"]:
        if item["type"] == "message":
            for part in item["content"]:
                if part["type"] == "output_text":
                    events.append(TextDelta(_text(part["text"])))
                    written += len(part["text"].encode())
                elif part["type"] == "refusal":
                    events.append(TextDelta(_text(part["refusal"]), refusal=True))
                    written += len(part["refusal"].encode())
        elif item["type"] == "function_call":
            arguments = _text(item.get("arguments") or "")
            call_id = item.get("call_id") or new_call_id()
            events.append(ToolCallDelta(calls, arguments, _text(call_id), _text(item["name"])))
            written += len(arguments.encode()) + len(item["name"].encode())
            calls += 1
    estimate = min(limit, -(-written // BYTES_PER_TOKEN))
    events.append(Finished(finish_reason(body, bool(calls)), 0, estimate))
    usage = usage_report(body.get("usage"))
    return events if usage is None else [*events, usage]


@dataclass
class StreamParser:
    """A streamed Response's events, one ``data:`` payload at a time."""

    limit: int
    done: bool = False
    calls: dict[int, int] = field(default_factory=dict)  # the upstream's output index -> call number
    pieces: int = 0
    written: int = 0

    def feed(self, event: dict[str, Any]) -> list[ProviderEvent]:
        kind = event.get("type")
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            text = _text(event["delta"])
            self.pieces += 1
            self.written += len(text.encode())
            return [TextDelta(text, tokens=1, refusal=kind == "response.refusal.delta")]
        if kind == "response.output_item.added" and event["item"].get("type") == "function_call":
            item = event["item"]
            number = self.calls[int(event["output_index"])] = len(self.calls)
            call_id = item.get("call_id") or new_call_id()
            return [
                ToolCallDelta(number, _text(item.get("arguments") or ""), _text(call_id), _text(item["name"]))
            ]
        if kind == "response.function_call_arguments.delta":
            text = _text(event["delta"])
            self.pieces += 1
            self.written += len(text.encode())
            return [ToolCallDelta(self.calls[int(event["output_index"])], text, tokens=1)]
        if kind in ("response.completed", "response.incomplete"):
            self.done = True
            response = event["response"]
            estimate = max(self.pieces, min(self.limit, -(-self.written // BYTES_PER_TOKEN)))
            finished = Finished(finish_reason(response, bool(self.calls)), 0, estimate)
            usage = usage_report(response.get("usage"))
            return [finished] if usage is None else [finished, usage]
        if kind == "response.failed":
            raise _failure(event.get("response") or {})
        if kind == "error":
            raise UpstreamFailed(f"The upstream failed mid-stream: {event.get('message') or 'no message'}")
        return []
