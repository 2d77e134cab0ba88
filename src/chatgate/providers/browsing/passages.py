"""Passages: documents cut into pieces, ranked against the question (BM25), kept within a budget."""

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from chatgate.providers.browsing.extract import Document

BYTES_PER_TOKEN = 4  # a budget in tokens is spent as this many bytes of UTF-8 each (English prose)
PASSAGE_CHARS = 700
WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    "a an and are as at be by for from has have how i in is it its of on or that the this to was what "
    "when where which who whom why will with you your does do did".split()
)


@dataclass(frozen=True)
class Passage:
    document: Document
    text: str
    position: int  # its order within the document


def terms(text: str) -> list[str]:
    return [w for w in WORD.findall(text.lower()) if w not in STOPWORDS]


def split(document: Document, size: int = PASSAGE_CHARS) -> list[Passage]:
    """Paragraphs packed into pieces of about ``size`` characters; over-long ones cut at sentences."""
    pieces: list[str] = []
    current = ""
    for paragraph in _units(document.text, size):
        if current and len(current) + len(paragraph) + 1 > size:
            pieces.append(current)
            current = ""
        current = f"{current}\n{paragraph}" if current else paragraph
    if current:
        pieces.append(current)
    return [Passage(document, text, i) for i, text in enumerate(pieces)]


def _units(text: str, size: int) -> Iterable[str]:
    for paragraph in re.split(r"\n\s*\n|\n", text):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        if len(paragraph) <= size:
            yield paragraph
            continue
        sentence_run = ""
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
            while len(sentence) > size:  # no sentence break at all: cut hard
                yield sentence[:size]
                sentence = sentence[size:]
            if sentence_run and len(sentence_run) + len(sentence) + 1 > size:
                yield sentence_run
                sentence_run = ""
            sentence_run = f"{sentence_run} {sentence}" if sentence_run else sentence
        if sentence_run:
            yield sentence_run


def rank(passages: Sequence[Passage], query: str, k1: float = 1.5, b: float = 0.75) -> list[Passage]:
    """The passages best first by BM25 against ``query``; ties keep document order."""
    wanted = set(terms(query))
    if not passages:
        return []
    docs = [Counter(terms(p.text + " " + p.document.title)) for p in passages]
    average = sum(sum(d.values()) for d in docs) / len(docs) or 1.0
    frequency = Counter(t for d in docs for t in set(d) if t in wanted)
    n = len(docs)

    def score(doc: Counter[str]) -> float:
        length = sum(doc.values())
        total = 0.0
        for term in wanted:
            tf = doc.get(term, 0)
            if not tf:
                continue
            idf = math.log(1 + (n - frequency[term] + 0.5) / (frequency[term] + 0.5))
            total += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))
        return total

    scored = [(score(d), i) for i, d in enumerate(docs)]
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    return [passages[i] for _, i in scored]


def budget_bytes(budget_tokens: int) -> int:
    return budget_tokens * BYTES_PER_TOKEN


def select(ranked: Sequence[Passage], budget_tokens: int) -> list[Passage]:
    """The best passages whose text fits ``budget_tokens``, in ranked order.

    The budget is counted in bytes, so it is also an upper bound on the tokens the passages can take.
    """
    room = budget_bytes(budget_tokens)
    chosen: list[Passage] = []
    for passage in ranked:
        size = len(passage.text.encode())
        if size <= room:
            chosen.append(passage)
            room -= size
        if room < 80:
            break
    return chosen
