"""``/v1/images/generations``: a drawing model's backend called directly, metered like a chat request."""

import base64
import time

import anyio

from chatgate.errors import InvalidRequest, NotImplementedFeature
from chatgate.protocol.images import ImageData, ImageGenerationRequest, ImagesResponse
from chatgate.providers.images.drawing import ImageGenerationProvider
from chatgate.services.catalogue import Route
from chatgate.services.chat import Caller, ChatService, error_code


class ImageService:
    def __init__(self, chat: ChatService) -> None:
        self._chat = chat

    def _route(self, model: str | None) -> tuple[Route, ImageGenerationProvider]:
        registry = self._chat.registry
        if model is None:
            for route in registry.routes.values():
                if isinstance(route.provider, ImageGenerationProvider):
                    return route, route.provider
            raise InvalidRequest("No image generation model is configured.", param="model")
        route = registry.resolve(model)
        if not isinstance(route.provider, ImageGenerationProvider):
            raise InvalidRequest(f"The model '{model}' does not generate images.", param="model")
        return route, route.provider

    async def generate(
        self, caller: Caller, request: ImageGenerationRequest
    ) -> tuple[ImagesResponse, dict[str, str]]:
        started = time.monotonic()
        route, provider = self._route(request.model)
        caller.principal.check_model(request.model or route.name, route.name)
        if request.stream:
            raise NotImplementedFeature("Streaming image generation is not supported.", param="stream")
        size = provider.check_size(request.size)
        n = request.n or 1
        decision = await self._chat.limiter.admit(caller.principal)
        budget_prompt, budget_completion = provider.backend.token_budget()
        with anyio.CancelScope(shield=True):
            reservation = await self._chat.quota.reserve(
                caller.principal,
                caller.trace_id,
                route.price,
                n * budget_prompt,
                n * budget_completion,
                n * provider.image_price,
            )
        prompt_tokens = completion_tokens = made = 0
        status: str = "error"
        code: str | None = "internal_error"
        data: list[ImageData] = []
        try:
            for _ in range(n):
                generated, drawn = await provider.draw(request.prompt, size, [])
                made += 1
                prompt_tokens += drawn.prompt_tokens
                completion_tokens += drawn.completion_tokens
                if request.response_format == "b64_json":
                    data.append(
                        ImageData(
                            b64_json=base64.b64encode(generated.png).decode(), revised_prompt=request.prompt
                        )
                    )
                else:
                    data.append(ImageData(url=generated.url, revised_prompt=request.prompt))
            status, code = "ok", None
        except Exception as exc:
            code = error_code(exc)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                # A failed request returns no image, so it costs nothing, not even the images drawn before.
                spent = (prompt_tokens, completion_tokens, made * provider.image_price)
                used = spent if status == "ok" else (0, 0, 0)
                await self._chat.charge(caller, route.name, started, reservation, used, status, code)
        return ImagesResponse(created=int(time.time()), data=data), decision.headers()
