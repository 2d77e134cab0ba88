"""Image analysis for models that cannot see: what text an image holds and where, its colours and shapes.

Runs offline on the CPU: OCR with RapidOCR's ONNX models (shipped in its wheel), colours with
Pillow, shapes with OpenCV contours. It describes; it does not recognise objects or scenes.
NumPy, OpenCV and RapidOCR are imported on first use, on the analysing thread: together they are
about 90 MiB of a gateway process that may never see an image.
"""

import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image

from chatgate.providers.images.decode import Picture

# Named colours a description can use, and their RGB values.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "light grey": (200, 200, 200),
    "dark grey": (64, 64, 64),
    "red": (220, 30, 30),
    "dark red": (128, 0, 0),
    "orange": (255, 140, 0),
    "yellow": (250, 220, 30),
    "green": (40, 170, 60),
    "dark green": (0, 90, 30),
    "light green": (150, 230, 140),
    "blue": (30, 80, 220),
    "navy": (0, 0, 110),
    "light blue": (140, 190, 250),
    "cyan": (0, 200, 220),
    "purple": (130, 40, 170),
    "pink": (250, 150, 190),
    "magenta": (230, 0, 200),
    "brown": (130, 80, 30),
    "beige": (230, 215, 180),
}


def colour_name(rgb: tuple[int, int, int]) -> str:
    r, g, b = rgb
    return min(
        COLOURS, key=lambda n: (COLOURS[n][0] - r) ** 2 + (COLOURS[n][1] - g) ** 2 + (COLOURS[n][2] - b) ** 2
    )


def region(cx: float, cy: float, width: int, height: int) -> str:
    """Where a point lies, in words: top-left ... bottom-right, or centre."""
    col = ("left", "centre", "right")[min(2, int(3 * cx / max(width, 1)))]
    row = ("top", "middle", "bottom")[min(2, int(3 * cy / max(height, 1)))]
    if row == "middle" and col == "centre":
        return "centre"
    return f"{row}-{col}" if col != "centre" else f"{row}-centre"


@dataclass(frozen=True)
class TextLine:
    text: str
    confidence: float
    box: tuple[int, int, int, int]  # left, top, right, bottom


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    where: str
    area: float  # share of the image


class OCR:
    """RapidOCR, loaded on first use (0.2 s) and shared; its ONNX sessions are not re-entrant."""

    def __init__(self, threads: int = 1) -> None:
        self._threads = threads
        self._engine: Any = None
        self._lock = threading.Lock()

    def read(self, image: Image.Image) -> list[TextLine]:
        with self._lock:
            if self._engine is None:
                from rapidocr_onnxruntime import RapidOCR

                self._engine = RapidOCR(intra_op_num_threads=self._threads, inter_op_num_threads=1)
            import numpy as np

            result, _ = self._engine(np.asarray(image))
        lines = []
        for box, text, score in result or []:
            xs = [int(p[0]) for p in box]
            ys = [int(p[1]) for p in box]
            lines.append(TextLine(str(text), float(score), (min(xs), min(ys), max(xs), max(ys))))
        lines.sort(key=lambda line: (line.box[1] // 10, line.box[0]))  # reading order
        return lines


def dominant_colours(image: Image.Image, count: int = 4) -> list[tuple[str, float]]:
    """The main colours by share of the image, merged by name, largest first."""
    small = image.copy()
    small.thumbnail((96, 96))
    quantised = small.quantize(colors=count * 2, method=Image.Quantize.MEDIANCUT)
    palette = quantised.getpalette() or []
    total = small.width * small.height
    shares: dict[str, float] = {}
    for pixels, index in quantised.getcolors() or []:
        assert isinstance(index, int)  # a palette image's colours are palette indexes
        rgb = (palette[3 * index], palette[3 * index + 1], palette[3 * index + 2])
        name = colour_name(rgb)
        shares[name] = shares.get(name, 0.0) + pixels / total
    ranked = sorted(shares.items(), key=lambda item: -item[1])
    return [(name, share) for name, share in ranked[:count] if share >= 0.02]


def shapes(image: Image.Image, text_boxes: list[tuple[int, int, int, int]], limit: int = 8) -> list[Shape]:
    """Filled shapes that stand out from the background, leaving out what OCR read as text."""
    import cv2
    import numpy as np

    rgb = np.asarray(image)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    # The background is the colour along the border; shapes are what differs from it.
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int32)
    background = np.median(border, axis=0)
    distance = np.abs(rgb.astype(np.int32) - background).sum(axis=2)
    mask = (distance > 60).astype(np.uint8) * 255
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    height, width = grey.shape
    found: list[Shape] = []
    for contour in sorted(contours, key=cv2.contourArea, reverse=True):
        area = cv2.contourArea(contour)
        if area < 0.01 * width * height:
            break
        x, y, w, h = cv2.boundingRect(contour)
        if any(_inside((x, y, x + w, y + h), box) for box in text_boxes):
            continue
        found.append(
            Shape(
                kind=_kind(contour, area, w, h),
                colour=colour_name(_mean_colour(rgb, contour)),
                where=region(x + w / 2, y + h / 2, width, height),
                area=area / (width * height),
            )
        )
        if len(found) == limit:
            break
    return found


def _inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int], slack: int = 6) -> bool:
    return (
        inner[0] >= outer[0] - slack
        and inner[1] >= outer[1] - slack
        and inner[2] <= outer[2] + slack
        and inner[3] <= outer[3] + slack
    )


def _kind(contour: Any, area: float, w: int, h: int) -> str:
    import cv2
    import numpy as np

    perimeter = cv2.arcLength(contour, True)
    corners = len(cv2.approxPolyDP(contour, 0.03 * perimeter, True))
    roundness = 4 * np.pi * area / (perimeter * perimeter) if perimeter else 0.0
    if corners == 3:
        return "triangle"
    if corners == 4:
        return "square" if 0.9 <= w / max(h, 1) <= 1.1 else "rectangle"
    if roundness > 0.8:
        return "circle" if 0.9 <= w / max(h, 1) <= 1.1 else "ellipse"
    return "polygon" if corners <= 8 else "irregular shape"


def _mean_colour(rgb: Any, contour: Any) -> tuple[int, int, int]:
    import cv2
    import numpy as np

    mask = np.zeros(rgb.shape[:2], dtype=np.uint8)
    cv2.drawContours(mask, [contour], -1, 255, thickness=-1)
    r, g, b = (int(v) for v in cv2.mean(rgb, mask=mask)[:3])
    return r, g, b


class ImageAnalyser:
    """Writes what an image shows as text a language model can read."""

    def __init__(self, ocr: OCR | None = None) -> None:
        self._ocr = ocr or OCR()

    def describe(self, picture: Picture, number: int) -> str:
        image = picture.image
        width, height = picture.original_size
        lines = self._ocr.read(image)
        out = [f"[Image {number}: {width}x{height} {picture.format.upper()}]"]
        if lines:
            out.append("Text in the image (read by OCR), in reading order:")
            for line in lines:
                cx, cy = (line.box[0] + line.box[2]) / 2, (line.box[1] + line.box[3]) / 2
                where = region(cx, cy, image.width, image.height)
                out.append(f'- "{line.text}" ({where}, confidence {line.confidence:.2f})')
        else:
            out.append("No text was found in the image.")
        colours = dominant_colours(image)
        if colours:
            out.append("Main colours: " + ", ".join(f"{name} {share:.0%}" for name, share in colours) + ".")
        found = shapes(image, [line.box for line in lines])
        if found:
            parts = [f"{s.colour} {s.kind} ({s.where}, {s.area:.0%} of the image)" for s in found]
            out.append("Shapes: " + "; ".join(parts) + ".")
        out.append(f"[End of image {number}]")
        return "\n".join(out)
