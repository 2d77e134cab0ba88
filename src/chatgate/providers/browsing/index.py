"""The local search index: documents cut into passages in an SQLite FTS5 table, ranked by BM25.

It is a file of its own (by default ``index.db`` in the data dir), so it works the same whichever
database holds the accounts. Calls are synchronous; the search backend runs them in a thread.
"""

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chatgate.providers.browsing.extract import SUFFIXES, Document, extract, extract_file
from chatgate.providers.browsing.passages import split, terms
from chatgate.providers.web.fetch import FetchError, GuardedFetcher

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS passages USING fts5(
    title, body, document_id UNINDEXED, position UNINDEXED, tokenize = 'porter unicode61'
);
"""


@dataclass(frozen=True)
class IndexHit:
    url: str
    title: str
    text: str
    score: float  # BM25, higher is better


@dataclass(frozen=True)
class IndexedDocument:
    url: str
    title: str
    passages: int
    added_at: float


class LocalIndex:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10)
        try:
            connection.executescript(SCHEMA)
            with connection:
                yield connection
        finally:
            connection.close()

    def add(self, document: Document) -> int:
        """Store (or replace) a document; the number of passages it became."""
        pieces = split(document)
        with self._connect() as db:
            self._remove(db, document.url)
            cursor = db.execute(
                "INSERT INTO documents (url, title, added_at) VALUES (?, ?, ?)",
                (document.url, document.title, time.time()),
            )
            db.executemany(
                "INSERT INTO passages (title, body, document_id, position) VALUES (?, ?, ?, ?)",
                [(document.title, p.text, cursor.lastrowid, p.position) for p in pieces],
            )
        return len(pieces)

    def remove(self, url: str) -> bool:
        with self._connect() as db:
            return self._remove(db, url)

    @staticmethod
    def _remove(db: sqlite3.Connection, url: str) -> bool:
        row = db.execute("SELECT id FROM documents WHERE url = ?", (url,)).fetchone()
        if row is None:
            return False
        db.execute("DELETE FROM passages WHERE document_id = ?", (row[0],))
        db.execute("DELETE FROM documents WHERE id = ?", (row[0],))
        return True

    def documents(self) -> list[IndexedDocument]:
        if not self.path.is_file():
            return []
        with self._connect() as db:
            rows = db.execute(
                "SELECT d.url, d.title, count(p.rowid), d.added_at FROM documents d"
                " LEFT JOIN passages p ON p.document_id = d.id GROUP BY d.id ORDER BY d.url"
            ).fetchall()
        return [IndexedDocument(url, title, count, added) for url, title, count, added in rows]

    def search(self, query: str, limit: int = 10) -> list[IndexHit]:
        """Passages matching any of the query's words, best first (title words count double)."""
        words = terms(query)
        if not words or not self.path.is_file():
            return []
        match = " OR ".join('"' + w.replace('"', "") + '"' for w in dict.fromkeys(words))
        with self._connect() as db:
            rows = db.execute(
                "SELECT d.url, d.title, p.body, bm25(passages, 2.0, 1.0) AS score"
                " FROM passages p JOIN documents d ON d.id = p.document_id"
                " WHERE passages MATCH ? ORDER BY score LIMIT ?",
                (match, limit),
            ).fetchall()
        return [IndexHit(url, title, body, -score) for url, title, body, score in rows]


@dataclass(frozen=True)
class Added:
    source: str  # the path or URL as given, or a file found under a given directory
    url: str | None  # what it is cited as; None when it was not added
    passages: int
    problem: str | None = None


async def add_sources(index: LocalIndex, sources: list[str], fetcher: GuardedFetcher) -> list[Added]:
    """Add files (HTML, Markdown, text, PDF; directories recursively) and URLs (fetched under the guard)."""
    added: list[Added] = []
    for source in sources:
        if source.startswith(("http://", "https://")):
            added.append(await _add_url(index, source, fetcher))
            continue
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            files = [path]
        else:
            added.append(Added(source, None, 0, "no such file, directory or http(s) URL"))
            continue
        for file in files:
            document = await asyncio.to_thread(extract_file, file)
            if document is None:
                added.append(Added(str(file), None, 0, "no text found (or not .html, .md, .txt, .pdf)"))
                continue
            count = await asyncio.to_thread(index.add, document)
            added.append(Added(str(file), document.url, count))
    return added


async def _add_url(index: LocalIndex, url: str, fetcher: GuardedFetcher) -> Added:
    try:
        fetched = await fetcher.fetch(url)
    except FetchError as exc:
        return Added(url, None, 0, f"{type(exc).__name__}: {exc}")
    document = await asyncio.to_thread(extract, fetched.url, fetched.body, fetched.content_type)
    if document is None:
        return Added(url, None, 0, "no text found")
    count = await asyncio.to_thread(index.add, Document(url, document.title, document.text))
    return Added(url, url, count)
