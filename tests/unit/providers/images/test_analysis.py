"""Image analysis reads text with its position, names colours and finds shapes, offline."""

from PIL import Image, ImageDraw, ImageFont

from chatgate.providers.images.analysis import ImageAnalyser, colour_name, region
from chatgate.providers.images.decode import Picture


def test_text_colours_and_shapes_are_described() -> None:
    image = Image.new("RGB", (640, 360), "white")
    draw = ImageDraw.Draw(image)
    draw.text((40, 40), "HELLO 42", fill="black", font=ImageFont.load_default(size=56))
    draw.ellipse((420, 180, 560, 320), fill=(220, 30, 30))
    draw.rectangle((60, 220, 300, 320), fill=(30, 80, 220))
    text = ImageAnalyser().describe(Picture(image, "png", image.size), 1)
    assert text.startswith("[Image 1: 640x360 PNG]")
    assert '"HELLO 42" (top-left' in text
    assert "white" in text and "red circle (bottom-right" in text and "blue rectangle (bottom-left" in text


def test_a_blank_image_says_it_has_no_text() -> None:
    image = Image.new("RGB", (100, 100), "white")
    text = ImageAnalyser().describe(Picture(image, "jpeg", (100, 100)), 2)
    assert "No text was found" in text
    assert "Shapes" not in text


def test_colour_names_and_regions() -> None:
    assert colour_name((250, 10, 10)) == "red"
    assert colour_name((5, 5, 5)) == "black"
    assert region(50, 50, 100, 100) == "centre"
    assert region(5, 95, 100, 100) == "bottom-left"
