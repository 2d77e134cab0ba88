"""What a model gets for the images in a request: data URLs (vision models), text, or a clear 400."""

import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from chatgate.errors import InvalidImage, NotImplementedFeature
from chatgate.protocol.messages import ImagePart, TextPart, UserMessage
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import Accepted, Bound
from chatgate.providers.heavy import HeavyWork
from chatgate.providers.images.analysis import ImageAnalyser
from chatgate.providers.images.input import ImageInput
from chatgate.providers.images.prepare import ImagePreparer
from chatgate.providers.images.source import ImageLimits, ImageSource
from chatgate.providers.upstream import IMAGE_PART_TOKENS
from chatgate.providers.web.fetch import GuardedFetcher
from tests.unit.fakes import ScriptedProvider


def request_with_image() -> ChatCompletionRequest:
    out = io.BytesIO()
    Image.new("RGBA", (64, 48), (255, 0, 0, 255)).save(out, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    return ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                    ],
                },
            ],
        }
    )


class NoFiles:
    url_prefix = "http://x/files/"

    async def read(self, file_id: str) -> bytes | None:
        return None


@pytest.fixture
async def source() -> AsyncIterator[ImageSource]:
    fetcher = GuardedFetcher()
    yield ImageSource(fetcher, NoFiles(), limits=ImageLimits())
    await fetcher.aclose()


async def test_text_only_models_get_a_description(source: ImageSource) -> None:
    prepared = await ImagePreparer(source, ImageAnalyser()).prepare(request_with_image(), native=False)
    message = prepared.messages[1]
    assert isinstance(message, UserMessage) and isinstance(message.content, list)
    described = message.content[1]
    assert isinstance(described, TextPart)
    assert described.text.startswith("[Image 1: 64x48 PNG]") and "red" in described.text


async def test_vision_models_get_the_normalised_image_inline(source: ImageSource) -> None:
    prepared = await ImagePreparer(source, None).prepare(request_with_image(), native=True)
    message = prepared.messages[1]
    assert isinstance(message, UserMessage) and isinstance(message.content, list)
    part = message.content[1]
    assert isinstance(part, ImagePart)
    assert part.image_url.url.startswith("data:image/png;base64,") and part.image_url.detail == "low"


async def test_with_analysis_off_a_text_only_model_refuses_images(source: ImageSource) -> None:
    with pytest.raises(NotImplementedFeature) as caught:
        await ImagePreparer(source, None).prepare(request_with_image(), native=False)
    assert caught.value.code == "api_not_implemented"


async def test_a_request_without_images_is_untouched(source: ImageSource) -> None:
    plain = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert await ImagePreparer(source, None).prepare(plain, native=False) is plain


def png(width: int, height: int) -> str:
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def with_images(*urls: str) -> ChatCompletionRequest:
    parts = [{"type": "text", "text": "What are these?"}] + [
        {"type": "image_url", "image_url": {"url": url}} for url in urls
    ]
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": parts}]}
    )


class CountingHeavy(HeavyWork):
    """The heavy-work bound, counting the jobs it ran."""

    def __init__(self) -> None:
        super().__init__(None, slots=1)
        self.jobs = 0

    async def run(self, work: Any, *args: Any, **kwargs: Any) -> Any:
        self.jobs += 1
        return await super().run(work, *args, **kwargs)


async def test_the_requests_pixel_budget_is_judged_from_headers_before_decoding() -> None:
    fetcher = GuardedFetcher()
    source = ImageSource(
        fetcher, NoFiles(), limits=ImageLimits(max_pixels=5_000_000, request_pixels=6_000_000)
    )
    heavy = CountingHeavy()
    request = with_images(png(2000, 2000), png(2000, 2000))  # 4 + 4 million pixels: over 6
    with pytest.raises(InvalidImage, match="more than 6000000 pixels") as caught:
        await ImagePreparer(source, ImageAnalyser(), heavy).load_all(request)
    await fetcher.aclose()
    assert caught.value.param == "messages[0].content[2]"  # the image that went over
    assert heavy.jobs == 1  # the first image was decoded; the second never was


async def test_the_requests_byte_budget_caps_every_image_together() -> None:
    fetcher = GuardedFetcher()
    first, second = png(300, 300), png(301, 301)
    budget = len(base64.b64decode(first.split(",")[1])) + 10
    source = ImageSource(fetcher, NoFiles(), limits=ImageLimits(request_bytes=budget))
    with pytest.raises(InvalidImage, match="larger than") as caught:
        await ImagePreparer(source, None).load_all(with_images(first, second))
    await fetcher.aclose()
    assert caught.value.param == "messages[0].content[2]"


class Unreadable:
    """An image source that fails the test if anything is read from it."""

    limits = ImageLimits()

    async def read(self, url: str, *, param: str, max_bytes: int | None = None) -> bytes:
        pytest.fail(f"{param} was read while planning")


async def test_planning_a_request_with_images_reads_none_of_them() -> None:
    inner = ScriptedProvider([Accepted(10)], Bound(100, 50))
    preparer = ImagePreparer(Unreadable(), ImageAnalyser())  # type: ignore[arg-type]
    plan = ImageInput(inner, preparer, native=False).prepare(
        with_images(png(8, 8), "https://x.example/a.png")
    )
    assert plan.bound == Bound(100 + 2 * IMAGE_PART_TOKENS, 50)  # each image at its most
    native = ImageInput(inner, preparer, native=True).prepare(with_images(png(8, 8)))
    assert native.bound == Bound(100, 50)  # a vision model's provider bounds its image parts itself
    with pytest.raises(NotImplementedFeature):
        ImageInput(inner, ImagePreparer(Unreadable(), None), native=False).prepare(with_images(png(8, 8)))  # type: ignore[arg-type]
