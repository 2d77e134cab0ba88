"""Browsing models through a real server: a loopback web site the tests write, a SearxNG-shaped search
endpoint, and a local index filled with ``chatgate index add``; the official ``openai`` client asks.

A real SearxNG cannot run here (no outside network), so the search endpoint is a stand-in on loopback
that answers SearxNG's JSON shape with this site's pages for any query. Every address the server may
fetch is on 127.0.0.1, allow-listed with CHATGATE_BROWSING_ALLOW_HOSTS; the one redirect that leaves
it goes to ``localhost`` (loopback under a name that is not allowed), and must never be followed.
Redirects to metadata and private addresses are tested in-process only (tests/unit/providers/web),
where the connector is wrapped so a failing guard cannot leave the machine.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e import infra
from tests.e2e.conftest import Spec
from tests.e2e.infra import API_KEY, Server
from tests.website import Page, Site, website

BASE = "qwen2.5-coder-0.5b"
WEB = "qwen2.5-coder-0.5b-browsing"
LOCAL = "qwen2.5-coder-0.5b-notes"
FACT = "The lighthouse keeper of Velmora Island is Ostrander Quill."
QUESTION = [{"role": "user", "content": "Who is the lighthouse keeper of Velmora Island?"}]
SLOW_SECONDS = 120  # the slow page drips for this long; the request must not wait for it


def _article(title: str, *paragraphs: str) -> Page:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    html = f"<html><head><title>{title}</title></head><body><nav>Home | About</nav><article><h1>{title}</h1>{body}</article></body></html>"
    return Page(html.encode())


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    pages: dict[str, object] = {
        "/velmora": _article(
            "Velmora Island",
            "Velmora Island is a small rocky island in the northern sea, reached by ferry twice a week.",
            FACT,
            "The lighthouse was built in 1887 and still guides the fishing boats home.",
        ),
        "/bread": _article("Baking bread", "Bread is made from flour, water, salt and yeast."),
        "/slow": Page(b"<p>drip</p>", pieces=SLOW_SECONDS * 5, delay=0.2),
        "/huge": Page(b"<p>" + b"x" * 65536, repeat=2000),  # 131 MB without Content-Length
        "/binary": Page(bytes(range(256)) * 64, "application/octet-stream"),
        "/secret": Page(b"<p>The secret is 42.</p>"),
    }
    with website(pages) as running:  # type: ignore[arg-type]
        running.pages["/to-secret"] = Page(status=302, location=running.url("/secret", host="localhost"))
        order = ["/to-secret", "/slow", "/huge", "/binary", "/velmora", "/bread"]
        results = [{"url": running.url(p), "title": p.strip("/"), "content": ""} for p in order]
        running.pages["/search"] = Page(json.dumps({"results": results}).encode(), "application/json")
        yield running


def _catalogue(site: Site) -> str:
    common = "max_tokens: 48, passage_tokens: 350, fetch_timeout: 2.0"
    return f"""
models:
  - name: {BASE}
    deployment: {{kind: local, asset: qwen2.5-coder-0.5b-instruct-q4_k_m, context_length: 2048, instances: 1}}
  - name: {WEB}
    aliases: [web]
    deployment:
      {{kind: browsing, base: {BASE}, search: {{backend: searxng, base_url: "{site.url("")}"}}, max_pages: 6, {common}}}
  - name: {LOCAL}
    deployment: {{kind: browsing, base: {BASE}, search: {{backend: local_index}}, {common}}}
"""


@pytest.fixture(scope="module")
def server(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("browsing")
    with infra.chatgate(workdir, _catalogue(site), CHATGATE_BROWSING_ALLOW_HOSTS="127.0.0.1") as running:
        yield running


@pytest.fixture(scope="module")
def notes(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of notes put in the server's local index through the CLI."""
    folder = tmp_path_factory.mktemp("notes")
    (folder / "velmora.md").write_text(
        f"# Velmora Island\n\nVelmora Island lies in the northern sea.\n\n{FACT}\n"
    )
    (folder / "bread.txt").write_text("Baking bread\n\nBread is made from flour, water, salt and yeast.\n")
    (folder / "garden.html").write_text(
        "<html><head><title>Gardens</title></head><body><article><p>Tomatoes need sun and water "
        "every day in summer.</p></article></body></html>"
    )
    output = server.cli("index", "add", str(folder))
    assert output.count("added ") == 3
    assert "velmora.md" in server.cli("index", "search", "lighthouse keeper Velmora")
    return folder


def _client(server: Server, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=180)


def test_searxng_answer_cites_the_page_and_charges_every_step(server: Server, site: Site, spec: Spec) -> None:
    key = server.cli("keys", "create", "--user", "browser@example.com").strip().splitlines()[-1]
    began = time.monotonic()
    raw = _client(server, key).chat.completions.with_raw_response.create(
        model=WEB, messages=QUESTION, temperature=0
    )  # type: ignore[arg-type]
    elapsed = time.monotonic() - began
    spec.validate("CreateChatCompletionResponse", raw.http_response.json())
    answer = raw.parse()
    content = answer.choices[0].message.content or ""
    url = site.url("/velmora")
    assert "Ostrander Quill" in content
    assert f"]({url})" in content
    annotations = answer.choices[0].message.annotations or []
    assert url in [a.url_citation.url for a in annotations]
    for annotation in annotations:
        citation = annotation.url_citation
        assert annotation.type == "url_citation"
        assert content[citation.start_index : citation.end_index] == f"[{citation.title}]({citation.url})"
    # The guard: the redirect to localhost was never followed; the slow page did not hold the answer up.
    assert site.hits.get("/secret") is None
    assert site.hits.get("/to-secret") == 1
    assert elapsed < SLOW_SECONDS / 2

    assert answer.usage is not None
    plain = _client(server).chat.completions.create(model=BASE, messages=QUESTION, max_tokens=1)  # type: ignore[arg-type]
    assert plain.usage is not None and answer.usage.prompt_tokens > plain.usage.prompt_tokens + 100
    report = httpx.get(server.base_url + "/v1/usage", headers={"authorization": f"Bearer {key}"}).json()
    # One credit a token (the catalogue's default price), for the query step and the answer step alike.
    assert report["prompt_tokens"] == answer.usage.prompt_tokens
    assert report["completion_tokens"] == answer.usage.completion_tokens
    assert report["credits_used"] == answer.usage.total_tokens


def test_searxng_answer_streamed(server: Server, site: Site, spec: Spec) -> None:
    stream = _client(server).chat.completions.create(
        model="web",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
        temperature=0,  # greedy: the same answer every run
    )
    content, usage = "", None
    for chunk in stream:
        spec.validate("CreateChatCompletionStreamResponse", chunk.model_dump(mode="json", exclude_unset=True))
        assert chunk.model == WEB
        for choice in chunk.choices:
            content += choice.delta.content or ""
        usage = chunk.usage or usage
    assert "Ostrander Quill" in content
    assert f"]({site.url('/velmora')})" in content
    assert usage is not None and usage.prompt_tokens > 150  # the question alone is about 30
    assert site.hits.get("/secret") is None


def test_local_index_answer_streamed_and_not(server: Server, notes: Path) -> None:
    url = (notes / "velmora.md").resolve().as_uri()
    client = _client(server)
    answer = client.chat.completions.create(model=LOCAL, messages=QUESTION, temperature=0)  # type: ignore[arg-type]
    content = answer.choices[0].message.content or ""
    assert "Ostrander Quill" in content and f"]({url})" in content
    assert url in [a.url_citation.url for a in answer.choices[0].message.annotations or []]
    streamed = "".join(
        choice.delta.content or ""
        for chunk in client.chat.completions.create(
            model=LOCAL, messages=QUESTION, stream=True, temperature=0
        )  # type: ignore[arg-type]
        for choice in chunk.choices
    )
    assert "Ostrander Quill" in streamed and f"]({url})" in streamed


def test_models_list_the_browsing_models(server: Server) -> None:
    names = [m.id for m in _client(server).models.list()]
    assert {BASE, WEB, LOCAL} <= set(names)
