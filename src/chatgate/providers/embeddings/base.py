"""The small interface every embedding engine and upstream implements: a cheap ``prepare``, a heavy ``run``.

NumPy is imported where vectors are made or changed, not with this module: a gateway that serves no
embeddings never loads it (about 20 MiB a process; issue 18's gateway under 150 MiB).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from chatgate.errors import InvalidRequest
from chatgate.protocol.embeddings import EmbeddingRequest

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]  # one row per input, in the request's order
# Told the inputs' exact token count once the engine has read them: from then on they are billable
# even if the client leaves (the metering unit's Accepted).
Accept = Callable[[int], None]


def ignore(prompt_tokens: int) -> None:
    """An ``Accept`` for a caller that does not meter (tests, the bench)."""


@dataclass(frozen=True)
class Limits:
    """What one deployment accepts in a request."""

    max_inputs: int = 2048  # items in ``input``, as OpenAI allows
    max_input_tokens: int = 8192  # tokens in any one input
    max_request_tokens: int = 300_000  # tokens in all inputs together, as OpenAI allows
    special_tokens: int = 2  # tokens a model adds to each text (BERT's [CLS] and [SEP])


@dataclass(frozen=True)
class EmbeddingPlan:
    """A request checked against its deployment, with the most it can cost: nothing heavy done yet."""

    texts: list[str] | None  # the inputs, when they are text
    token_ids: list[list[int]] | None  # or when they are token ids
    dimensions: int | None  # the length asked for, when shorter vectors are asked for
    bound: int  # the most prompt tokens it can count, from its bytes and ids alone: what is reserved
    estimate: int  # what it is charged when an upstream reports no usage
    single: bool = False  # ``input`` was one text (or one list of ids), not a list of them
    user: str | None = None  # the caller's end-user id, passed on to upstreams that watch for abuse

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


@dataclass(frozen=True)
class Embeddings:
    vectors: Vectors
    prompt_tokens: int  # exact: counted by the model's own tokenizer (or the upstream's report)


class Embedder(Protocol):
    """Makes embeddings for the catalogue models it serves.

    ``prepare`` checks a request and bounds its cost without tokenizing, running the model or
    touching the network; its refusals cost nothing. ``run`` does the work, after the request was
    admitted and reserved on the plan's bound, and calls ``accepted`` once the inputs are read.
    """

    @property
    def dimensions(self) -> int | None:
        """The length of its vectors, when known before any request."""
        ...

    async def start(self) -> None: ...

    def prepare(self, request: EmbeddingRequest) -> EmbeddingPlan: ...

    async def run(self, plan: EmbeddingPlan, accepted: Accept = ignore) -> Embeddings: ...

    def stats(self) -> dict[str, int]: ...

    def health(self) -> list[dict[str, object]]: ...

    async def aclose(self) -> None: ...


def utf8_size(text: str, param: str) -> int:
    """A text's UTF-8 bytes; a lone surrogate (``"\\ud800"``) is no Unicode text: a 400 naming it."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"Invalid value for '{param}': the text holds an unpaired UTF-16 surrogate.", param=param
        ) from None


def plan(
    request: EmbeddingRequest, limits: Limits, *, vocabulary: int | None = None, bytes_per_token: int = 3
) -> EmbeddingPlan:
    """Check a request's inputs against ``limits`` and bound its tokens, cheaply.

    A text's tokens are at most its UTF-8 bytes plus the model's special tokens (every token covers
    at least one byte of the normalised text); token ids count as themselves. Each refusal is a 400
    naming the field at fault.
    """
    inputs, dimensions = request.input, request.dimensions
    items: list[str] | list[int] | list[list[int]] = [inputs] if isinstance(inputs, str) else inputs
    if not items:
        raise InvalidRequest("'input' must not be empty.", param="input")
    if isinstance(items[0], int):  # one list of token ids: one input, however long
        return _ids_plan([items], request, limits, vocabulary, single=True)
    if len(items) > limits.max_inputs:
        raise InvalidRequest(
            f"'input' has {len(items)} items; this model takes at most {limits.max_inputs} per request.",
            param="input",
        )
    if isinstance(items[0], list):
        return _ids_plan(items, request, limits, vocabulary, single=False)
    texts: list[str] = items
    bound = estimate = 0
    for i, text in enumerate(texts):
        where = "input" if isinstance(inputs, str) else f"input[{i}]"
        if not text:
            raise InvalidRequest(f"'{where}' must not be an empty string.", param=where)
        size = utf8_size(text, where)
        bound += size + limits.special_tokens
        estimate += -(-size // bytes_per_token) + limits.special_tokens
    check_total(bound, limits, bounded=True)
    return EmbeddingPlan(
        texts, None, dimensions, bound, min(estimate, bound), isinstance(inputs, str), request.user
    )


def _ids_plan(
    sequences: list[list[int]],
    request: EmbeddingRequest,
    limits: Limits,
    vocabulary: int | None,
    *,
    single: bool,
) -> EmbeddingPlan:
    total = 0
    for i, ids in enumerate(sequences):
        where = "input" if single else f"input[{i}]"
        if not ids:
            raise InvalidRequest(f"'{where}' must not be an empty list of token ids.", param=where)
        if len(ids) > limits.max_input_tokens:
            raise too_long(None if single else i, len(ids), limits.max_input_tokens)
        if vocabulary is not None:
            for j, token in enumerate(ids):
                if not 0 <= token < vocabulary:
                    raise InvalidRequest(
                        f"'{where}[{j}]' is {token}, not a token id of this model (0 to {vocabulary - 1}).",
                        param=f"{where}[{j}]",
                    )
        total += len(ids)
    check_total(total, limits)
    return EmbeddingPlan(None, sequences, request.dimensions, total, total, single, request.user)


def check_total(tokens: int, limits: Limits, *, bounded: bool = False) -> None:
    """Refuse a request past ``max_request_tokens``: its exact count, or (``bounded``) when even
    its texts' bytes are more than 4 times that (a text's tokens are rarely under a quarter of its bytes)."""
    if tokens > limits.max_request_tokens * (4 if bounded else 1):
        raise InvalidRequest(
            f"'input' holds {tokens} tokens in all; this model takes at most {limits.max_request_tokens} "
            "per request.",
            param="input",
        )


def too_long(index: int | None, tokens: int, limit: int) -> InvalidRequest:
    where = "input" if index is None else f"input[{index}]"
    return InvalidRequest(
        f"'{where}' has {tokens} tokens; this model takes at most {limit} per input. Shorten or split it.",
        param=where,
        code="context_length_exceeded",
    )


def shorten(vectors: Vectors, dimensions: int | None, *, normalize: bool = True) -> Vectors:
    """Vectors cut to their first ``dimensions`` and scaled back to length 1 (for a model trained so
    that leading parts are embeddings too)."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    import numpy as np

    cut = np.ascontiguousarray(vectors[:, :dimensions])
    if normalize:
        norms = np.linalg.norm(cut, axis=1, keepdims=True)
        cut /= np.where(norms == 0, 1, norms)
    return cut


def check_dimensions(dimensions: int | None, native: int | None, matryoshka: bool, model: str) -> None:
    """Refuse ``dimensions`` a model cannot give: anything but its own length, unless it is trained for it."""
    if dimensions is None or dimensions == native:
        return
    if not matryoshka:
        size = f" (its vectors have {native})" if native else ""
        raise InvalidRequest(
            f"The model '{model}' does not support 'dimensions'{size}: leave it out.", param="dimensions"
        )
    if native is not None and dimensions > native:
        raise InvalidRequest(
            f"'dimensions' is {dimensions}; the model '{model}' makes vectors of at most {native}.",
            param="dimensions",
        )
