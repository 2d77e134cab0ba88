"""Image bytes are judged by their content, and anything too big to decode safely is refused."""

import io
import struct
import zlib
from collections.abc import Callable

import pytest
from PIL import Image

from chatgate.errors import InvalidImage
from chatgate.providers.images.decode import decode, dimensions, sniff


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


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb() -> bytes:
    """A few dozen bytes declaring a 100,000 x 100,000 greyscale PNG."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def gif_bomb() -> bytes:
    """A 1-pixel GIF whose logical screen claims 65,535 x 65,535."""
    data = bytearray(encoded(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 65_535, 65_535)
    return bytes(data)


def webp_bomb() -> bytes:
    """A 1-pixel lossless WebP whose header claims 16,384 x 16,384 (the format's most)."""
    data = bytearray(encode_webp())
    at = data.find(b"VP8L") + 9  # the chunk's size (4 bytes), its signature byte, then the sizes
    bits = int.from_bytes(data[at : at + 4], "little") & ~((1 << 28) - 1)
    data[at : at + 4] = (bits | 16_383 | 16_383 << 14).to_bytes(4, "little")
    return bytes(data)


def encode_webp() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1, 1), "red").save(out, format="WEBP", lossless=True)
    return out.getvalue()


@pytest.mark.parametrize("bomb", [png_bomb, gif_bomb, webp_bomb])
def test_a_decompression_bomb_is_refused_from_its_header_naming_the_part(bomb: Callable[[], bytes]) -> None:
    data = bomb()
    assert len(data) < 1000
    with pytest.raises(InvalidImage, match=r"too large|pixels") as caught:
        dimensions(data, param="messages[0].content[2]")
    assert caught.value.param == "messages[0].content[2]"
    with pytest.raises(InvalidImage) as decoding:
        decode(data, max_pixels=40_000_000, max_side=2048, param="messages[0].content[2]")
    assert decoding.value.param == "messages[0].content[2]"
