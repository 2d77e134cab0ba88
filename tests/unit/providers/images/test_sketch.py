"""The sketcher's drawing: whatever the model wrote becomes a valid SVG and a PNG of the asked size."""

import io

from PIL import Image

from chatgate.providers.images import sketch
from chatgate.providers.images.backends import parse_plan


def test_a_cut_off_answer_keeps_its_complete_shapes() -> None:
    text = '{"background": "navy", "shapes": [{"tag": "circle", "cx": 10, "cy": 20, "r": 5, "fill": "red"}, {"tag": "re'
    assert sketch.salvage(text) == {
        "background": "navy",
        "shapes": [{"tag": "circle", "cx": 10, "cy": 20, "r": 5, "fill": "red"}],
    }
    assert sketch.salvage("not json") == {"background": "white", "shapes": []}


def test_only_the_schema_s_shapes_reach_the_svg() -> None:
    svg = sketch.to_svg(
        {
            "background": "url(javascript:x)",
            "shapes": [
                {"tag": "rect", "x": 0, "y": 0, "width": 10, "height": 10, "fill": "gold"},
                {"tag": "script", "x": 1},
                {"tag": "circle", "cx": 1, "cy": 2, "r": 3, "fill": "red", "onload": "x"},
                {"tag": "polygon", "points": [[1, 2], [3, 4], [5, 6]], "fill": "lime"},
            ],
        }
    )
    assert 'fill="white"' in svg and "javascript" not in svg and "script" not in svg and "onload" not in svg
    assert '<rect x="0" y="0" width="10" height="10" fill="gold"/>' in svg
    assert '<polygon points="1,2 3,4 5,6" fill="lime"/>' in svg


def test_render_gives_a_png_of_the_exact_size() -> None:
    svg = sketch.to_svg(
        {
            "background": "skyblue",
            "shapes": [{"tag": "circle", "cx": 128, "cy": 128, "r": 60, "fill": "yellow"}],
        }
    )
    png = sketch.render(svg, 512, 384)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (512, 384)
        assert image.convert("RGB").getpixel((256, 192)) == (255, 255, 0)


def test_a_plan_falls_back_to_the_user_s_words() -> None:
    sizes = ["256x256", "512x384"]
    assert parse_plan('{"prompt": "a fox", "size": "512x384", "caption": "A fox."}', sizes, "x") == (
        "a fox",
        "512x384",
        "A fox.",
    )
    assert parse_plan("{broken", sizes, "draw a fox") == ("draw a fox", "256x256", "Here is the image.")
    assert parse_plan('{"prompt": "a", "size": "9x9", "caption": ""}', sizes, "x")[1] == "256x256"
    rambling = '{"prompt": "a", "size": "256x256", "caption": "A fox in snow. The fox is a beautiful, serene'
    assert parse_plan(rambling + ' sight."}', sizes, "x")[2] == "A fox in snow."
