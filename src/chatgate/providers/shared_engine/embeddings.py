"""A worker's side of a local embedding model that runs in the engine process.

The model (ONNX Runtime, its weights, the tokenizer) is loaded once, in the engine process, like the
local chat models; a worker holds only what ``prepare`` needs to check a request and bound its cost
before it is admitted (the vector length, the vocabulary's size, the special tokens a text gets,
the longest input), read from the engine once at start-up. ``run`` is one exchange over the
engine's Unix socket: the plan goes in as JSON; the engine answers with a line when it has read and
counted the inputs (from then on they are billable, as in a single process), then the vectors as
little-endian float32 bytes, or a domain error line (``wire``). Hanging up (the client left)
cancels the work in the engine.
"""

import base64
import contextlib
import dataclasses
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from chatgate.errors import ChatgateError, EngineFailure
from chatgate.protocol.embeddings import EmbeddingRequest
from chatgate.providers.embeddings.base import (
    Accept,
    EmbeddingPlan,
    Embeddings,
    Limits,
    check_dimensions,
    ignore,
    plan,
)
from chatgate.providers.shared_engine import wire
from chatgate.providers.shared_engine.client import EngineLink

if TYPE_CHECKING:
    from chatgate.providers.embeddings.base import Vectors

ACCEPTED = "accepted"  # the engine read and counted the inputs
VECTORS = "vectors"


@dataclasses.dataclass(frozen=True)
class EmbedderFacts:
    """What a worker needs of an engine-held embedding model to plan requests for it."""

    dimensions: int
    vocabulary: int
    matryoshka: bool
    limits: Limits

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "EmbedderFacts":
        return cls(
            dimensions=int(body["dimensions"]),
            vocabulary=int(body["vocabulary"]),
            matryoshka=bool(body["matryoshka"]),
            limits=Limits(**body["limits"]),
        )


def plan_to_json(work: EmbeddingPlan) -> bytes:
    return json.dumps(dataclasses.asdict(work), separators=(",", ":")).encode()


def plan_from_json(body: bytes) -> EmbeddingPlan:
    return EmbeddingPlan(**json.loads(body))


def accepted_line(prompt_tokens: int) -> bytes:
    return json.dumps({"type": ACCEPTED, "prompt_tokens": prompt_tokens}).encode() + b"\n"


def vectors_line(done: Embeddings) -> bytes:
    import numpy as np  # in the engine process, where the model already loaded it

    raw = np.ascontiguousarray(done.vectors, dtype="<f4")
    body = {
        "type": VECTORS,
        "rows": int(raw.shape[0]),
        "columns": int(raw.shape[1]),
        "data": base64.b64encode(raw.tobytes()).decode("ascii"),
        "prompt_tokens": done.prompt_tokens,
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _vectors(body: dict[str, Any]) -> "Vectors":
    import numpy as np  # with the first vectors, not with the gateway (see embeddings/base.py)

    flat = np.frombuffer(base64.b64decode(body["data"]), dtype="<f4")
    return flat.reshape(int(body["rows"]), int(body["columns"])).astype(np.float32)


class SharedEmbedder:
    """One local embedding deployment, served by the engine process under ``key``."""

    def __init__(self, link: EngineLink, key: str, name: str, label: str) -> None:
        self._link = link
        self.key = key
        self.name = name  # the catalogue model's
        self.label = label  # the deployment's, as /healthz shows it
        self._facts: EmbedderFacts | None = None

    @property
    def dimensions(self) -> int | None:
        return self._facts.dimensions if self._facts is not None else None

    async def start(self) -> None:
        await self._link.start()
        url = "http://engine/embedder/" + quote(self.key, safe="")
        try:
            async with self._link.session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as response:
                if response.status != 200:
                    raise EngineFailure(f"The engine process serves no embedding model {self.key!r}.")
                self._facts = EmbedderFacts.from_json(await response.json())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineFailure(f"The engine process could not be reached: {exc}") from exc

    async def aclose(self) -> None:
        await self._link.aclose()

    def prepare(self, request: EmbeddingRequest) -> EmbeddingPlan:
        facts = self._facts
        if facts is None:
            raise EngineFailure(f"The embedding model '{self.name}' is not ready yet.")
        check_dimensions(request.dimensions, facts.dimensions, facts.matryoshka, self.name)
        return plan(request, facts.limits, vocabulary=facts.vocabulary)

    def stats(self) -> dict[str, int]:
        return self._link.stats_of(self.key)

    def health(self) -> list[dict[str, object]]:
        return self._link.health_of(self.key, self.label)

    async def run(self, work: EmbeddingPlan, accepted: Accept = ignore) -> Embeddings:
        async with contextlib.aclosing(self._link.lines("embed", self.key, plan_to_json(work))) as lines:
            async for line in lines:
                body = _read(line)
                if body.get("type") == ACCEPTED:
                    accepted(int(body["prompt_tokens"]))
                elif body.get("type") == VECTORS:
                    return Embeddings(_vectors(body), int(body["prompt_tokens"]))
                elif body.get("type") == wire.ERROR and isinstance(error := wire.decode(line), ChatgateError):
                    raise error
                else:
                    raise EngineFailure(f"The engine process sent an unexpected line: {line[:80]!r}")
        raise EngineFailure("The engine process ended the answer without vectors.")


def _read(line: bytes) -> dict[str, Any]:
    try:
        body = json.loads(line)
    except ValueError as exc:
        raise EngineFailure(f"The engine process sent something unreadable: {line[:80]!r}") from exc
    if not isinstance(body, dict):
        raise EngineFailure(f"The engine process sent something unreadable: {line[:80]!r}")
    return body


def embedding_key(model: str, index: int) -> str:
    """The name both sides give a catalogue model's ``index``-th embedding deployment."""
    return f"{model}#embeddings{index}"
