"""The Responses API's stream: chat chunks as typed events, in the spec's order, numbered."""

import time
from dataclasses import dataclass, field
from typing import Any

from chatgate.errors import ChatgateError, InvalidRequest, UpstreamRefused
from chatgate.protocol.responses import ChatCompletionChunk, FinishReason
from chatgate.protocol.responses_api import (
    FunctionCall,
    OutputItem,
    OutputMessage,
    OutputText,
    Refusal,
    Response,
    ResponseError,
    ResponseUsage,
    StreamEvent,
)
from chatgate.services.responses_chat import new_id, status_of, usage_of


def failure_code(exc: ChatgateError) -> str:
    """The Responses error code for a failure after the stream began."""
    if isinstance(exc, UpstreamRefused) and exc.status == 429:
        return "rate_limit_exceeded"
    if isinstance(exc, InvalidRequest):
        return "invalid_prompt"
    return "server_error"


@dataclass
class _Open:
    """The output item being written: a message (its text or refusal part) or a function call."""

    index: int
    item: OutputItem
    text: str = ""
    part: str = "output_text"  # the message's content part: output_text or refusal


@dataclass
class ResponseEvents:
    """Turns chat chunks into the Responses stream's events, in the spec's order, numbered."""

    response: Response
    sequence: int = 0
    output: list[OutputItem] = field(default_factory=list)
    current: _Open | None = None
    calls: dict[int, _Open] = field(default_factory=dict)
    reason: FinishReason | None = None
    usage: ResponseUsage | None = None

    def event(self, kind: str, **fields: Any) -> StreamEvent:
        event = StreamEvent(type=kind, sequence_number=self.sequence, **fields)
        self.sequence += 1
        return event

    def _snapshot(self, status: str) -> dict[str, Any]:
        data: dict[str, Any] = self.response.model_copy(
            update={"status": status, "output": list(self.output)}
        ).model_dump(mode="json", by_alias=True)
        return data

    def start(self) -> list[StreamEvent]:
        return [
            self.event("response.created", response=self._snapshot("in_progress")),
            self.event("response.in_progress", response=self._snapshot("in_progress")),
        ]

    def _open_message(self, part: str) -> list[StreamEvent]:
        events = self._close_current()
        message = OutputMessage(id=new_id("msg"), content=[], status="in_progress")
        self.current = _Open(len(self.output) + len(self.calls), message, part=part)
        events.append(
            self.event(
                "response.output_item.added",
                output_index=self.current.index,
                item=message.model_dump(mode="json"),
            )
        )
        events.append(self._part_event("response.content_part.added", self.current, ""))
        return events

    def _part(self, current: _Open, text: str) -> dict[str, Any]:
        if current.part == "refusal":
            return {"type": "refusal", "refusal": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _part_event(self, kind: str, current: _Open, text: str) -> StreamEvent:
        return self.event(
            kind,
            item_id=current.item.id,
            output_index=current.index,
            content_index=0,
            part=self._part(current, text),
        )

    def _close_current(self) -> list[StreamEvent]:
        current, self.current = self.current, None
        if current is None:
            return []
        events: list[StreamEvent] = []
        where = {"item_id": current.item.id, "output_index": current.index, "content_index": 0}
        if current.part == "refusal":
            events.append(self.event("response.refusal.done", refusal=current.text, **where))
        else:
            events.append(self.event("response.output_text.done", text=current.text, logprobs=[], **where))
        events.append(self._part_event("response.content_part.done", current, current.text))
        status = "incomplete" if self.reason == "length" else "completed"
        part: OutputText | Refusal = (
            Refusal(refusal=current.text) if current.part == "refusal" else OutputText(text=current.text)
        )
        item = OutputMessage(id=current.item.id, content=[part], status=status)
        self.output.append(item)
        events.append(
            self.event(
                "response.output_item.done", output_index=current.index, item=item.model_dump(mode="json")
            )
        )
        return events

    def _close_calls(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for number in sorted(self.calls):
            call = self.calls[number]
            assert isinstance(call.item, FunctionCall)
            done = call.item.model_copy(update={"arguments": call.text, "status": "completed"})
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=done.id,
                    output_index=call.index,
                    name=done.name,
                    arguments=call.text,
                )
            )
            self.output.append(done)
            events.append(
                self.event(
                    "response.output_item.done", output_index=call.index, item=done.model_dump(mode="json")
                )
            )
        self.calls = {}
        return events

    def chunk(self, chunk: ChatCompletionChunk) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if chunk.usage is not None:
            self.usage = usage_of(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # a Response has one answer; n is never set on a translated request
            delta = choice.delta
            for text, part in ((delta.refusal, "refusal"), (delta.content, "output_text")):
                if not text:
                    continue
                if self.current is None or self.current.part != part:
                    events += self._close_calls() + self._open_message(part)
                assert self.current is not None
                self.current.text += text
                where = {
                    "item_id": self.current.item.id,
                    "output_index": self.current.index,
                    "content_index": 0,
                }
                if part == "refusal":
                    events.append(self.event("response.refusal.delta", delta=text, **where))
                else:
                    events.append(self.event("response.output_text.delta", delta=text, logprobs=[], **where))
            for piece in delta.tool_calls or []:
                events += self._close_current()
                call = self.calls.get(piece.index)
                if call is None:
                    function = piece.function
                    item = FunctionCall(
                        id=new_id("fc"),
                        call_id=piece.id or new_id("call"),
                        name=(function.name if function else None) or "",
                        arguments="",
                        status="in_progress",
                    )
                    call = _Open(len(self.output) + len(self.calls), item)
                    self.calls[piece.index] = call
                    events.append(
                        self.event(
                            "response.output_item.added",
                            output_index=call.index,
                            item=item.model_dump(mode="json"),
                        )
                    )
                arguments = piece.function.arguments if piece.function else None
                if arguments:
                    call.text += arguments
                    events.append(
                        self.event(
                            "response.function_call_arguments.delta",
                            item_id=call.item.id,
                            output_index=call.index,
                            delta=arguments,
                        )
                    )
            if choice.finish_reason is not None:
                self.reason = choice.finish_reason
        return events

    def finish(self) -> tuple[Response, list[StreamEvent]]:
        if self.current is None and not self.calls and not self.output:
            events = self._open_message("output_text")  # an empty answer is still one message
        else:
            events = []
        events += self._close_current() + self._close_calls()
        status, incomplete = status_of(self.reason)
        final = self.response.model_copy(
            update={
                "status": status,
                "incomplete_details": incomplete,
                "completed_at": int(time.time()) if status == "completed" else None,
                "output": list(self.output),
                "usage": self.usage,
            }
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self.event(kind, response=final.model_dump(mode="json", by_alias=True)))
        return final, events

    @staticmethod
    def restate(event: StreamEvent, **changes: Any) -> StreamEvent:
        """The final event again, its response changed (as ``store: false`` when it could not be kept)."""
        data = event.model_dump(mode="json")
        data["response"] = {**data["response"], **changes}
        return StreamEvent.model_validate(data)

    def fail(self, exc: ChatgateError) -> StreamEvent:
        failed = self.response.model_copy(
            update={
                "status": "failed",
                "output": list(self.output),
                "error": ResponseError(code=failure_code(exc), message=exc.message),
            }
        )
        return self.event("response.failed", response=failed.model_dump(mode="json", by_alias=True))
