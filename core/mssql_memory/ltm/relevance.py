"""Lexical relevance (BM25) for ranking facts and for hybrid vector recall."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["LexicalIndex", "bm25_scores", "terms"]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(
    "a an and are as at be been but by can could did do does for from had has have he her his "
    "how i if in into is it its me my of on or our she so than that the their them then there "
    "these they this to too us was we were what when where which who whom why will with would "
    "you your yours i'm im just also about any some".split()
)


def terms(text: str) -> list[str]:
    """Lower-cased words without stop words, with a light plural/suffix folding."""
    out = []
    for word in _WORD.findall(text.casefold()):
        if word in _STOP or (len(word) < 2 and not word.isdigit()):
            continue
        for suffix in ("ing", "ed", "es", "s"):
            if len(word) > len(suffix) + 3 and word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        out.append(word)
    return out


class LexicalIndex:
    """An incremental inverted index with BM25 scoring (k1=1.2, b=0.75)."""

    def __init__(self) -> None:
        self.postings: dict[str, dict[int, int]] = {}
        self.lengths: list[int] = []
        self._shared: set[str] = set()  # postings still shared with the index copied from
        self._arrays: dict[str, tuple[Any, Any]] = {}  # numpy (docs, tfs) per posting
        self._lengths_array: Any = None

    def copy(self) -> LexicalIndex:
        """An index that can grow without changing this one (postings are copied on write,
        so copying costs the number of terms, not of postings)."""
        other = LexicalIndex()
        other.postings = dict(self.postings)
        other.lengths = list(self.lengths)
        other._shared = set(self.postings)
        other._arrays = dict(self._arrays)
        return other

    def add(self, text: str) -> int:
        doc = len(self.lengths)
        counts = Counter(terms(text))
        self.lengths.append(sum(counts.values()))
        for term, tf in counts.items():
            if term in self._shared:
                self._shared.discard(term)
                self.postings[term] = dict(self.postings[term])
            self.postings.setdefault(term, {})[doc] = tf
        return doc

    def extend(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.add(text)

    def scores(self, query: str) -> dict[int, float]:
        """BM25 score per document that shares a term with ``query``."""
        n = len(self.lengths)
        if n == 0:
            return {}
        avg = sum(self.lengths) / n or 1.0
        out: dict[int, float] = {}
        for term in set(terms(query)):
            posting = self.postings.get(term)
            if not posting:
                continue
            idf = math.log(1 + (n - len(posting) + 0.5) / (len(posting) + 0.5))
            for doc, tf in posting.items():
                norm = tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * self.lengths[doc] / avg))
                out[doc] = out.get(doc, 0.0) + idf * norm
        return out

    def relative_scores(self, query: str) -> dict[int, float]:
        """BM25 scores divided by the query's own (a document holding each query term once,
        at average length), capped at 1: how much of the query a document matches, 0 to 1."""
        n = len(self.lengths)
        present = [t for t in set(terms(query)) if t in self.postings]
        if n == 0 or not present:
            return {}
        own = sum(
            math.log(1 + (n - len(self.postings[t]) + 0.5) / (len(self.postings[t]) + 0.5))
            for t in present
        )
        return {doc: min(score / own, 1.0) for doc, score in self.scores(query).items()}

    def relative_array(self, query: str, np: Any) -> Any:
        """:meth:`relative_scores` for every document, as a numpy array (None when no query
        term is indexed): the same numbers, computed over postings as arrays."""
        n = len(self.lengths)
        present = [t for t in set(terms(query)) if t in self.postings]
        if n == 0 or not present:
            return None
        lengths = self._lengths_array
        if lengths is None or len(lengths) != n:
            lengths = self._lengths_array = np.asarray(self.lengths, dtype=np.float32)
        avg = float(lengths.mean()) or 1.0
        out = np.zeros(n, dtype=np.float32)
        own = 0.0
        for term in present:
            posting = self.postings[term]
            arrays = self._arrays.get(term)
            if arrays is None or len(arrays[0]) != len(posting):  # postings only grow
                docs = np.fromiter(posting.keys(), dtype=np.int64, count=len(posting))
                tfs = np.fromiter(posting.values(), dtype=np.float32, count=len(posting))
                arrays = self._arrays[term] = (docs, tfs)
            docs, tfs = arrays
            idf = math.log(1 + (n - len(docs) + 0.5) / (len(docs) + 0.5))
            own += idf
            out[docs] += idf * tfs * 2.2 / (tfs + 1.2 * (0.25 + 0.75 * lengths[docs] / avg))
        return np.minimum(out / own, 1.0)


def bm25_scores(query: str, docs: Sequence[str]) -> list[float]:
    """BM25 scores of ``docs`` for ``query`` (0.0 where nothing matches)."""
    index = LexicalIndex()
    index.extend(docs)
    scores = index.scores(query)
    return [scores.get(i, 0.0) for i in range(len(docs))]
