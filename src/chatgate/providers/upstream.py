"""An OpenAI-compatible upstream as a Provider: one pooled HTTP client, streamed relay, exact usage.

A streamed request is relayed as a stream, asking for ``stream_options.include_usage`` so usage is
exact; a non-streamed one is relayed as is, and its ``usage`` is exact. An upstream that sends no
usage (or a malformed one) is estimated at ``BYTES_PER_TOKEN`` bytes a token, never reported as zero.
The reservation's output bound is always sent upstream. Upstream
4xx keep their status and message; 5xx, broken streams and bad JSON become UpstreamFailed, time-outs
UpstreamTimeout. Nothing is retried here once output has started.

Only what the deployment accepts goes upstream: OpenAI's chat fields, and the fields the catalogue
lists in its ``extra_fields`` (the extensions of OpenAI-compatible servers, and OpenAI's fields
that change the bill or where the data is kept). A request that sets any other is refused before
anything is reserved (``unsupported_parameter``, naming the field).

The upstream has accepted a request (its prompt billable, see metering.py) once it answers with a
success status: at once for a stream, with the whole answer otherwise.
"""

import json
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from chatgate.config import EXTENSION_FIELDS, GATED_FIELDS, UpstreamDeployment
from chatgate.errors import UnsupportedParameter, UpstreamFailed, UpstreamRefused, UpstreamTimeout
from chatgate.protocol.messages import (
    AssistantMessage,
    AudioPart,
    FilePart,
    FileURLPart,
    ImagePart,
    RefusalPart,
    TextPart,
    ToolMessage,
)
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.protocol.responses import FinishReason, TokenLogprob
from chatgate.providers import responses_relay
from chatgate.providers.base import (
    Accepted,
    Bound,
    Finished,
    Plan,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    UsageReport,
    new_call_id,
)
from chatgate.providers.http1 import HTTPClientError, Response, encode_headers
from chatgate.providers.redact import without_addresses
from chatgate.providers.relay import RelaySession

PER_MESSAGE_OVERHEAD = 8  # bytes: the role and the chat template's separators
SCHEMA_OVERHEAD = 64  # bytes: the words an upstream wraps tool definitions and a response schema in
# Tokens one image part can cost, whatever its size: OpenAI's high-detail images cost at most about
# 1,500 tokens (gpt-4o's tiles) to 2,500 (gpt-4.1-mini's patches), so this bounds them all.
IMAGE_PART_TOKENS = 2500
# Bytes a token when the upstream reports no usage: English runs about 4 bytes a token, code and
# most European languages 3 to 4, Chinese and Japanese about 3 (a character is 3 bytes in UTF-8).
BYTES_PER_TOKEN = 3
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}
# What every deployment forwards: the request's fields but chatgate's extensions and the gated ones.
OPENAI_FIELDS = frozenset(ChatCompletionRequest.model_fields) - set(EXTENSION_FIELDS) - set(GATED_FIELDS)


@dataclass(frozen=True)
class PromptSize:
    """What a request sends upstream: the bytes of its text, and its parts that are not text."""

    text_bytes: int
    media_parts: int

    @property
    def bound(self) -> int:
        """An upper bound on its tokens without the upstream's tokenizer: a token is at least a byte."""
        return self.text_bytes + self.media_parts * IMAGE_PART_TOKENS

    @property
    def estimate(self) -> int:
        """A likely count, charged when the upstream reports none."""
        return estimate_tokens(self.text_bytes) + self.media_parts * IMAGE_PART_TOKENS


def estimate_tokens(size: int) -> int:
    return -(-size // BYTES_PER_TOKEN)


def _size(text: str | None) -> int:
    return len(text.encode()) if text else 0


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


def prompt_size(request: ChatCompletionRequest) -> PromptSize:
    """Every part of the prompt as sent upstream: message text and names, tool calls (ids, names,
    arguments), tool call ids, tool and function definitions, the response schema, and a bound per
    image, audio or file part (an inlined image's data URL is far more bytes than it has tokens)."""
    text = media = 0
    for message in request.messages:
        text += PER_MESSAGE_OVERHEAD + _size(getattr(message, "name", None))
        content = message.content
        if isinstance(content, str):
            text += _size(content)
        for part in content if isinstance(content, list) else []:
            if isinstance(part, TextPart):
                text += _size(part.text)
            elif isinstance(part, RefusalPart):
                text += _size(part.refusal)
            elif isinstance(part, ImagePart | FileURLPart):
                media += 1
            elif isinstance(part, AudioPart):
                text += _size(part.input_audio.data)  # base64 audio: more bytes than its tokens
            elif isinstance(part, FilePart):
                media += 1  # a document's pages can be read as images, as well as its text
                text += _size(part.file.file_data) + _size(part.file.filename)
        if isinstance(message, AssistantMessage):
            text += _size(message.refusal)
            calls = [call.function for call in message.tool_calls or []]
            calls += [message.function_call] if message.function_call else []
            text += sum(_size(f.name) + _size(f.arguments) for f in calls)
            text += sum(_size(call.id) for call in message.tool_calls or [])
            text += _json_size(message.audio) if message.audio else 0
        elif isinstance(message, ToolMessage):
            text += _size(message.tool_call_id)
    schemas: list[Any] = []
    if request.tools:
        schemas.append([tool.model_dump(mode="json", exclude_none=True) for tool in request.tools])
    if request.functions:
        schemas.append(request.functions)
    if request.response_format is not None:
        schemas.append(request.response_format.model_dump(mode="json", exclude_none=True, by_alias=True))
    text += sum(_json_size(schema) + SCHEMA_OVERHEAD for schema in schemas)
    return PromptSize(text, media)


def prompt_bound(request: ChatCompletionRequest) -> int:
    return prompt_size(request).bound


@dataclass(frozen=True)
class UpstreamPlan(Plan):
    limit: int  # the tokens a choice may write: the client's limit, or the deployment's
    prompt_estimate: int  # charged when the upstream reports no usage
    native: dict[str, Any] | None = None  # a Responses request's own body, relayed to POST /responses


def display_url(url: str) -> str:
    """A URL fit to show on unauthenticated pages: without user, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def upstream_error(
    status: int, raw: bytes, retry_after: str | None, *, who: str = "The upstream"
) -> UpstreamFailed | UpstreamRefused:
    """What an upstream's 4xx or 5xx answer (``raw``, its body) becomes.

    A 4xx keeps its status and message (a 429 stays a 429), except 401, 403 and 404, which are
    the upstream refusing chatgate itself (its key, its model name): not the caller's doing.
    """
    error: dict[str, Any] = {}
    try:
        parsed = json.loads(raw)
        error = parsed.get("error", {}) if isinstance(parsed, dict) else {}
        error = error if isinstance(error, dict) else {"message": str(error)}
    except ValueError:
        pass
    message = str(error.get("message") or raw[:300].decode(errors="replace") or "no message")
    message = without_addresses(message)  # an upstream's own network is none of the caller's business
    if status >= 500:
        return UpstreamFailed(f"{who} failed with status {status}: {message}")
    if status in (401, 403, 404):
        return UpstreamFailed(f"{who} refused this deployment (status {status}).")
    return UpstreamRefused(
        message,
        status=400 if status == 422 else status,
        retry_after=retry_after,
        code=error.get("code") if isinstance(error.get("code"), str) else None,
        param=error.get("param") if isinstance(error.get("param"), str) else None,
    )


class UpstreamProvider:
    def __init__(self, deployment: UpstreamDeployment, relay: RelaySession) -> None:
        self.deployment = deployment
        self._relay = relay
        # Up to the first byte, and then between bytes: the read timeout bounds every wait for data.
        self._connect_timeout = min(10.0, deployment.timeout)
        self._url = deployment.base_url.rstrip("/") + "/chat/completions"
        self._responses_url = deployment.base_url.rstrip("/") + "/responses"
        headers = {"content-type": "application/json", **deployment.headers}
        key = deployment.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._headers = encode_headers(headers)
        self.in_flight = 0
        self.failures = 0
        self._forwarded: set[str] = set(OPENAI_FIELDS) | set(deployment.extra_fields)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None  # the shared session is closed by whoever built it

    def stats(self) -> dict[str, int]:
        return {"in_flight": self.in_flight, "failures": self.failures}

    def health(self) -> list[dict[str, object]]:
        return [{"deployment": self.name, "up": True, **self.stats()}]

    @property
    def name(self) -> str:
        return f"{display_url(self.deployment.base_url)}#{self.deployment.model}"

    def _body(self, request: ChatCompletionRequest, limit: int) -> dict[str, Any]:
        body: dict[str, Any] = request.model_dump(
            mode="json", exclude_none=True, by_alias=True, include=self._forwarded
        )
        body["model"] = self.deployment.model
        # The output limit goes in the one field this upstream reads. When the client set none,
        # credits are reserved for the deployment's max_tokens a choice: the upstream must not write more.
        body.pop("max_tokens", None)
        body.pop("max_completion_tokens", None)
        body[self.deployment.limit_field] = limit
        if request.stream:
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        return body

    def prepare(self, request: ChatCompletionRequest) -> UpstreamPlan:
        for name in (*EXTENSION_FIELDS, *GATED_FIELDS):
            value = getattr(request, name)
            if value is not None and value is not False and name not in self._forwarded:
                raise UnsupportedParameter(
                    f"Unsupported parameter: '{name}' is not supported with this model.", param=name
                )
        limit = request.token_limit or self.deployment.max_tokens
        size = prompt_size(request)
        bound = Bound(size.bound, limit * (request.n or 1))
        native = self._native(request, limit)
        return UpstreamPlan(request, bound, limit=limit, prompt_estimate=size.estimate, native=native)

    async def count_prompt(self, plan: UpstreamPlan) -> int:
        return plan.prompt_estimate  # no tokenizer of the upstream's here: its estimate

    async def run(self, plan: UpstreamPlan) -> AsyncGenerator[ProviderEvent, None]:
        request, limit, native = plan.request, plan.limit, plan.native
        self.in_flight += 1
        try:
            body = json.dumps(native or self._body(request, limit)).encode()
            url = self._url if native is None else self._responses_url
            try:
                response = await self._relay.client.request(
                    "POST",
                    url,
                    body=body,
                    headers=self._headers,
                    connect_timeout=self._connect_timeout,
                    read_timeout=self.deployment.timeout,
                )
            except TimeoutError as exc:
                self.failures += 1
                raise UpstreamTimeout("The upstream did not answer in time.") from exc
            except HTTPClientError as exc:
                self.failures += 1
                raise UpstreamFailed(f"Could not reach the upstream: {type(exc).__name__}.") from exc
            complete = False
            try:
                if response.status >= 400:
                    await self._refuse(response)
                if not request.stream:
                    parse = _completion if native is None else responses_relay.whole
                    # Read whole before Accepted: a bad answer can still be retried.
                    answer, fingerprint = await self._whole(response, limit, parse)
                    complete = True
                    yield Accepted(plan.prompt_estimate, fingerprint)
                    for event in answer:
                        yield event
                    return
                yield Accepted(plan.prompt_estimate)
                parser: ChunkParser | responses_relay.StreamParser = (
                    ChunkParser(limit) if native is None else responses_relay.StreamParser(limit)
                )
                async for event in self._events(response, parser, plan.prompt_estimate):
                    yield event
                complete = True
            finally:
                if complete:
                    response.release()  # the connection goes back to the pool
                else:
                    response.close()  # cut short (an error, a client gone): the upstream's work stops
        finally:
            self.in_flight -= 1

    async def _refuse(self, response: Response) -> None:
        try:
            raw = await response.read()
        except (TimeoutError, HTTPClientError):
            raw = b""
        error = upstream_error(response.status, raw, response.headers.get("retry-after"))
        if isinstance(error, UpstreamFailed):
            self.failures += 1
        raise error

    def _native(self, request: ChatCompletionRequest, limit: int) -> dict[str, Any] | None:
        """A Responses request's own body, for a deployment that speaks the Responses API."""
        native = getattr(request, "native", None)
        if not self.deployment.responses_api or not isinstance(native, dict):
            return None
        return {
            **native,
            "model": self.deployment.model,
            "max_output_tokens": limit,
            "stream": bool(request.stream),
        }

    async def _whole(
        self, response: Response, limit: int, parse: Callable[[Any, int], list[ProviderEvent]]
    ) -> tuple[list[ProviderEvent], str | None]:
        """A non-streamed answer as events, with the upstream's exact usage, or each choice estimated
        (at most ``limit``, the tokens a choice it was sent); and the upstream's system_fingerprint."""
        try:
            body = json.loads(await response.read())
            return parse(body, limit), _fingerprint(body)
        except TimeoutError as exc:
            self.failures += 1
            raise UpstreamTimeout("The upstream stalled mid-answer.") from exc
        except HTTPClientError as exc:
            self.failures += 1
            raise UpstreamFailed("The upstream's answer broke off.") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.failures += 1
            raise UpstreamFailed("The upstream's answer was not in the shape asked for.") from exc

    async def _events(
        self,
        response: Response,
        parser: "ChunkParser | responses_relay.StreamParser",
        prompt_estimate: int,
    ) -> AsyncGenerator[ProviderEvent, None]:
        first = True
        try:
            async for raw in response:
                if not raw.startswith(b"data:"):
                    continue
                payload = raw[5:].strip()
                if payload == b"[DONE]":
                    parser.done = True
                    break
                try:
                    chunk = json.loads(payload)
                    events = parser.feed(chunk)
                except (ValueError, TypeError, AttributeError, KeyError) as exc:
                    raise UpstreamFailed("The upstream sent a malformed chunk in its stream.") from exc
                if first:  # the upstream's fingerprint, before anything built from its chunks
                    first = False
                    if (fingerprint := _fingerprint(chunk)) is not None:
                        yield Accepted(prompt_estimate, fingerprint)
                for event in events:
                    yield event
        except TimeoutError as exc:
            self.failures += 1
            raise UpstreamTimeout("The upstream stalled mid-stream.") from exc
        except (HTTPClientError, ValueError) as exc:  # ValueError: a line over http1.MAX_LINE
            self.failures += 1
            raise UpstreamFailed("The upstream's stream broke off.") from exc
        if not parser.done:
            self.failures += 1
            raise UpstreamFailed("The upstream's stream ended before its end.")


@dataclass
class ChunkParser:
    """A streamed chat completion's chunks as events. Per choice, for upstreams that send no usage
    (llama.cpp's server), the pieces and bytes written; calls without an id are given one."""

    limit: int
    done: bool = False
    pieces: Counter[int] = field(default_factory=Counter)
    written: Counter[int] = field(default_factory=Counter)
    calls: set[tuple[int, int]] = field(default_factory=set)  # (choice, call) pairs seen

    def feed(self, chunk: dict[str, Any]) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        for event in _chunk_events(chunk):
            if isinstance(event, TextDelta):
                self.pieces[event.index] += event.tokens
                self.written[event.index] += _size(event.text)
            elif isinstance(event, ToolCallDelta):
                self.pieces[event.index] += event.tokens
                self.written[event.index] += _size(event.name) + _size(event.arguments)
                if (event.index, event.call_index) not in self.calls:
                    self.calls.add((event.index, event.call_index))
                    if event.call_id is None:
                        event = replace(event, call_id=new_call_id())
            elif isinstance(event, Finished):
                estimate = min(self.limit, estimate_tokens(self.written[event.index]))
                event = Finished(event.reason, 0, max(self.pieces[event.index], estimate), event.index)
            events.append(event)
        return events


def _reported(usage: Any) -> UsageReport | None:
    """The upstream's usage if it is one (two counts that are integers), else None: to be estimated."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    return UsageReport(prompt, completion)


def _fingerprint(answer: Any) -> str | None:
    """The upstream's system_fingerprint: passed on as it is, or none when it sends none (or no string)."""
    value = answer.get("system_fingerprint") if isinstance(answer, dict) else None
    return value if isinstance(value, str) else None


def _text(value: Any) -> str | None:
    """A text field of the upstream's answer; anything but a string or null makes it malformed."""
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _chunk_events(chunk: dict[str, Any]) -> list[ProviderEvent]:
    if "error" in chunk:
        raise UpstreamFailed(f"The upstream failed mid-stream: {without_addresses(str(chunk['error']))}")
    events: list[ProviderEvent] = []
    for choice in chunk.get("choices") or []:
        index = int(choice.get("index", 0))
        delta = choice.get("delta") or {}
        logprobs = (choice.get("logprobs") or {}).get("content")
        content, refusal = _text(delta.get("content")), _text(delta.get("refusal"))
        if content or logprobs:
            parsed = [TokenLogprob.model_validate(t) for t in logprobs] if logprobs else None
            events.append(TextDelta(content or "", index, parsed, tokens=1))
        if refusal:
            events.append(TextDelta(refusal, index, tokens=1, refusal=True))
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            events.append(
                ToolCallDelta(
                    call_index=int(call.get("index", 0)),
                    arguments=_text(function.get("arguments")) or "",
                    call_id=_text(call.get("id")),
                    name=_text(function.get("name")),
                    index=index,
                    tokens=1,
                )
            )
        reason = choice.get("finish_reason")
        if reason:
            final: FinishReason = reason if reason in FINISH_REASONS else "stop"
            events.append(Finished(final, 0, 0, index))
    usage = _reported(chunk.get("usage"))
    return events if usage is None else [*events, usage]


def _completion(body: Any, limit: int) -> list[ProviderEvent]:
    """A whole chat completion as events."""
    events: list[ProviderEvent] = []
    for choice in body["choices"]:
        index = int(choice.get("index", 0))
        message = choice.get("message") or {}
        logprobs = (choice.get("logprobs") or {}).get("content")
        parsed = [TokenLogprob.model_validate(t) for t in logprobs] if logprobs else None
        content, refusal = _text(message.get("content")), _text(message.get("refusal"))
        if content or parsed:
            events.append(TextDelta(content or "", index, parsed))
        if refusal:
            events.append(TextDelta(refusal, index, refusal=True))
        written = _size(content) + _size(refusal)
        for number, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            name, arguments = _text(function.get("name")), _text(function.get("arguments")) or ""
            written += _size(name) + _size(arguments)
            call_id = _text(call.get("id")) or new_call_id()
            events.append(ToolCallDelta(number, arguments, call_id, name, index))
        reason = choice.get("finish_reason")
        final: FinishReason = reason if reason in FINISH_REASONS else "stop"
        events.append(Finished(final, 0, min(limit, estimate_tokens(written)), index))
    usage = _reported(body.get("usage"))
    return events if usage is None else [*events, usage]
