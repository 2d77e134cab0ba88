"""Rendering a conversation into a prompt with the model's own chat template (from its GGUF metadata)."""

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
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
from chatgate.providers.local.tools import CLOSE, OPEN, ToolPlan

# Used only when a GGUF carries no template of its own.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise(message: str) -> None:
    raise InvalidRequest(f"the model's chat template refused the conversation: {message}", param="messages")


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


@dataclass(frozen=True)
class Prompt:
    """A rendered conversation.

    What the template writes is tokenized with its special tokens (``<|im_start|>``) recognised.
    What the caller wrote is text, even where it spells a special token (``<|im_end|>``,
    ``</s>``): such spellings stand in ``text`` as numbered placeholders between two ``mark``
    strings, and ``literal`` holds them.
    """

    text: str
    mark: str = ""
    literal: tuple[str, ...] = ()

    def pieces(self) -> list[tuple[str, bool]]:
        """The prompt in order as (text, is the caller's literal text)."""
        if not self.literal:
            return [(self.text, False)]
        out: list[tuple[str, bool]] = []
        for i, part in enumerate(self.text.split(self.mark)):
            if i % 2 and part.isdigit() and int(part) < len(self.literal):
                out.append((self.literal[int(part)], True))
            elif part:
                out.append((part, False))
        return out


def _spellings(specials: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for every special-token spelling, the longest first."""
    spelled = sorted({s for s in specials if s}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, spelled))) if spelled else None


class _Literals:
    """Replaces special-token spellings in the caller's strings with placeholders, remembering them."""

    def __init__(self, pattern: re.Pattern[str] | None) -> None:
        self._pattern = pattern
        self.mark = "\ue000" + secrets.token_hex(8) + "\ue001"
        self.found: list[str] = []

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._pattern.sub(self._placeholder, value) if self._pattern is not None else value
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        return value

    def _placeholder(self, match: re.Match[str]) -> str:
        self.found.append(match.group(0))
        return f"{self.mark}{len(self.found) - 1}{self.mark}"


class ChatTemplate:
    """A compiled chat template plus the special-token strings it may refer to."""

    def __init__(
        self, source: str | None, *, bos_token: str, eos_token: str, specials: Iterable[str] = ()
    ) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source or CHATML
        self._template = env.from_string(self.source)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._specials = _spellings(specials)  # what the tokenizer would read as special tokens
        # Templates trained for tool use render `tools` themselves; others get them described in text.
        self.knows_tools = "tools" in self.source

    def render(self, messages: list[ChatMessage], plan: ToolPlan | None = None) -> Prompt:
        literal = _Literals(self._specials)
        converted = [_as_template_message(m, literal, inline_calls=not self.knows_tools) for m in messages]
        extra: dict[str, Any] = {}
        if plan is not None and self.knows_tools:
            extra["tools"] = literal(plan.template_tools())
        elif plan is not None:
            converted = _with_instructions(converted, plan.instructions(literal))
        try:
            text = self._template.render(
                messages=converted,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except TemplateError as exc:
            raise InvalidRequest(f"cannot render the conversation: {exc}", param="messages") from exc
        return Prompt(text, literal.mark, tuple(literal.found)) if literal.found else Prompt(text)


def _with_instructions(messages: list[dict[str, Any]], instructions: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": messages[0]["content"] + "\n\n" + instructions}
        return [first, *messages[1:]]
    return [{"role": "system", "content": instructions}, *messages]


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _as_template_message(message: ChatMessage, literal: _Literals, *, inline_calls: bool) -> dict[str, Any]:
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
    out: dict[str, Any] = {"role": role, "content": literal(text_of(message))}
    if isinstance(message, AssistantMessage) and message.tool_calls:
        calls = [
            {"name": literal(tc.function.name), "arguments": literal(_arguments(tc.function.arguments))}
            for tc in message.tool_calls
        ]
        if inline_calls:
            out["content"] += "".join(
                f"{OPEN}{json.dumps(call, ensure_ascii=False)}{CLOSE}" for call in calls
            )
        else:
            out["tool_calls"] = [
                {"id": literal(tc.id), "type": "function", "function": call}
                for tc, call in zip(message.tool_calls, calls, strict=True)
            ]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = literal(message.tool_call_id)
    if isinstance(message, FunctionMessage):
        out["name"] = literal(message.name)
    return out
