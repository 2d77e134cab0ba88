"""The drawing chat model: its base model plans the image, a backend draws it, the reply links the file.

The reply has a fixed shape: the plan as a JSON block, the image in markdown, a download link, and a
sentence about the image. Usage is the sum of every model step; the image itself costs a flat price.

The request is bounded (and reserved) before any input image is read: the plan step as the base
model bounds it, each input image at upstream.IMAGE_PART_TOKENS, the backend's budget for one
drawing, and the image's price. Input images are loaded in ``run``, as heavy work.
"""

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from chatgate.errors import InvalidRequest, NotImplementedFeature
from chatgate.protocol.messages import SystemMessage, text_of
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import (
    Accepted,
    AnyProvider,
    Bound,
    Finished,
    Plan,
    ProviderEvent,
    TextDelta,
    UsageReport,
    collect,
    replay,
)
from chatgate.providers.images.backends import Drawn, ImageBackend, parse_plan, plan_format
from chatgate.providers.images.decode import Picture
from chatgate.providers.images.prepare import ImagePreparer, has_images, without_images
from chatgate.providers.upstream import IMAGE_PART_TOKENS

PLAN_TOKENS = 256

INSTRUCTIONS = (
    "You write prompts for an image generator. Read the conversation and answer with JSON. "
    '"prompt": a description of the image to make (its subject, setting, style, colours and '
    "composition), following the user's latest request and any earlier images. "
    '"size": one of {sizes} (the first, unless the user asks for another shape or size). '
    '"caption": one short sentence for the user saying what the picture shows.'
)


class StoredImage(Protocol):
    @property
    def id(self) -> str: ...


class ImageStore(Protocol):
    async def put(
        self, data: bytes, *, content_type: str, extension: str, owner: str | None = None
    ) -> StoredImage: ...

    def url(self, file_id: str) -> str: ...


@dataclass(frozen=True)
class Generated:
    """One generated image, stored."""

    file_id: str
    url: str
    png: bytes


def parse_size(size: str) -> tuple[int, int]:
    width, height = size.split("x")
    return int(width), int(height)


class ImageGenerationProvider:
    def __init__(
        self,
        *,
        base: AnyProvider,
        base_vision: bool,
        backend: ImageBackend,
        store: ImageStore,
        preparer: ImagePreparer,
        sizes: list[str],
        image_price: int,
        name: str,
    ) -> None:
        self._base = base
        self._base_vision = base_vision
        self.backend = backend
        self._store = store
        self._preparer = preparer
        self.sizes = sizes
        self.image_price = image_price
        self.name = name

    async def start(self) -> None:
        return None  # the base and drawing models are catalogue models, started as such

    async def aclose(self) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {}

    def health(self) -> list[dict[str, object]]:
        return [{"deployment": f"image_generation:{self.name}", "up": True}]

    def check_size(self, size: str | None) -> str:
        if size is None or size == "auto":
            return self.sizes[0]
        if size not in self.sizes:
            raise InvalidRequest(f"size must be one of {', '.join(self.sizes)}.", param="size")
        return size

    async def draw(self, prompt: str, size: str, inputs: list[Picture]) -> tuple[Generated, Drawn]:
        """One image for a prompt, stored; what drawing it cost in tokens comes with it."""
        drawn = await self.backend.draw(prompt, parse_size(size), inputs)
        stored = await self._store.put(drawn.png, content_type="image/png", extension="png")
        return Generated(stored.id, self._store.url(stored.id), drawn.png), drawn

    def _refuse(self, request: ChatCompletionRequest) -> None:
        for param, used in (
            ("tools", bool(request.tools)),
            ("response_format", request.response_format is not None),
            ("n", (request.n or 1) > 1),
            ("logprobs", bool(request.logprobs)),
            ("functions", bool(request.functions)),
            ("audio", request.audio is not None),
        ):
            if used:
                raise NotImplementedFeature(f"'{param}' is not supported by the drawing model.", param=param)

    def _readable(self) -> bool:
        """Whether the base model gets the input images (inlined, or described), not just a mention."""
        return self._base_vision or self._preparer.analyser is not None

    async def _plan_request(
        self, request: ChatCompletionRequest, pictures: list[Picture]
    ) -> ChatCompletionRequest:
        """The conversation, its images made readable for the base model, asking for the plan."""
        if self._readable():
            request = await self._preparer.prepare(request, native=self._base_vision, pictures=pictures)
        elif has_images(request):
            request = without_images(request, "[an input image]")
        return self._planning(request)

    def _planning(self, request: ChatCompletionRequest) -> ChatCompletionRequest:
        system = SystemMessage(role="system", content=INSTRUCTIONS.format(sizes=", ".join(self.sizes)))
        return ChatCompletionRequest(
            model=request.model,
            messages=[system, *request.messages],
            response_format=plan_format(self.sizes),
            max_tokens=PLAN_TOKENS,
            temperature=0.3,
            frequency_penalty=0.5,  # small models otherwise loop on a phrase until the length cap
            user=request.user,
        )

    def prepare(self, request: ChatCompletionRequest) -> Plan:
        self._refuse(request)
        parts = self._preparer.check(request, native=True)
        if self._base_vision:
            planning = self._base.prepare(self._planning(request)).bound
        else:  # each image in the plan request as a description (or a mention), bounded per part
            text = self._base.prepare(self._planning(without_images(request, "[an input image]"))).bound
            planning = text + Bound(len(parts) * IMAGE_PART_TOKENS if self._readable() else 0, 0)
        drawing = Bound(*self.backend.token_budget(), self.image_price)
        return Plan(request, planning + drawing)

    async def run(self, plan: Plan) -> AsyncGenerator[ProviderEvent, None]:
        request = plan.request
        inputs = await self._preparer.load_all(request)
        planning = await self._plan_request(request, inputs)
        events = self._base.run(self._base.prepare(planning))
        steps: list[ProviderEvent] = []
        try:
            async for event in events:
                if isinstance(event, Accepted) and not steps:
                    yield event  # the base model took the plan step
                steps.append(event)
        finally:
            await events.aclose()
        plan_result = await collect(replay(steps))
        prompt_tokens = plan_result.prompt_tokens
        text = plan_result.choices[0].text if plan_result.choices else ""
        fallback = text_of(request.messages[-1]) or "a picture"
        prompt, size, caption = parse_plan(text, self.sizes, fallback)
        block = json.dumps({"prompt": prompt, "size": size}, ensure_ascii=False, indent=2)
        yield TextDelta(f"```json\n{block}\n```\n\n", tokens=plan_result.completion_tokens)
        picture, drawn = await self.draw(prompt, size, inputs)
        yield TextDelta(
            f"![{picture.file_id}]({picture.url})\n\n[Download⏬]({picture.url}?download=1)\n\n{caption}",
            tokens=drawn.completion_tokens,
        )
        prompt_tokens += drawn.prompt_tokens
        completion_tokens = plan_result.completion_tokens + drawn.completion_tokens
        yield Finished("stop", prompt_tokens, completion_tokens)
        yield UsageReport(prompt_tokens, completion_tokens, extra_cost=self.image_price)
