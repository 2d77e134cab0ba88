"""Image bytes are judged by their content, and anything too big to decode safely is refused."""

import io

import pytest
from PIL import Image

from chatgate.errors import InvalidImage
from chatgate.providers.images.decode import decode, sniff


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_each_accepted_format_is_recognised_from_its_bytes(fmt: str) -> None:
    data = encoded(Image.new("RGB", (40, 30), "red"), fmt)
    assert sniff(data) == fmt.lower()
    picture = decode(data, max_pixels=10_000, max_side=100)
    assert (picture.width, picture.height) == (40, 30)
    assert picture.image.mode == "RGB"


def test_other_files_are_refused_whatever_they_claim() -> None:
    bmp = encoded(Image.new("RGB", (4, 4)), "BMP")
    for data in (b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"%PDF-1.7", bmp):
        with pytest.raises(InvalidImage, match="not a PNG"):
            decode(data, max_pixels=10_000, max_side=100, param="p")


def test_too_many_pixels_is_refused_before_decoding() -> None:
    data = encoded(Image.new("1", (5_000, 5_000)), "PNG")
    with pytest.raises(InvalidImage, match="5000x5000") as caught:
        decode(data, max_pixels=1_000_000, max_side=100, param="messages[0].content[1]")
    assert caught.value.param == "messages[0].content[1]"


def test_a_truncated_image_is_damaged() -> None:
    data = encoded(Image.new("RGB", (300, 300), "blue"), "PNG")
    with pytest.raises(InvalidImage, match="damaged"):
        decode(data[: len(data) // 2], max_pixels=1_000_000, max_side=1000)


def test_transparency_is_laid_over_white_and_big_images_are_scaled_down() -> None:
    data = encoded(Image.new("RGBA", (2000, 1000), (0, 0, 0, 0)), "PNG")
    picture = decode(data, max_pixels=10_000_000, max_side=512)
    assert picture.image.size == (512, 256)
    assert picture.original_size == (2000, 1000)
    assert picture.image.getpixel((10, 10)) == (255, 255, 255)
