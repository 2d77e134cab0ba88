"""Drawing with a language model: it writes SVG shapes as JSON held to a schema; they become an SVG, then a PNG.

The schema admits only the SVG primitives below, named colours and coordinates on a 256x256
canvas, so whatever the model writes is a valid drawing. ``resvg`` renders the SVG.
"""

import json
from typing import Any
from xml.sax.saxutils import quoteattr

import resvg_py

CANVAS = 256
PALETTE = [
    "black", "white", "gray", "silver", "red", "darkred", "orange", "gold", "yellow", "green",
    "darkgreen", "lime", "teal", "cyan", "skyblue", "blue", "navy", "purple", "magenta", "pink",
    "brown", "tan", "beige",
]  # fmt: skip

_COORD = {"type": "integer", "minimum": 0, "maximum": CANVAS}
_LENGTH = {"type": "integer", "minimum": 1, "maximum": CANVAS}
_COLOUR = {"type": "string", "enum": PALETTE}


def _shape(tag: str, **fields: dict[str, Any]) -> dict[str, Any]:
    properties = {"tag": {"type": "string", "enum": [tag]}, **fields}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


SHAPES = [
    _shape("rect", x=_COORD, y=_COORD, width=_LENGTH, height=_LENGTH, fill=_COLOUR),
    _shape("circle", cx=_COORD, cy=_COORD, r=_LENGTH, fill=_COLOUR),
    _shape("ellipse", cx=_COORD, cy=_COORD, rx=_LENGTH, ry=_LENGTH, fill=_COLOUR),
    _shape("line", x1=_COORD, y1=_COORD, x2=_COORD, y2=_COORD, stroke=_COLOUR),
    _shape(
        "polygon",
        points={
            "type": "array",
            "items": {"type": "array", "items": _COORD, "minItems": 2, "maxItems": 2},
            "minItems": 3,
            "maxItems": 6,
        },
        fill=_COLOUR,
    ),
]


def schema(max_shapes: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "background": _COLOUR,
            "shapes": {"type": "array", "items": {"anyOf": SHAPES}, "minItems": 1, "maxItems": max_shapes},
        },
        "required": ["background", "shapes"],
        "additionalProperties": False,
    }


# Two worked examples, given as earlier turns: small models draw far better with some in front of them.
EXAMPLES: list[tuple[str, dict[str, Any]]] = [
    (
        "a red car on a road",
        {
            "background": "skyblue",
            "shapes": [
                {"tag": "rect", "x": 0, "y": 180, "width": 256, "height": 76, "fill": "gray"},
                {"tag": "rect", "x": 50, "y": 120, "width": 156, "height": 45, "fill": "red"},
                {"tag": "polygon", "points": [[80, 120], [100, 90], [160, 90], [180, 120]], "fill": "red"},
                {"tag": "circle", "cx": 90, "cy": 168, "r": 18, "fill": "black"},
                {"tag": "circle", "cx": 170, "cy": 168, "r": 18, "fill": "black"},
            ],
        },
    ),
    (
        "a snowman at night",
        {
            "background": "navy",
            "shapes": [
                {"tag": "rect", "x": 0, "y": 200, "width": 256, "height": 56, "fill": "white"},
                {"tag": "circle", "cx": 128, "cy": 170, "r": 45, "fill": "white"},
                {"tag": "circle", "cx": 128, "cy": 95, "r": 30, "fill": "white"},
                {"tag": "polygon", "points": [[128, 95], [128, 103], [160, 100]], "fill": "orange"},
                {"tag": "rect", "x": 105, "y": 45, "width": 46, "height": 25, "fill": "black"},
            ],
        },
    ),
]
INSTRUCTIONS = (
    f"You draw simple pictures on a {CANVAS}x{CANVAS} canvas (x to the right, y down) with SVG "
    "shapes: rect, circle, ellipse, line and polygon, each with a named colour. Answer with JSON: "
    '{"background": colour, "shapes": [...]}, shapes listed from back to front. Use the shapes to '
    "depict the subject as recognisably as you can, large and centred: each part of the subject is "
    "its own shape, in its own colour, where it belongs."
)


def salvage(text: str) -> dict[str, Any]:
    """The drawing in the model's JSON, even when it was cut off mid-shape: keep the complete shapes."""
    try:
        drawing = json.loads(text)
        if isinstance(drawing, dict):
            return drawing
    except ValueError:
        pass
    cut = len(text)
    while (cut := text.rfind("}", 0, cut)) > 0:
        try:
            drawing = json.loads(text[: cut + 1] + "]}")
        except ValueError:
            continue
        if isinstance(drawing, dict):
            return drawing
    return {"background": "white", "shapes": []}


def _attrs(shape: dict[str, Any]) -> str:
    out = []
    for key, value in shape.items():
        if key == "tag":
            continue
        if key == "points" and isinstance(value, list):
            value = " ".join(f"{int(p[0])},{int(p[1])}" for p in value if isinstance(p, list) and len(p) == 2)
        elif key in ("fill", "stroke"):
            value = value if value in PALETTE else "black"
        else:
            value = int(value)
        out.append(f"{key}={quoteattr(str(value))}")
    if shape.get("tag") == "line":
        out.append('stroke-width="4" stroke-linecap="round"')
    return " ".join(out)


def to_svg(drawing: dict[str, Any]) -> str:
    """An SVG document from the drawing; anything outside the schema is left out."""
    background = drawing.get("background") if drawing.get("background") in PALETTE else "white"
    body = [f'<rect x="0" y="0" width="{CANVAS}" height="{CANVAS}" fill="{background}"/>']
    tags = {s["properties"]["tag"]["enum"][0]: s for s in SHAPES}
    for shape in drawing.get("shapes") or []:
        if not isinstance(shape, dict) or shape.get("tag") not in tags:
            continue
        if set(shape) != set(tags[shape["tag"]]["properties"]):
            continue
        try:
            body.append(f"<{shape['tag']} {_attrs(shape)}/>")
        except (TypeError, ValueError, IndexError):
            continue
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CANVAS}" height="{CANVAS}" '
        f'viewBox="0 0 {CANVAS} {CANVAS}">' + "".join(body) + "</svg>"
    )


def render(svg: str, width: int, height: int) -> bytes:
    """The SVG as a PNG of exactly ``width`` x ``height`` (the square canvas is fitted and centred)."""
    side = min(width, height)
    offset_x, offset_y = (width - side) / 2, (height - side) / 2
    framed = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<svg x="{offset_x}" y="{offset_y}" width="{side}" height="{side}" '
        f'viewBox="0 0 {CANVAS} {CANVAS}">{svg}</svg></svg>'
    )
    return bytes(resvg_py.svg_to_bytes(svg_string=framed, skip_system_fonts=True, background="white"))
