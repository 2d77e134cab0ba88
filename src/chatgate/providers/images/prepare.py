"""Image parts made ready for the model that will read them.

A model that sees images (``vision: true``) gets each one checked, normalised and inlined as a data
URL, so an upstream never fetches a user's URL itself. A text-only model gets a written description
of each image in its place (at most DESCRIPTION_BYTES), or a 400 when image analysis is turned off.
All of it is heavy work, done after the request's credits are reserved (see ImageInput), under the
host's heavy-work bound and the request's byte and pixel budget.
"""

import base64
from typing import Literal

from chatgate.errors import InvalidImage, NotImplementedFeature
from chatgate.protocol.messages import FileURLPart, ImagePart, ImageURL, TextPart, UserMessage
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.heavy import HeavyWork
from chatgate.providers.images.analysis import ImageAnalyser
from chatgate.providers.images.decode import Picture, decode, dimensions
from chatgate.providers.images.source import ImageSource

MAX_SIDE = {"low": 512, "high": 2048, "auto": 2048}
MAX_IMAGES = 16
# The most bytes of text an image's description may take: with the text's other bytes, what an
# image part is reserved at (upstream.IMAGE_PART_TOKENS, a token being at least a byte) covers it.
DESCRIPTION_BYTES = 2400


def has_images(request: ChatCompletionRequest) -> bool:
    return any(
        isinstance(message, UserMessage)
        and not isinstance(message.content, str)
        and any(isinstance(part, ImagePart | FileURLPart) for part in message.content)
        for message in request.messages
    )


Detail = Literal["auto", "low", "high"]
ImageParts = list[tuple[ImagePart | FileURLPart, str]]


def _url_and_detail(part: ImagePart | FileURLPart) -> tuple[str, Detail]:
    if isinstance(part, ImagePart):
        return part.image_url.url, part.image_url.detail
    return part.file_url.url, "auto"


def image_parts(request: ChatCompletionRequest) -> ImageParts:
    """Every image part of the request, in order, with where it is (``messages[1].content[2]``)."""
    return [
        (part, f"messages[{m}].content[{p}]")
        for m, message in enumerate(request.messages)
        if isinstance(message, UserMessage) and not isinstance(message.content, str)
        for p, part in enumerate(message.content)
        if isinstance(part, ImagePart | FileURLPart)
    ]


def without_images(request: ChatCompletionRequest, text: str = "") -> ChatCompletionRequest:
    """The request with each image part replaced by a text part (``text``)."""
    if not has_images(request):
        return request
    messages = []
    for message in request.messages:
        if isinstance(message, UserMessage) and not isinstance(message.content, str):
            parts = [
                TextPart(type="text", text=text) if isinstance(p, ImagePart | FileURLPart) else p
                for p in message.content
            ]
            message = message.model_copy(update={"content": parts})
        messages.append(message)
    return request.model_copy(update={"messages": messages})


def shortened(description: str, limit: int = DESCRIPTION_BYTES) -> str:
    """A description cut to ``limit`` bytes at a line's end, its last line kept (the image's end)."""
    if len(description.encode()) <= limit:
        return description
    lines = description.splitlines()
    last, note = lines[-1], "(the rest of this description was left out)"
    room = limit - len(last.encode()) - len(note.encode()) - 2
    kept: list[str] = []
    for line in lines[:-1]:
        room -= len(line.encode()) + 1
        if room < 0:
            break
        kept.append(line)
    return "\n".join([*kept, note, last])


class ImagePreparer:
    def __init__(
        self, source: ImageSource, analyser: ImageAnalyser | None, heavy: HeavyWork | None = None
    ) -> None:
        self.source = source
        self.analyser = analyser  # None: image analysis is turned off
        self.heavy = heavy or HeavyWork(None, slots=2)

    def check(self, request: ChatCompletionRequest, *, native: bool) -> ImageParts:
        """What can be said of a request's images without reading them: how many, and whether this
        model can take them at all. Its image parts."""
        parts = image_parts(request)
        if len(parts) > MAX_IMAGES:
            raise NotImplementedFeature(f"At most {MAX_IMAGES} images per request.", param="messages")
        if parts and not native and self.analyser is None:
            raise NotImplementedFeature(
                "This model does not accept images (image analysis is turned off on this server).",
                param="messages",
            )
        return parts

    async def load_all(self, request: ChatCompletionRequest) -> list[Picture]:
        """Every image in the request, in order, each checked (a bad one is a 400 naming where it is).

        One at a time, within the request's budget of bytes and of pixels (as each header declares
        them, before anything is decoded); decoding takes one of the host's heavy-work slots.
        """
        limits = self.source.limits
        pictures = []
        spent_bytes = spent_pixels = 0
        for part, param in self.check(request, native=True):
            url, detail = _url_and_detail(part)
            room = limits.request_bytes - spent_bytes
            if room <= 0:
                raise InvalidImage(
                    f"The request's images come to more than {limits.request_bytes} bytes.", param=param
                )
            data = await self.source.read(url, param=param, max_bytes=room)
            spent_bytes += len(data)
            width, height = dimensions(data, param=param)
            if width * height > limits.max_pixels:
                raise InvalidImage(
                    f"The image is {width}x{height} pixels; at most {limits.max_pixels} pixels are accepted.",
                    param=param,
                )
            spent_pixels += width * height
            if spent_pixels > limits.request_pixels:
                raise InvalidImage(
                    f"The request's images come to more than {limits.request_pixels} pixels "
                    f"(this one is {width}x{height}).",
                    param=param,
                )
            pictures.append(
                await self.heavy.run(
                    decode, data, max_pixels=limits.max_pixels, max_side=MAX_SIDE[detail], param=param
                )
            )
        return pictures

    async def prepare(
        self, request: ChatCompletionRequest, *, native: bool, pictures: list[Picture] | None = None
    ) -> ChatCompletionRequest:
        """The request with its images inlined (native) or described in text; unchanged if it has none.

        ``pictures`` are the request's images already loaded (by ``load_all``), if they are.
        """
        if not has_images(request):
            return request
        self.check(request, native=native)
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
                    png = await self.heavy.run(picture.png)
                    url = "data:image/png;base64," + base64.b64encode(png).decode()
                    parts.append(
                        ImagePart(
                            type="image_url", image_url=ImageURL(url=url, detail=_url_and_detail(part)[1])
                        )
                    )
                else:
                    assert analyser is not None
                    text = await self.heavy.run(analyser.describe, picture, number)
                    parts.append(TextPart(type="text", text=shortened(text)))
            messages.append(message.model_copy(update={"content": parts}))
        return request.model_copy(update={"messages": messages})
