"""One real chatgate server per test session, started as a subprocess and spoken to over HTTP."""

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from chatgate.providers.local import assets
from chatgate.storage.database import Database
from chatgate.storage.reservations import discrepancies
from tests.e2e import infra
from tests.e2e.infra import API_KEY, ROOT, Server

# OpenAI's schemas, kept in the repository as test data (see its README).
SPEC_DIR = ROOT / "tests" / "data" / "openai-spec"
SPEC_PATH = SPEC_DIR / "chat_schemas.json"
SMALL = "smollm2-135m"  # fast: for tests that are not about answer quality
QWEN = "qwen2.5-coder-0.5b-instruct"

EMBED = "all-minilm-l6-v2"  # the offline embedding model
SKETCH = "sketch-image"  # draws offline: the small model writes SVG
PAINTER = "gpt-4o-image"  # draws through an OpenAI-compatible images API (tests/e2e/images_peer.py)
IMAGES_KEY = "sk-images-peer-key"

CATALOGUE = """
models:
  - name: {SMALL}
    aliases: [small]
    deployment: {{kind: local, asset: smollm2-135m-instruct-q4_1, context_length: 2048, instances: 2}}
  - name: {QWEN}
    deployment: {{kind: local, asset: qwen2.5-coder-0.5b-instruct-q4_k_m, context_length: 2048, instances: 2}}
  - name: {EMBED}
    aliases: [minilm]
    deployment: {{kind: local_embedding, asset: all-minilm-l6-v2, workers: 2}}
  - name: {SKETCH}
    deployment:
      kind: image_generation
      base: {SMALL}
      backend: {{backend: sketch, max_shapes: 4}}
      sizes: ["256x256", "512x384"]
      image_price: 1000
  - name: {PAINTER}
    deployment:
      kind: image_generation
      base: {SMALL}
      backend: {{backend: openai_images, base_url: "{images}/v1", model: gpt-image-1, api_key_env: TEST_IMAGES_KEY}}
      sizes: ["1024x1024", "256x256"]
"""
MAX_QUEUE = 2


# What a page shows may take a while on a machine shared with other work: wait for it up to 30 s
# (Playwright's 5 s default failed the console tests under a load of 20 on 2 cores).
expect.set_options(timeout=30_000)

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


LOG_LINES = 60  # of each running server's log, at the end of a failing test's report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test's report ends with the last lines of every server running at that moment (a
    request that hung or failed is in there, and the test's temporary folder may be gone later)."""
    report: pytest.TestReport = yield
    if report.failed:
        for log in list(infra.RUNNING_LOGS):
            try:
                tail = log.read_text(errors="replace").splitlines()[-LOG_LINES:]
            except OSError as exc:
                tail = [f"(could not read it: {exc})"]
            report.sections.append((f"last {LOG_LINES} lines of {log}", "\n".join(tail)))
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, driven by Playwright (which never downloads a browser of its own)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (make test installs it)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@dataclass(frozen=True)
class ImagesPeer:
    url: str


@pytest.fixture(scope="session")
def images_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImagesPeer]:
    port = infra.free_port()
    command = [sys.executable, "-m", "tests.e2e.images_peer", "--port", str(port), "--key", IMAGES_KEY]
    log = tmp_path_factory.mktemp("images-peer") / "peer.log"
    with infra.process(command, port, log, cwd=str(ROOT)):
        yield ImagesPeer(f"http://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, images_peer: ImagesPeer) -> Iterator[Server]:
    """The main server: SQLite, the master key, the local models and two drawing models, a short queue.

    It may fetch from 127.0.0.1 (the tests' own web site) and from nowhere else on the machine.
    """
    catalogue = CATALOGUE.format(
        SMALL=SMALL, QWEN=QWEN, EMBED=EMBED, SKETCH=SKETCH, PAINTER=PAINTER, images=images_peer.url
    )
    with infra.chatgate(
        tmp_path_factory.mktemp("server"),
        catalogue,
        CHATGATE_MAX_QUEUE=str(MAX_QUEUE),
        CHATGATE_BROWSING_ALLOW_HOSTS="127.0.0.1",
        TEST_IMAGES_KEY=IMAGES_KEY,
    ) as running:
        yield running


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """llama.cpp's own OpenAI-compatible server (from llama-cpp-python[server]) on the small model."""
    port = infra.free_port()
    model = assets.ensure(assets.resolve("smollm2-135m-instruct-q4_1"), ROOT / ".chatgate" / "models")
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "smol",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
    ]  # fmt: skip
    with infra.process(command, port, tmp_path_factory.mktemp("llama") / "log"):
        yield port


@pytest.fixture(scope="session")
def faulty_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of tests/e2e/faulty_upstream.py, an OpenAI-compatible upstream that answers at once
    or misbehaves on request (its model names say how)."""
    port = infra.free_port()
    command = [sys.executable, str(Path(__file__).with_name("faulty_upstream.py")), "--port", str(port)]
    with infra.process(command, port, tmp_path_factory.mktemp("faulty-upstream") / "upstream.log"):
        yield port


def faulty_catalogue(port: int, aliases: dict[str, list[str]] | None = None, **models: str) -> str:
    """A catalogue of models served by the faulty upstream: each public name and the upstream model
    it is (``fast="ok"``, ``held="hold"``), with any ``aliases`` by public name."""
    lines = ["models:"]
    for name, model in models.items():
        deployment = f'{{kind: openai_compatible, base_url: "http://127.0.0.1:{port}/v1", model: {model}}}'
        lines += [
            f"  - name: {name}",
            f"    aliases: {(aliases or {}).get(name, [])}",
            f"    deployment: {deployment}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def postgres() -> Iterator[infra.Postgres]:
    with infra.postgres() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/openai", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as c:
        yield c


class Spec:
    """Validates what the server sent against the official OpenAI schemas (one file of them)."""

    def __init__(self, path: Path) -> None:
        self.document = json.loads(path.read_text())

    def validate(self, definition: str, instance: Any) -> None:
        schema = {**self.document, "$ref": f"#/$defs/{definition}"}
        jsonschema.Draft202012Validator(schema).validate(instance)


@pytest.fixture(scope="session")
def spec() -> Spec:
    return Spec(SPEC_PATH)


@pytest.fixture(scope="session")
def embeddings_spec() -> Spec:
    return Spec(SPEC_DIR / "embeddings_schemas.json")


@pytest.fixture(scope="session")
def responses_spec() -> Spec:
    """OpenAI's Responses API schemas."""
    return Spec(SPEC_DIR / "responses_schemas.json")


@pytest.fixture(scope="session")
def anthropic_spec() -> Spec:
    """Anthropic's Messages API shapes (tests/data/anthropic-spec)."""
    return Spec(ROOT / "tests" / "data" / "anthropic-spec" / "messages_schemas.json")


def typed_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """An SSE response of typed events (``event:`` then ``data:``) as (name, payload) pairs."""
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
    return events


def user_key(server: Server, email: str) -> str:
    """A new user's API token (the last line `chatgate keys create` prints)."""
    return server.cli("keys", "create", "--user", email).strip().splitlines()[-1]


def sse_events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE response, in order (comments and blank lines skipped)."""
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def well_inside_a_minute() -> None:
    """Limits count per whole minute; start a burst early in one so it doesn't straddle two."""
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)


def admitted_until_the_limit(responses: list[httpx.Response], limit: int) -> None:
    """Requests pass while the minute's tokens are under ``limit``, and are refused from then on."""
    codes = [r.status_code for r in responses]
    passed = codes.count(200)
    assert passed and codes == [200] * passed + [429] * (len(codes) - passed), codes
    totals = [r.json()["usage"]["total_tokens"] for r in responses[:passed]]
    assert sum(totals[:-1]) < limit <= sum(totals), totals


def database_url(server: Server) -> str:
    return server.env.get("CHATGATE_DATABASE_URL") or (
        f"sqlite+aiosqlite:///{server.env['CHATGATE_DATA_DIR']}/chatgate.db"
    )


async def _discrepancies(url: str) -> list[str]:
    db = Database(url)
    try:
        async with db.snapshot() as session:
            return (await discrepancies(session))[0]
    finally:
        await db.dispose()


def assert_ledger_adds_up(server: Server, *, cli: bool = False) -> None:
    """``chatgate ledger verify`` on the server's database: for every user the ledger adds up to the
    balance, and granted = balance + settled charges + open reservations. In-process by default
    (the very function the command runs, without its second of start-up), or as the command."""
    if cli:
        result = subprocess.run(
            [sys.executable, "-m", "chatgate", "ledger", "verify"],
            env=server.env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("ledger verified"), result.stdout
        return
    problems = asyncio.run(_discrepancies(database_url(server)))
    assert problems == [], problems


def ledger_checked(fixture: str, server: Callable[[Any], Server] = lambda value: value) -> object:
    """An autouse fixture for a module whose tests move credits: after each test, the ledger of the
    server that ``fixture`` gives (``server`` picks it out of the fixture's value) is verified."""

    @pytest.fixture(autouse=True)
    def checked(request: pytest.FixtureRequest) -> Iterator[None]:
        yield
        assert_ledger_adds_up(server(request.getfixturevalue(fixture)))

    return checked
