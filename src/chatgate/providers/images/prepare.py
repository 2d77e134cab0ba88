"""Image parts made ready for the model that will read them.

A model that sees images (``vision: true``) gets each one checked, normalised and inlined as a data
URL, so an upstream never fetches a user's URL itself. A text-only model gets a written description
of each image in its place, or a 400 when image analysis is turned off.
"""

import asyncio
import base64
from typing import Literal

import anyio

from chatgate.errors import NotImplementedFeature
from chatgate.protocol.messages import FileURLPart, ImagePart, ImageURL, TextPart, UserMessage
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.images.analysis import ImageAnalyser
from chatgate.providers.images.decode import Picture, decode
from chatgate.providers.images.source import ImageSource

MAX_SIDE = {"low": 512, "high": 2048, "auto": 2048}
MAX_IMAGES = 16


def has_images(request: ChatCompletionRequest) -> bool:
    return any(
        isinstance(message, UserMessage)
        and not isinstance(message.content, str)
        and any(isinstance(part, ImagePart | FileURLPart) for part in message.content)
        for message in request.messages
    )


Detail = Literal["auto", "low", "high"]


def _url_and_detail(part: ImagePart | FileURLPart) -> tuple[str, Detail]:
    if isinstance(part, ImagePart):
        return part.image_url.url, part.image_url.detail
    return part.file_url.url, "auto"


class ImagePreparer:
    def __init__(self, source: ImageSource, analyser: ImageAnalyser | None) -> None:
        self.source = source
        self.analyser = analyser  # None: image analysis is turned off

    async def load(self, part: ImagePart | FileURLPart, param: str) -> Picture:
        url, detail = _url_and_detail(part)
        data = await self.source.read(url, param=param)
        limits = self.source.limits
        return await anyio.to_thread.run_sync(
            lambda: decode(data, max_pixels=limits.max_pixels, max_side=MAX_SIDE[detail], param=param)
        )

    async def load_all(self, request: ChatCompletionRequest) -> list[Picture]:
        """Every image in the request, in order, each checked (a bad one is a 400 naming where it is)."""
        parts = [
            (part, f"messages[{m}].content[{p}]")
            for m, message in enumerate(request.messages)
            if isinstance(message, UserMessage) and not isinstance(message.content, str)
            for p, part in enumerate(message.content)
            if isinstance(part, ImagePart | FileURLPart)
        ]
        if len(parts) > MAX_IMAGES:
            raise NotImplementedFeature(f"At most {MAX_IMAGES} images per request.", param="messages")
        return list(await asyncio.gather(*(self.load(part, param) for part, param in parts)))

    async def prepare(
        self, request: ChatCompletionRequest, *, native: bool, pictures: list[Picture] | None = None
    ) -> ChatCompletionRequest:
        """The request with its images inlined (native) or described in text; unchanged if it has none.

        ``pictures`` are the request's images already loaded (by ``load_all``), if they are.
        """
        if not has_images(request):
            return request
        if not native and self.analyser is None:
            raise NotImplementedFeature(
                "This model does not accept images (image analysis is turned off on this server).",
                param="messages",
            )
        loaded = iter(pictures if pictures is not None else await self.load_all(request))
        analyser = self.analyser
        number = 0
        messages = []
        for message in request.messages:
            if not isinstance(message, UserMessage) or isinstance(message.content, str):
                messages.append(message)
                continue
            parts: list[TextPart | ImagePart | FileURLPart] = []
            for part in message.content:
                if not isinstance(part, ImagePart | FileURLPart):
                    parts.append(part)  # type: ignore[arg-type]  # audio and files are the engine's to refuse
                    continue
                picture = next(loaded)
                number += 1
                if native:
                    url = "data:image/png;base64," + base64.b64encode(picture.png()).decode()
                    parts.append(
                        ImagePart(
                            type="image_url", image_url=ImageURL(url=url, detail=_url_and_detail(part)[1])
                        )
                    )
                else:
                    assert analyser is not None
                    text = await anyio.to_thread.run_sync(analyser.describe, picture, number)
                    parts.append(TextPart(type="text", text=text))
            messages.append(message.model_copy(update={"content": parts}))
        return request.model_copy(update={"messages": messages})
