"""Image bytes to a checked, normalised picture: the type sniffed from the bytes, bombs refused."""

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from chatgate.errors import InvalidImage

# What the first bytes of each accepted format look like; headers and file names are never trusted.
_SIGNATURES: list[tuple[bytes, int, str]] = [
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"WEBP", 8, "webp"),  # after "RIFF" and a length
]
MIME = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}


def sniff(data: bytes) -> str | None:
    """The image format the bytes begin with, or None."""
    for magic, offset, name in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "webp" or data[:4] == b"RIFF"):
            return name
    return None


@dataclass(frozen=True)
class Picture:
    """A decoded image in RGB, oriented upright and scaled to fit ``max_side``."""

    image: Image.Image
    format: str  # as sniffed: png, jpeg, gif or webp
    original_size: tuple[int, int]

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    def png(self) -> bytes:
        out = io.BytesIO()
        self.image.save(out, format="PNG")
        return out.getvalue()


def _kind(data: bytes, param: str) -> str:
    kind = sniff(data)
    if kind is None:
        raise InvalidImage(
            "The image is not a PNG, JPEG, GIF or WebP file (judged by its content).", param=param
        )
    return kind


def dimensions(data: bytes, *, param: str = "messages") -> tuple[int, int]:
    """Width and height as the image's header declares them, read without decoding a pixel."""
    kind = _kind(data, param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # judged by the caller
            with Image.open(io.BytesIO(data), formats=[kind.upper()]) as opened:
                return opened.size
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"The image is too large to decode: {exc}", param=param) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(
            f"The {kind.upper()} image is damaged and cannot be decoded.", param=param
        ) from exc


def decode(data: bytes, *, max_pixels: int, max_side: int, param: str = "messages") -> Picture:
    """Decode and normalise an image, or raise InvalidImage saying what is wrong with it.

    The pixel count is checked from the header before anything is decompressed, so a small file
    that inflates to a huge image (a decompression bomb) costs nothing; so is a PNG text chunk
    that would inflate past Pillow's limit.
    """
    kind = _kind(data, param)
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than fails) between max_pixels and twice that: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind.upper()]) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise InvalidImage(
                        f"The image is {width}x{height} pixels; at most {max_pixels} pixels are accepted.",
                        param=param,
                    )
                opened.seek(0)  # the first frame of an animation
                image = ImageOps.exif_transpose(opened)
                image.load()
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"The image is too large to decode: {exc}", param=param) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(
            f"The {kind.upper()} image is damaged and cannot be decoded.", param=param
        ) from exc
    image = _flatten(image)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return Picture(image, kind, (width, height))


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency laid over white (how a viewer would show it)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
