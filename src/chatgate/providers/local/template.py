"""Rendering a conversation into a prompt with the model's own chat template (from its GGUF metadata)."""

import json
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from chatgate.errors import InvalidRequest, NotImplementedFeature
from chatgate.protocol.messages import (
    AssistantMessage,
    ChatMessage,
    FunctionMessage,
    TextPart,
    ToolMessage,
    text_of,
)

# Used only when a GGUF carries no template of its own.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise(message: str) -> None:
    raise InvalidRequest(f"the model's chat template refused the conversation: {message}", param="messages")


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    """A compiled chat template plus the special-token strings it may refer to."""

    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source or CHATML
        self._template = env.from_string(self.source)
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[ChatMessage]) -> str:
        try:
            return self._template.render(
                messages=[_as_template_message(m) for m in messages],
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise InvalidRequest(f"cannot render the conversation: {exc}", param="messages") from exc


def _as_template_message(message: ChatMessage) -> dict[str, Any]:
    """The plain dict shape chat templates expect; parts the engine cannot see are refused, not dropped."""
    content = message.content
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, TextPart) and getattr(part, "type", "") != "refusal":
                raise NotImplementedFeature(
                    f"content parts of type {part.type!r} are not supported by this model",
                    param="messages",
                )
    role = "system" if message.role == "developer" else message.role
    out: dict[str, Any] = {"role": role, "content": text_of(message)}
    if isinstance(message, AssistantMessage) and message.tool_calls:
        out["tool_calls"] = [tc.model_dump() for tc in message.tool_calls]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    if isinstance(message, FunctionMessage):
        out["name"] = message.name
    return out
