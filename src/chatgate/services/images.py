"""``/v1/images/generations``: a drawing model's backend called directly, through the metering unit.

A request is reserved at its bound (``n`` drawings: the backend's token budget and the image price
each) before anything is drawn. A failed request returns no image, so it costs nothing, not even
the images drawn before the failure.
"""

import base64
import time

from chatgate.errors import ChatgateError, InvalidRequest, NotImplementedFeature
from chatgate.protocol.images import ImageData, ImageGenerationRequest, ImagesResponse
from chatgate.providers.base import Bound, UsageReport
from chatgate.providers.images.drawing import ImageGenerationProvider
from chatgate.services.catalogue import ModelRegistry, Route
from chatgate.services.metering import Caller, Metering


class ImageService:
    def __init__(self, registry: ModelRegistry, metering: Metering) -> None:
        self._registry = registry
        self._metering = metering

    def _route(self, model: str | None) -> tuple[Route, ImageGenerationProvider]:
        if model is None:
            for route in self._registry.routes.values():
                if isinstance(route.provider, ImageGenerationProvider):
                    return route, route.provider
            raise InvalidRequest("No image generation model is configured.", param="model")
        route = self._registry.resolve(model)
        if not isinstance(route.provider, ImageGenerationProvider):
            raise InvalidRequest(f"The model '{model}' does not generate images.", param="model")
        return route, route.provider

    async def generate(
        self, caller: Caller, request: ImageGenerationRequest
    ) -> tuple[ImagesResponse, dict[str, str]]:
        started = time.monotonic()
        try:
            route, provider = self._route(request.model)
            caller.principal.check_model(request.model or route.name, route.name)
            if request.stream:
                raise NotImplementedFeature("Streaming image generation is not supported.", param="stream")
            size = provider.check_size(request.size)
        except ChatgateError as exc:
            self._metering.refused(caller, request.model or "", exc, started)
            raise
        n = request.n or 1
        prompt_budget, completion_budget = provider.backend.token_budget()
        bound = Bound(n * prompt_budget, n * completion_budget, n * provider.image_price)
        data: list[ImageData] = []
        async with self._metering.admit(caller, model=route.name, price=route.price, bound=bound) as meter:
            prompt_tokens = completion_tokens = 0
            for _ in range(n):
                generated, drawn = await provider.draw(request.prompt, size, [])
                prompt_tokens += drawn.prompt_tokens
                completion_tokens += drawn.completion_tokens
                if request.response_format == "b64_json":
                    encoded = base64.b64encode(generated.png).decode()
                    data.append(ImageData(b64_json=encoded, revised_prompt=request.prompt))
                else:
                    data.append(ImageData(url=generated.url, revised_prompt=request.prompt))
            meter.observe(UsageReport(prompt_tokens, completion_tokens, extra_cost=n * provider.image_price))
            await meter.settle()  # committed before the answer is written
        return ImagesResponse(created=int(time.time()), data=data), meter.headers
