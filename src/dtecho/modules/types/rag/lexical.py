"""BM25 over chunks: the lexical half of hybrid retrieval.

Terms are lower-cased NFKC words with English stop words removed and a light suffix
stemming (``erupts``, ``erupted``, ``eruption`` → ``erupt``). The index is updated in place
as chunks come and go; a query scores only the chunks that share a term with it.

A score is normalised by the query's own Σ idf(t) over its distinct terms and clipped to 1,
so it lies in [0, 1] and reads alike across queries and corpora: roughly the share of the
query's informative terms a chunk holds (a chunk of average length holding each once: 1).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache

import numpy as np

__all__ = ["LexicalIndex", "terms"]

_WORD = re.compile(r"[^\W_]+")
_STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves others another tell say says said""".split()  # noqa: SIM905 - a list literal of 140 words is unreadable
)
# Longest first; a suffix is removed only if a stem of three letters or more is left.
_SUFFIXES = (
    "ational", "ization", "fulness", "iveness", "ations", "ements", "ically", "nesses", "ation",
    "ement", "ively", "ments", "ness", "ings", "ions", "ies", "ing", "ion", "ers", "ful", "ive",
    "est", "ed", "es", "er", "ly", "al", "s",
)  # fmt: skip
_KEEP_ENDINGS = ("ss", "us", "is")


# A vocabulary is small next to the words of a corpus: each distinct word is stemmed once
# (loading an index of 10^5 chunks spent 80% of its time here without the cache).
@lru_cache(maxsize=1 << 17)
def _stem(word: str) -> str:
    if len(word) <= 3 or word.isdigit() or word.endswith(_KEEP_ENDINGS):
        return word
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    # "running" → "runn" → "run"; "stopped" → "stopp" → "stop"
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
        word = word[:-1]
    return word


def terms(text: str) -> list[str]:
    """The BM25 terms of ``text``, in order (repeats kept): each word's stem, and for a word
    of six letters or more also its first five (``~explo``), which matches the forms a suffix
    stemmer keeps apart (``explode``/``explosion``, ``communicate``/``communication``)."""
    out = []
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
        if word in _STOP_WORDS:
            continue
        out.append(_stem(word))
        if len(word) >= 6 and not word.isdigit():
            out.append("~" + word[:5])
    return out


class LexicalIndex:
    """BM25 (Okapi, k1 = 1.2, b = 0.75) over rows added and removed by integer key."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self._postings: dict[str, dict[int, int]] = {}  # term -> {row: term frequency}
        self._rows: dict[int, tuple[int, tuple[str, ...]]] = {}  # row -> (length, its terms)
        self._total_length = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: int, text: str) -> None:
        """Index ``text`` as ``row`` (a row already present is replaced)."""
        self.remove(row)
        counts = Counter(terms(text))
        for term, count in counts.items():
            self._postings.setdefault(term, {})[row] = count
        length = sum(counts.values())
        self._rows[row] = (length, tuple(counts))
        self._total_length += length

    def remove(self, row: int) -> None:
        """Forget ``row``; an unknown row is ignored."""
        entry = self._rows.pop(row, None)
        if entry is None:
            return
        length, row_terms = entry
        self._total_length -= length
        for term in row_terms:
            posting = self._postings[term]
            del posting[row]
            if not posting:
                del self._postings[term]

    def scores(self, query: str) -> dict[int, float]:
        """``{row: score}`` of the rows sharing a term with ``query`` (the others score 0).

        The score is BM25 divided by Σ idf over the query's distinct terms, clipped to 1: a
        chunk of average length holding each query term once scores 1."""
        n = len(self._rows)
        query_terms = set(terms(query))
        if n == 0 or not query_terms:
            return {}
        average = self._total_length / n or 1.0
        k1, b = self.k1, self.b
        scores: dict[int, float] = {}
        ceiling = 0.0
        for term in query_terms:
            posting = self._postings.get(term)
            df = len(posting) if posting else 0
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))  # Lucene's: never negative
            ceiling += idf
            if not posting:
                continue
            rows = np.fromiter(posting.keys(), dtype=np.int64, count=df)
            tf = np.fromiter(posting.values(), dtype=np.float64, count=df)
            lengths = np.fromiter((self._rows[r][0] for r in rows.tolist()), np.float64, df)
            gains = idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * lengths / average))
            for row, gain in zip(rows.tolist(), gains.tolist(), strict=True):
                scores[row] = scores.get(row, 0.0) + gain
        if ceiling <= 0.0:
            return {}
        return {row: min(1.0, score / ceiling) for row, score in scores.items()}
