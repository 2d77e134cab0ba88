"""What a model gets for the images in a request: data URLs (vision models), text, or a clear 400."""

import base64
import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from chatgate.errors import NotImplementedFeature
from chatgate.protocol.messages import ImagePart, TextPart, UserMessage
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.images.analysis import ImageAnalyser
from chatgate.providers.images.prepare import ImagePreparer
from chatgate.providers.images.source import ImageLimits, ImageSource
from chatgate.providers.web.fetch import GuardedFetcher


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
