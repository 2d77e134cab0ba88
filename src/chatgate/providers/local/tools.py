"""Function calling on the local engine: the prompt, the grammar that makes calls valid, and parsing.

Calls use the Hermes/Qwen convention ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
With ``tool_choice`` ``auto`` the model writes freely until it opens a ``<tool_call>`` (or a fenced
```json block, the way small models often write calls); from there a grammar built from the declared
parameter schemas constrains every token, so arguments always parse and match. ``required`` and a named function constrain the answer from its first token.
"""

import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from chatgate.errors import InvalidRequest
from chatgate.protocol.requests import ChatCompletionRequest, FunctionTool

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
# Small models often write a call as a fenced JSON block instead; with tool_choice auto that opens a call too.
FENCE = "```json"
FENCE_CLOSE = "```"

INSTRUCTIONS = (
    "You can call these functions. To call one, reply with exactly\n"
    '<tool_call>{"name": "<function name>", "arguments": {<arguments as JSON>}}</tool_call>\n'
    "and nothing else. Functions:\n"
)


@dataclass(frozen=True)
class ToolPlan:
    tools: list[FunctionTool]
    required: bool  # the answer must be tool calls (``required`` or a named function)
    forced_name: str | None  # a named function: finish_reason is "stop", as OpenAI does
    parallel: bool
    calls: str  # GBNF rules: ``tc-after`` (the rest of the calls after an opening <tool_call>), ``tc-call``
    grammar_after_fence: str  # GBNF for what follows an opening ```json

    @property
    def grammar_from_start(self) -> str:
        """The whole answer: calls from the first token (``required`` or a named function)."""
        return grammar_with_root(self.calls, f'"{OPEN}" tc-after')

    @property
    def grammar_after_open(self) -> str:
        """What follows a ``<tool_call>`` the model opened on its own (``auto``)."""
        return grammar_with_root(self.calls, "tc-after")

    def template_tools(self) -> list[dict[str, Any]]:
        return [tool.model_dump(exclude_none=True) for tool in self.tools]

    def instructions(self, literal: Callable[[str], str] = str) -> str:
        """How to call the tools, for templates that don't render them; ``literal`` marks the caller's text."""
        lines = [literal(json.dumps(tool.function.model_dump(exclude_none=True))) for tool in self.tools]
        return INSTRUCTIONS + "\n".join(lines)


def grammar_with_root(rules: str, root: str) -> str:
    return f"root ::= {root}\n{rules}"


def plan(request: ChatCompletionRequest, *, grammars: bool = True) -> ToolPlan | None:
    """What the request asks of tools, or None when the model must not call any.

    ``grammars=False`` leaves the grammars out (empty): enough to render the prompt and check the
    request, without the work of converting every parameter schema.
    """
    tools = request.tools or []
    choice = request.tool_choice
    if not tools or choice == "none":
        return None
    forced: str | None = None
    if not isinstance(choice, str) and choice is not None:
        forced = choice.function.name
        if forced not in {t.function.name for t in tools}:
            raise InvalidRequest(f"tool_choice names '{forced}', which is not in tools.", param="tool_choice")
    chosen = [t for t in tools if forced is None or t.function.name == forced]
    parallel = forced is None and request.parallel_tool_calls is not False
    return ToolPlan(
        tools=tools,
        required=forced is not None or choice == "required",
        forced_name=forced,
        parallel=parallel,
        calls=_call_grammar(chosen, parallel) if grammars else "",
        grammar_after_fence=grammar_with_root(
            _call_grammar(chosen, False), f'"\\n"? tc-call "\\n"? "{FENCE_CLOSE}"'
        )
        if grammars
        else "",
    )


def _call_grammar(tools: list[FunctionTool], parallel: bool) -> str:
    """Rules ``tc-after`` (the rest of one call, or several when parallel) and ``tc-call`` (its JSON)."""
    alternatives = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.function.name},
                "arguments": tool.function.parameters or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    schema = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    try:
        rules = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises plain exceptions for schemas it cannot express
        raise InvalidRequest(f"Cannot use these function parameters: {exc}", param="tools") from exc
    rules = re.sub(r"^root ::=", "tc-call ::=", rules, flags=re.MULTILINE)
    one = f'"\\n"? tc-call "\\n"? "{CLOSE}"'
    after = f'{one} ("\\n" "{OPEN}" {one})*' if parallel else one
    return f"tc-after ::= {after}\n{rules}"


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")


@dataclass(frozen=True)
class CallPiece:
    """A piece of a streamed call: its header (id and name) once, then its arguments in pieces."""

    call_index: int
    arguments: str
    call_id: str | None = None
    name: str | None = None


_HEADER = re.compile(r'^\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


class CallStream:
    """Turns the text after ``<tool_call>`` into call headers and argument pieces as it arrives."""

    def __init__(self, *, start_between: bool = False) -> None:
        self.count = 0
        self._buffer = ""
        # header -> arguments -> between -> header ...; "between" first when the text still has its <tool_call>
        self._state = "between" if start_between else "header"
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._started_arguments = False

    def feed(self, text: str) -> Iterator[CallPiece]:
        self._buffer += text
        while self._buffer:
            if self._state == "header":
                match = _HEADER.match(self._buffer)
                if match is None:
                    return
                self._buffer = self._buffer[match.end() :]
                self._state = "arguments"
                self._depth = 0
                self._started_arguments = False
                yield CallPiece(self.count, "", call_id=new_call_id(), name=json.loads(f'"{match.group(1)}"'))
            elif self._state == "arguments":
                index = self.count
                end = self._scan_arguments()
                piece, self._buffer = self._buffer[:end], self._buffer[end:]
                if not self._started_arguments:
                    piece = piece.lstrip()
                    self._started_arguments = bool(piece)
                if piece:
                    yield CallPiece(index, piece)
                if self._state == "arguments":
                    return
            else:
                at = self._buffer.find(OPEN)
                if at < 0:
                    self._buffer = self._buffer[-len(OPEN) :]
                    return
                self._buffer = self._buffer[at + len(OPEN) :]
                self._state = "header"

    def _scan_arguments(self) -> int:
        """How much of the buffer belongs to the arguments value; leaves the state at 'between' at its end."""
        for i, ch in enumerate(self._buffer):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._state = "between"
                    self.count += 1
                    return i + 1
        return len(self._buffer)
