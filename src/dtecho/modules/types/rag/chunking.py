"""Splitting a document's text into overlapping chunks on natural boundaries.

The text is cut into *atoms* no longer than the chunk size, as coarsely as possible: whole
paragraphs where they fit, else lines, else sentences, else words, and only a word longer
than a chunk is cut mid-word. Consecutive atoms are then packed greedily into chunks of at
most ``size`` characters; each new chunk starts with the previous chunk's trailing atoms that
fit in ``overlap`` characters, so a sentence cut by a chunk boundary is whole in one of them.
A chunk is a slice of the original text (``text[start:end]``), so offsets point into it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Chunk", "chunk_text"]

# Coarsest first. A sentence ends with . ! ? (or their CJK forms), maybe a closing quote or
# bracket, then whitespace.
_SEPARATORS = (
    re.compile(r"\n[ \t\r\f\v]*\n\s*"),  # a blank line: paragraphs
    re.compile(r"\n\s*"),  # lines (Markdown lists, headings, PDF lines)
    re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+"),  # sentences
    re.compile(r"\s+"),  # words
)


@dataclass(frozen=True)
class Chunk:
    """One chunk: its position in the document and its text (``text[start:end]``)."""

    index: int
    start: int
    end: int
    text: str


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _atoms(text: str, start: int, end: int, size: int, level: int) -> list[tuple[int, int]]:
    start, end = _strip(text, start, end)
    if start == end:
        return []
    if end - start <= size:
        return [(start, end)]
    if level == len(_SEPARATORS):  # one "word" longer than a chunk: cut it
        return [(s, min(s + size, end)) for s in range(start, end, size)]
    atoms: list[tuple[int, int]] = []
    piece_start = start
    for match in _SEPARATORS[level].finditer(text, start, end):
        atoms += _atoms(text, piece_start, match.start(), size, level + 1)
        piece_start = match.end()
    atoms += _atoms(text, piece_start, end, size, level + 1)
    return atoms


def _paragraphs(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _SEPARATORS[0].finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return [span for span in (_strip(text, *span) for span in spans) if span[0] < span[1]]


def chunk_text(text: str, size: int = 800, overlap: int = 100) -> list[Chunk]:
    """The chunks of ``text``: at most ``size`` characters each, consecutive ones sharing up
    to ``overlap`` characters of whole atoms. Whitespace-only text has no chunks.

    A chunk at least half full ends before a paragraph that would not fit in it whole,
    rather than taking the paragraph's first sentences."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError("need size >= 1 and 0 <= overlap < size")
    chunks: list[Chunk] = []
    current: list[tuple[int, int]] = []
    for p_start, p_end in _paragraphs(text):
        for position, atom in enumerate(_atoms(text, p_start, p_end, size, 1)):
            if current:
                length = atom[1] - current[0][0]
                early = (
                    position == 0
                    and current[-1][1] - current[0][0] >= size // 2
                    and p_end - current[0][0] > size
                )
                if length > size or early:
                    chunks.append(_chunk(text, len(chunks), current))
                    current = _overlap(current, atom, size, overlap)
            current.append(atom)
    if current:
        chunks.append(_chunk(text, len(chunks), current))
    return chunks


def _overlap(
    previous: list[tuple[int, int]], atom: tuple[int, int], size: int, overlap: int
) -> list[tuple[int, int]]:
    """The trailing atoms of ``previous`` that fit in ``overlap`` and leave room for ``atom``."""
    end = previous[-1][1]
    kept: list[tuple[int, int]] = []
    for earlier in reversed(previous):
        if end - earlier[0] > overlap or atom[1] - earlier[0] > size:
            break
        kept.insert(0, earlier)
    return kept


def _chunk(text: str, index: int, atoms: list[tuple[int, int]]) -> Chunk:
    start, end = atoms[0][0], atoms[-1][1]
    return Chunk(index, start, end, text[start:end])
