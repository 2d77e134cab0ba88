"""An OpenAI-compatible ``/embeddings`` endpoint as an Embedder, relayed through the shared aiohttp session.

The answer is checked (one vector per input, all of one length) and read whether the upstream sent
floats or base64. Usage is the upstream's; an upstream that reports none is estimated from the
request's bytes, never charged as zero. Errors map as the chat relay's do (``upstream_error``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

import aiohttp

from chatgate.config import UpstreamEmbeddingDeployment
from chatgate.errors import UpstreamFailed, UpstreamTimeout
from chatgate.protocol.embeddings import EmbeddingRequest
from chatgate.providers.embeddings.base import (
    Accept,
    EmbeddingPlan,
    Embeddings,
    Limits,
    check_dimensions,
    ignore,
    plan,
    shorten,
)
from chatgate.providers.relay import RelaySession
from chatgate.providers.upstream import display_url, upstream_error

if TYPE_CHECKING:
    from chatgate.providers.embeddings.base import Vectors

# A text's tokens as an upstream's tokenizer may count them: at most one a byte, plus what the model
# adds around it (BERT's two, a decoder's end-of-text token...).
SPECIAL_TOKENS = 4


class UpstreamEmbedder:
    def __init__(self, name: str, deployment: UpstreamEmbeddingDeployment, relay: RelaySession) -> None:
        self.public_name = name
        self.deployment = deployment
        self._relay = relay
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(10.0, deployment.timeout), sock_read=deployment.timeout
        )
        self._url = deployment.base_url.rstrip("/") + "/embeddings"
        self._headers = {"content-type": "application/json", **deployment.headers}
        key = deployment.api_key()
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self.limits = Limits(max_input_tokens=deployment.max_input_tokens, special_tokens=SPECIAL_TOKENS)
        self.in_flight = 0
        self.failures = 0

    @property
    def name(self) -> str:
        return f"{display_url(self.deployment.base_url)}#{self.deployment.model}"

    @property
    def dimensions(self) -> int | None:
        return self.deployment.dimensions

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None  # the shared session is closed by whoever built it

    def stats(self) -> dict[str, int]:
        return {"in_flight": self.in_flight, "failures": self.failures}

    def health(self) -> list[dict[str, object]]:
        return [{"deployment": self.name, "up": True, **self.stats()}]

    def prepare(self, request: EmbeddingRequest) -> EmbeddingPlan:
        check_dimensions(
            request.dimensions, self.deployment.dimensions, self.deployment.matryoshka, self.public_name
        )
        return plan(request, self.limits)

    def _body(self, work: EmbeddingPlan) -> bytes:
        inputs: Any = work.texts if work.texts is not None else work.token_ids
        if work.single:
            inputs = inputs[0]
        body: dict[str, Any] = {"model": self.deployment.model, "input": inputs, "encoding_format": "base64"}
        if work.dimensions is not None and work.dimensions != self.deployment.dimensions:
            body["dimensions"] = work.dimensions
        if work.user is not None:
            body["user"] = work.user
        return json.dumps(body, ensure_ascii=False).encode()

    async def run(self, work: EmbeddingPlan, accepted: Accept = ignore) -> Embeddings:
        """(An upstream's answer comes whole: the request is billed on it, never ``accepted`` before.)"""
        self.in_flight += 1
        try:
            try:
                async with self._relay.session.post(
                    self._url, data=self._body(work), headers=self._headers, timeout=self._timeout
                ) as response:
                    raw = await response.read()
                    if response.status >= 400:
                        error = upstream_error(response.status, raw, response.headers.get("retry-after"))
                        if isinstance(error, UpstreamFailed):
                            self.failures += 1
                        raise error
            except TimeoutError as exc:
                self.failures += 1
                raise UpstreamTimeout("The upstream did not answer in time.") from exc
            except aiohttp.ClientError as exc:
                self.failures += 1
                raise UpstreamFailed(f"Could not reach the upstream: {type(exc).__name__}.") from exc
            try:
                vectors, reported = _answer(json.loads(raw), work.count)
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                self.failures += 1
                raise UpstreamFailed(
                    f"The upstream's answer was not a list of {work.count} embeddings."
                ) from exc
            if work.dimensions is not None and vectors.shape[1] < work.dimensions:
                self.failures += 1
                raise UpstreamFailed(
                    f"The upstream sent vectors of {vectors.shape[1]} dimensions, fewer than the {work.dimensions} asked for."
                )
            tokens = reported if reported is not None else work.estimate
            # An upstream that ignores 'dimensions' sends whole vectors: a model trained for it is cut here.
            return Embeddings(shorten(vectors, work.dimensions), tokens)
        finally:
            self.in_flight -= 1


def _answer(body: Any, count: int) -> tuple[Vectors, int | None]:
    """The vectors in input order, and the reported prompt tokens (None when absent or malformed)."""
    import numpy as np  # with the first vectors, not with the gateway (see embeddings/base.py)

    items = body["data"]
    if not isinstance(items, list) or len(items) != count:
        raise ValueError("wrong number of embeddings")
    rows: list[Any] = [None] * count
    for position, item in enumerate(items):
        index = item.get("index", position)
        if not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
            raise ValueError("bad index")
        value = item["embedding"]
        if isinstance(value, str):
            rows[index] = np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4")
        else:
            rows[index] = np.asarray(value, dtype=np.float32)
    if len({row.shape for row in rows}) != 1 or rows[0].ndim != 1 or rows[0].size == 0:
        raise ValueError("vectors of different lengths")
    vectors = np.stack(rows).astype(np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("a vector is not finite")
    usage = body.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    valid = isinstance(prompt, int) and not isinstance(prompt, bool) and prompt >= 0
    return vectors, prompt if valid else None
