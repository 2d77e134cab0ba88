"""``/v1/embeddings`` through the metering unit: check the request, admit and reserve on its bound
(from its bytes and token ids alone: nothing tokenized yet), run it on its model, settle on the exact
count before the answer is written.

A request refused before it runs (bad input, limits, credits) costs nothing and holds nothing. One
that fails after admission returns no vectors, so it costs nothing either; one whose client leaves
after the engine has read its inputs (the local tokenizer has counted them) pays for them, as a
chat prompt does.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from typing import TYPE_CHECKING

from chatgate.errors import ChatgateError, InsufficientQuota
from chatgate.protocol.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from chatgate.providers.base import Accepted, Bound, UsageReport
from chatgate.services.catalogue import ModelRegistry
from chatgate.services.metering import Caller, Metering

if TYPE_CHECKING:
    from chatgate.providers.embeddings.base import Vectors

API = "embeddings"  # the API named in the usage rows of this service's requests


class EmbeddingService:
    def __init__(self, registry: ModelRegistry, metering: Metering) -> None:
        self._registry = registry
        self._metering = metering
        # With a model that costs nothing, an empty balance is no reason to refuse a request unread.
        self._free = any(not r.price.prompt for r in registry.embedding_routes.values())

    def check_credits(self, caller: Caller) -> None:
        """Refuse a token with no credits left before its body is read (logged with no model)."""
        caller = dataclasses.replace(caller, api=API)
        left = caller.principal.credits_left
        if left is not None and left <= 0 and not self._free:
            refusal = InsufficientQuota(
                "You exceeded your current quota: this API token has no credits left. Add credits."
            )
            self._metering.refused(caller, "", refusal, time.monotonic())
            raise refusal

    async def create(self, caller: Caller, request: EmbeddingRequest) -> tuple[EmbeddingList, dict[str, str]]:
        started = time.monotonic()
        caller = dataclasses.replace(caller, api=API)
        try:
            route = self._registry.resolve_embedding(request.model)
            caller.principal.check_model(request.model, route.name)
            plan = route.embedder.prepare(request)  # bad input is refused here, before any limit or credit
        except ChatgateError as exc:
            self._metering.refused(caller, request.model, exc, started)
            raise
        bound = Bound(prompt_tokens=plan.bound, completion_tokens=0)
        async with self._metering.admit(caller, model=route.name, price=route.price, bound=bound) as meter:
            result = await route.embedder.run(plan, lambda tokens: meter.observe(Accepted(tokens)))
            meter.observe(UsageReport(result.prompt_tokens, 0))
            charge = await meter.settle()  # committed before the answer is written
        answer = EmbeddingList(
            data=_data(result.vectors, request.encoding_format == "base64"),
            model=route.name,
            usage=EmbeddingUsage(prompt_tokens=charge.prompt_tokens, total_tokens=charge.prompt_tokens),
        )
        return answer, meter.headers


def _data(vectors: Vectors, as_base64: bool) -> list[Embedding]:
    """One entry per vector; base64 is the vector's little-endian float32 bytes, as OpenAI sends it."""
    if as_base64:
        import numpy as np  # loaded with the first vectors (see embeddings/base.py)

        raw = np.ascontiguousarray(vectors, dtype="<f4")
        return [
            Embedding.model_construct(index=i, embedding=base64.b64encode(row.tobytes()).decode("ascii"))
            for i, row in enumerate(raw)
        ]
    return [Embedding.model_construct(index=i, embedding=row) for i, row in enumerate(vectors.tolist())]
