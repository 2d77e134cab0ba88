"""Image backends: the offline sketcher (a catalogue model drawing SVG) and OpenAI-compatible images APIs."""

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx
from PIL import Image

from chatgate.config import ImagesAPIBackend
from chatgate.errors import InvalidImage, UpstreamFailed, UpstreamTimeout
from chatgate.protocol.messages import AssistantMessage, SystemMessage, UserMessage
from chatgate.protocol.requests import ChatCompletionRequest, JsonSchemaFormat, JsonSchemaResponseFormat
from chatgate.providers.base import AnyProvider, generate
from chatgate.providers.heavy import HeavyWork
from chatgate.providers.images import sketch
from chatgate.providers.images.decode import Picture, decode
from chatgate.providers.upstream import upstream_error
from chatgate.providers.web.fetch import FetchError, GuardedFetcher

MAX_RESULT_BYTES = 50_000_000  # a generated image downloaded from the backend's URL


@dataclass(frozen=True)
class Drawn:
    png: bytes
    width: int
    height: int
    prompt_tokens: int = 0  # tokens a language model spent drawing it (the sketcher)
    completion_tokens: int = 0


class ImageBackend(Protocol):
    def token_budget(self) -> tuple[int, int]:
        """The most prompt and completion tokens one drawing may spend (for reserving credits)."""
        ...

    async def draw(self, prompt: str, size: tuple[int, int], inputs: list[Picture]) -> Drawn: ...


def as_png(picture: Picture, size: tuple[int, int]) -> bytes:
    """A PNG of exactly ``size``, scaling the picture if the backend made another size."""
    image = picture.image
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class SketchBackend:
    """Draws offline: a catalogue model writes the shapes, resvg renders them."""

    def __init__(self, model: AnyProvider, *, max_shapes: int) -> None:
        self._model = model
        self._max_shapes = max_shapes
        self._max_tokens = 48 * max_shapes + 32
        self._schema = sketch.schema(max_shapes)

    def token_budget(self) -> tuple[int, int]:
        return 600, self._max_tokens

    async def draw(self, prompt: str, size: tuple[int, int], inputs: list[Picture]) -> Drawn:
        request = ChatCompletionRequest(
            model="sketch",
            messages=[
                SystemMessage(role="system", content=sketch.INSTRUCTIONS),
                *_examples(),
                UserMessage(role="user", content=f"Draw: {prompt}"),
            ],
            response_format=JsonSchemaResponseFormat(
                type="json_schema",
                json_schema=JsonSchemaFormat(name="drawing", schema_=self._schema, strict=True),
            ),
            max_tokens=self._max_tokens,
            temperature=0.6,
        )
        result = await generate(self._model, request)
        text = result.choices[0].text if result.choices else ""
        svg = sketch.to_svg(sketch.salvage(text))
        png = await anyio.to_thread.run_sync(sketch.render, svg, *size)
        return Drawn(png, size[0], size[1], result.prompt_tokens, result.completion_tokens)


def _examples() -> list[UserMessage | AssistantMessage]:
    turns: list[UserMessage | AssistantMessage] = []
    for subject, drawing in sketch.EXAMPLES:
        turns.append(UserMessage(role="user", content=f"Draw: {subject}"))
        turns.append(AssistantMessage(role="assistant", content=json.dumps(drawing)))
    return turns


class ImagesAPI:
    """``POST /images/generations`` (or ``/images/edits`` with input images) on an OpenAI-compatible server."""

    def __init__(
        self,
        config: ImagesAPIBackend,
        http: httpx.AsyncClient,
        fetcher: GuardedFetcher,
        heavy: HeavyWork | None = None,
    ) -> None:
        self._heavy = heavy or HeavyWork(None, slots=1)
        self._config = config
        self._http = http
        self._fetcher = fetcher
        self._base = config.base_url.rstrip("/")

    def token_budget(self) -> tuple[int, int]:
        return 0, 0

    def _headers(self) -> dict[str, str]:
        headers = dict(self._config.headers)
        key = self._config.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    async def draw(self, prompt: str, size: tuple[int, int], inputs: list[Picture]) -> Drawn:
        size_text = f"{size[0]}x{size[1]}"
        timeout = httpx.Timeout(self._config.timeout, connect=10.0)
        try:
            if inputs:
                files = [("image[]", (f"input{i}.png", p.png(), "image/png")) for i, p in enumerate(inputs)]
                fields = {"model": self._config.model, "prompt": prompt, "size": size_text, "n": "1"}
                response = await self._http.post(
                    f"{self._base}/images/edits",
                    data=fields,
                    files=files,
                    headers=self._headers(),
                    timeout=timeout,
                )
            else:
                body: dict[str, Any] = {
                    "model": self._config.model,
                    "prompt": prompt,
                    "size": size_text,
                    "n": 1,
                }
                if self._config.model.startswith("dall-e"):
                    body["response_format"] = "b64_json"
                response = await self._http.post(
                    f"{self._base}/images/generations", json=body, headers=self._headers(), timeout=timeout
                )
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("The image backend did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"The image backend could not be reached: {type(exc).__name__}.") from exc
        if response.status_code >= 400:
            retry_after = response.headers.get("retry-after")
            raise upstream_error(response.status_code, response.content, retry_after, who="The image backend")
        data = await self._image_bytes(response)
        try:
            picture = await self._heavy.run(decode, data, max_pixels=64_000_000, max_side=8192, param="image")
        except InvalidImage as exc:
            raise UpstreamFailed(f"The image backend sent an unusable image: {exc.message}") from exc
        png = await self._heavy.run(as_png, picture, size)
        return Drawn(png, size[0], size[1])

    async def _image_bytes(self, response: httpx.Response) -> bytes:
        try:
            item = response.json()["data"][0]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UpstreamFailed("The image backend's answer has no image in it.") from exc
        if isinstance(item, dict) and isinstance(item.get("b64_json"), str):
            try:
                return base64.b64decode(item["b64_json"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise UpstreamFailed("The image backend sent invalid base64.") from exc
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            try:
                fetched = await self._fetcher.fetch(
                    item["url"], max_bytes=MAX_RESULT_BYTES, timeout=self._config.timeout
                )
                return fetched.body
            except FetchError as exc:
                raise UpstreamFailed(f"The image backend's image could not be downloaded: {exc}") from exc
        raise UpstreamFailed("The image backend's answer has no image in it.")


def plan_format(sizes: list[str]) -> JsonSchemaResponseFormat:
    schema = {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": 400},
            "size": {"type": "string", "enum": sizes},
            "caption": {"type": "string", "minLength": 1, "maxLength": 200},
        },
        "required": ["prompt", "size", "caption"],
        "additionalProperties": False,
    }
    return JsonSchemaResponseFormat(
        type="json_schema", json_schema=JsonSchemaFormat(name="image_plan", schema_=schema, strict=True)
    )


def _first_sentence(text: str) -> str:
    """A caption is one sentence; small models tend to run on (and get cut off) after it."""
    text = " ".join(text.split())
    end = re.search(r"[.!?](\s|$)", text)
    return text[: end.start() + 1] if end else text


def parse_plan(text: str, sizes: list[str], fallback_prompt: str) -> tuple[str, str, str]:
    """The prompt, size and caption the model planned; the user's own words if its JSON is unusable."""
    try:
        plan = json.loads(text)
    except ValueError:
        plan = {}
    if not isinstance(plan, dict):
        plan = {}
    prompt = str(plan.get("prompt") or "").strip() or fallback_prompt
    size = plan.get("size") if plan.get("size") in sizes else sizes[0]
    caption = _first_sentence(str(plan.get("caption") or "")) or "Here is the image."
    return prompt, str(size), caption
