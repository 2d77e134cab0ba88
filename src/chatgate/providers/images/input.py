"""A model's provider with the request's images made ready for it, the work done after admission.

``prepare`` bounds what the images can cost without reading one: a vision model's provider bounds
the image parts itself (upstream.IMAGE_PART_TOKENS each); for a model that reads descriptions,
each image is bounded at that many tokens too (a description is at most DESCRIPTION_BYTES). ``run``
then fetches, decodes and analyses them (the heavy work, under the host's bound), and runs the
model on the request as it will read it.
"""

from collections.abc import AsyncGenerator

from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import AnyProvider, Bound, Plan, ProviderEvent
from chatgate.providers.images.prepare import ImagePreparer, without_images
from chatgate.providers.upstream import IMAGE_PART_TOKENS


class ImageInput:
    def __init__(self, inner: AnyProvider, preparer: ImagePreparer, *, native: bool) -> None:
        self._inner = inner
        self._preparer = preparer
        self._native = native

    async def start(self) -> None:
        await self._inner.start()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def stats(self) -> dict[str, int]:
        return self._inner.stats()

    def health(self) -> list[dict[str, object]]:
        return self._inner.health()

    def prepare(self, request: ChatCompletionRequest) -> Plan:
        parts = self._preparer.check(request, native=self._native)
        if self._native:
            return Plan(request, self._inner.prepare(request).bound)
        described = Bound(len(parts) * IMAGE_PART_TOKENS, 0)
        return Plan(request, self._inner.prepare(without_images(request)).bound + described)

    async def run(self, plan: Plan) -> AsyncGenerator[ProviderEvent, None]:
        request = await self._preparer.prepare(plan.request, native=self._native)
        async for event in self._inner.run(self._inner.prepare(request)):
            yield event
