"""An OpenAI-compatible upstream as a Provider: one pooled HTTP client, streamed relay, exact usage.

A streamed request is relayed as a stream, asking for ``stream_options.include_usage`` so usage is
exact (an upstream that ignores it is counted a token per piece); a non-streamed one is relayed
as is, and its ``usage`` is exact. Upstream
4xx keep their status and message; 5xx, broken streams and bad JSON become UpstreamFailed, time-outs
UpstreamTimeout. Nothing is retried here once output has started.
"""

import json
from collections import Counter
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from chatgate.config import UpstreamDeployment
from chatgate.errors import UpstreamFailed, UpstreamRefused, UpstreamTimeout
from chatgate.protocol.messages import text_of
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.protocol.responses import FinishReason, TokenLogprob
from chatgate.providers.base import (
    Finished,
    ProviderEvent,
    Running,
    Started,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from chatgate.providers.relay import RelaySession

PER_MESSAGE_OVERHEAD = 8
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}


def prompt_bound(request: ChatCompletionRequest) -> int:
    """An upper bound on the prompt's tokens without the upstream's tokenizer: a token is at least a byte."""
    size = sum(len(text_of(m).encode()) + PER_MESSAGE_OVERHEAD for m in request.messages)
    if request.tools:
        size += len(json.dumps([t.model_dump() for t in request.tools]).encode())
    return size


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
        # Up to the first byte, and then between bytes: ``sock_read`` bounds every wait for data.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=min(10.0, deployment.timeout),
            sock_read=deployment.timeout,
        )
        self._url = deployment.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"content-type": "application/json", **deployment.headers}
        key = deployment.api_key()
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self.in_flight = 0
        self.failures = 0

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
        return f"{self.deployment.base_url}#{self.deployment.model}"

    def _body(self, request: ChatCompletionRequest) -> dict[str, Any]:
        body: dict[str, Any] = request.model_dump(mode="json", exclude_none=True, by_alias=True)
        body["model"] = self.deployment.model
        if request.stream:
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        return body

    async def stream(self, request: ChatCompletionRequest) -> AsyncGenerator[ProviderEvent, None]:
        limit = request.token_limit or self.deployment.max_tokens
        yield Started(prompt_tokens=prompt_bound(request), max_completion_tokens=limit * (request.n or 1))
        self.in_flight += 1
        try:
            body = json.dumps(self._body(request)).encode()
            try:
                response = await self._relay.session.post(
                    self._url, data=body, headers=self._headers, timeout=self._timeout
                )
            except TimeoutError as exc:
                self.failures += 1
                raise UpstreamTimeout("The upstream did not answer in time.") from exc
            except aiohttp.ClientError as exc:
                self.failures += 1
                raise UpstreamFailed(f"Could not reach the upstream: {type(exc).__name__}.") from exc
            complete = False
            try:
                if response.status >= 400:
                    await self._refuse(response)
                if not request.stream:
                    answer = await self._whole(response)  # still before Running: a bad answer can be retried
                    complete = True
                    yield Running()
                    for event in answer:
                        yield event
                    return
                yield Running()
                async for event in self._events(response):
                    yield event
                complete = True
            finally:
                if complete:
                    response.release()  # the connection goes back to the pool
                else:
                    response.close()  # cut short (an error, a client gone): the upstream's work stops
        finally:
            self.in_flight -= 1

    async def _refuse(self, response: aiohttp.ClientResponse) -> None:
        try:
            raw = await response.read()
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
        error = upstream_error(response.status, raw, response.headers.get("retry-after"))
        if isinstance(error, UpstreamFailed):
            self.failures += 1
        raise error

    async def _whole(self, response: aiohttp.ClientResponse) -> list[ProviderEvent]:
        """A non-streamed answer as events, with the upstream's exact usage."""
        try:
            body = json.loads(await response.read())
            events: list[ProviderEvent] = []
            for choice in body["choices"]:
                index = int(choice.get("index", 0))
                message = choice.get("message") or {}
                logprobs = (choice.get("logprobs") or {}).get("content")
                parsed = [TokenLogprob.model_validate(t) for t in logprobs] if logprobs else None
                if message.get("content") or parsed:
                    events.append(TextDelta(message.get("content") or "", index, parsed))
                for number, call in enumerate(message.get("tool_calls") or []):
                    function = call.get("function") or {}
                    events.append(
                        ToolCallDelta(
                            number,
                            function.get("arguments") or "",
                            call.get("id"),
                            function.get("name"),
                            index,
                        )
                    )
                reason = choice.get("finish_reason")
                events.append(Finished(reason if reason in FINISH_REASONS else "stop", 0, 0, index))
            usage = body.get("usage") or {}
            events.append(
                UsageReport(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
            )
            return events
        except TimeoutError as exc:
            self.failures += 1
            raise UpstreamTimeout("The upstream stalled mid-answer.") from exc
        except aiohttp.ClientError as exc:
            self.failures += 1
            raise UpstreamFailed("The upstream's answer broke off.") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.failures += 1
            raise UpstreamFailed("The upstream's answer was not a chat completion.") from exc

    async def _events(self, response: aiohttp.ClientResponse) -> AsyncGenerator[ProviderEvent, None]:
        done = False
        deltas: Counter[int] = Counter()  # content pieces per choice: the count when no usage comes
        try:
            async for raw in response.content:
                if not raw.startswith(b"data:"):
                    continue
                payload = raw[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(payload)
                except ValueError as exc:
                    raise UpstreamFailed("The upstream sent malformed JSON in its stream.") from exc
                if "error" in chunk:
                    raise UpstreamFailed(f"The upstream failed mid-stream: {chunk['error']}")
                for event in _chunk_events(chunk):
                    if isinstance(event, TextDelta | ToolCallDelta):
                        deltas[event.index] += event.tokens
                    elif isinstance(event, Finished):
                        # Upstreams that send no usage (llama.cpp's server): a piece per token.
                        event = Finished(event.reason, 0, deltas[event.index], event.index)
                    yield event
        except TimeoutError as exc:
            self.failures += 1
            raise UpstreamTimeout("The upstream stalled mid-stream.") from exc
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a line over the read buffer
            self.failures += 1
            raise UpstreamFailed("The upstream's stream broke off.") from exc
        if not done:
            self.failures += 1
            raise UpstreamFailed("The upstream's stream ended without [DONE].")


def _chunk_events(chunk: dict[str, Any]) -> list[ProviderEvent]:
    events: list[ProviderEvent] = []
    for choice in chunk.get("choices") or []:
        index = int(choice.get("index", 0))
        delta = choice.get("delta") or {}
        logprobs = (choice.get("logprobs") or {}).get("content")
        content = delta.get("content")
        if content or logprobs:
            parsed = [TokenLogprob.model_validate(t) for t in logprobs] if logprobs else None
            events.append(TextDelta(content or "", index, parsed, tokens=1))
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            events.append(
                ToolCallDelta(
                    call_index=int(call.get("index", 0)),
                    arguments=function.get("arguments") or "",
                    call_id=call.get("id"),
                    name=function.get("name"),
                    index=index,
                    tokens=1,
                )
            )
        reason = choice.get("finish_reason")
        if reason:
            final: FinishReason = reason if reason in FINISH_REASONS else "stop"
            events.append(Finished(final, 0, 0, index))
    usage = chunk.get("usage")
    if usage:
        events.append(UsageReport(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))))
    return events
