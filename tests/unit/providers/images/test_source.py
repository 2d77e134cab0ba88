"""Image URLs: data URLs decoded, chatgate's own files read, web addresses fetched only through the guard.

No test here may leave the machine: the fetcher's connector is wrapped so that any connection
attempt fails the test; refused addresses must never reach it.
"""

import base64
from collections.abc import AsyncIterator

import pytest
from httpcore import AsyncNetworkStream

from chatgate.errors import InvalidImage
from chatgate.providers.images.source import ImageLimits, ImageSource
from chatgate.providers.web.fetch import GuardedFetcher


class NoConnections:
    async def __call__(self, ip: str, port: int, timeout: float | None) -> AsyncNetworkStream:
        pytest.fail(f"tried to connect to {ip}:{port}")


class Files:
    url_prefix = "http://gate.example:8000/files/"

    def __init__(self) -> None:
        self.stored = {"file-" + "a" * 32: b"stored bytes"}

    async def read(self, file_id: str) -> bytes | None:
        return self.stored.get(file_id)


@pytest.fixture
async def source() -> AsyncIterator[ImageSource]:
    fetcher = GuardedFetcher(connector=NoConnections(), timeout=2.0)
    yield ImageSource(fetcher, Files(), limits=ImageLimits(max_bytes=1000))
    await fetcher.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.png",
        "http://192.168.1.1/a.png",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:10.0.0.1]/a.png",
        "http://100.64.0.1/a.png",
        "http://localhost/a.png",
        "http://0.0.0.0/a.png",
    ],
)
async def test_private_and_metadata_addresses_are_refused_without_connecting(
    source: ImageSource, url: str
) -> None:
    with pytest.raises(InvalidImage, match="not allowed") as caught:
        await source.read(url, param="messages[0].content[0]")
    assert caught.value.param == "messages[0].content[0]"


@pytest.mark.parametrize("url", ["ftp://example.org/a.png", "file:///etc/passwd", "javascript:alert(1)"])
async def test_other_schemes_are_refused(source: ImageSource, url: str) -> None:
    with pytest.raises(InvalidImage):
        await source.read(url, param="p")


async def test_data_urls_are_decoded_within_the_size_cap(source: ImageSource) -> None:
    assert (
        await source.read("data:image/png;base64," + base64.b64encode(b"abc").decode(), param="p") == b"abc"
    )
    with pytest.raises(InvalidImage, match="larger than 1000 bytes"):
        await source.read("data:image/png;base64," + base64.b64encode(b"x" * 2000).decode(), param="p")
    with pytest.raises(InvalidImage, match="base64"):
        await source.read("data:image/png;base64,@@@@", param="p")


async def test_own_files_are_read_from_the_store_by_url_or_path(source: ImageSource) -> None:
    file_id = "file-" + "a" * 32
    assert await source.read(f"http://gate.example:8000/files/{file_id}", param="p") == b"stored bytes"
    assert await source.read(f"/files/{file_id}?download=1", param="p") == b"stored bytes"
    with pytest.raises(InvalidImage, match="expired"):
        await source.read("http://gate.example:8000/files/file-" + "b" * 32, param="p")
