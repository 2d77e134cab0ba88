"""The local FTS5 index and what it is filled from: files by kind, directories, URLs under the guard."""

from pathlib import Path

from chatgate.providers.browsing.extract import extract
from chatgate.providers.browsing.index import LocalIndex, add_sources
from chatgate.providers.browsing.passages import Passage, rank, select, split
from chatgate.providers.web.fetch import GuardedFetcher
from tests.website import Page, website


async def test_add_search_list_remove(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "velmora.md").write_text("# Velmora\n\nThe lighthouse keeper is Ostrander Quill.\n")
    (tmp_path / "docs" / "page.html").write_text(
        "<html><head><title>Harbour</title></head><body><article><p>The harbour of Velmora holds "
        "twelve fishing boats and a ferry.</p></article></body></html>"
    )
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\x00\x01")
    index = LocalIndex(tmp_path / "index.db")
    with website({"/web": Page(b"Plain text about ferries and tides.", "text/plain")}) as site:
        fetcher = GuardedFetcher(allow_hosts=["127.0.0.1"])
        added = await add_sources(index, [str(tmp_path / "docs"), site.url("/web"), "/nowhere"], fetcher)
        refused = await add_sources(index, [site.url("/web", host="localhost")], fetcher)
        await fetcher.aclose()
    assert [a.problem is None for a in added] == [True, True, True, False]
    assert refused[0].problem is not None and refused[0].problem.startswith("FetchRefused")
    hits = index.search("who is the lighthouse keeper?")
    assert hits[0].url == (tmp_path / "docs" / "velmora.md").resolve().as_uri()
    assert hits[0].title == "Velmora" and "Ostrander Quill" in hits[0].text
    assert {d.title for d in index.documents()} == {
        "Velmora",
        "Harbour",
        "Plain text about ferries and tides.",
    }
    assert index.remove(site.url("/web")) and not index.remove(site.url("/web"))
    assert index.search("the of") == []  # stop words only


def test_passages_rank_and_fit_the_budget() -> None:
    document = extract(
        "https://example.org/a.txt", ("Filler sentence here. " * 60 + "\n\nThe keeper is Quill.").encode()
    )
    assert document is not None
    pieces = split(document, size=200)
    assert all(len(p.text) <= 200 for p in pieces) and len(pieces) > 5
    best = rank(pieces, "who is the keeper")
    assert best[0].text.endswith("The keeper is Quill.")
    chosen = select(best, budget_tokens=60)
    assert sum(len(p.text.encode()) for p in chosen) <= 240 and chosen[0] == best[0]
    assert select([Passage(document, "é" * 200, 0)], budget_tokens=60) == []  # 400 bytes: too big


def test_extract_kinds() -> None:
    assert extract("https://x.org/f", bytes(range(256)), "application/octet-stream") is None
    assert extract("https://x.org/f.pdf", b"%PDF-1.4 broken", "application/pdf") is None
    markdown = extract("https://x.org/n.md", b"# Title here\n\nBody.", "")
    assert markdown is not None and markdown.title == "Title here"
