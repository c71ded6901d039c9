"""VectorMemory: past turns of a user, embedded and recalled by similarity to the query.

Turns are stored verbatim (date, session, speakers) with float32 embeddings in
the vectors table: one for the whole turn and, with ``sentence_keys``, one per
sentence of the user's message, so a fact said in passing in a long, many-topic
turn is still found (a turn's similarity is that of its best vector). Recall
scores every turn of the user by cosine similarity plus a BM25 bonus, over an
in-process index that is checked against the database on every query (count
and highest id of the user's rows) and loads only the rows it has not seen, so
it is never stale across app instances.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..blocks import BaseMemoryBlock
from ..errors import ModelError
from ..messages import Message
from ..models import Embedder
from ..tokens import TokenCounter, default_token_counter
from ._common import check_block_args, format_turn, pack, resolve_store, split_turns
from .embedders import _numpy, from_bytes, to_bytes
from .relevance import LexicalIndex
from .store import SearchHit, StoredVector

__all__ = ["VectorMemory"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
#: Sentence vectors per turn at most (longer messages: adjacent sentences are merged).
MAX_SENTENCE_KEYS = 8
#: Shorter sentences ("Any advice?") get no vector of their own.
MIN_SENTENCE_WORDS = 3
#: Native search returns at least this many turns (5 x top_k if more) to re-rank.
NATIVE_CANDIDATES = 50


def sentence_keys(turn: Sequence[Message]) -> list[str]:
    """The sentences of the user's message that get a vector of their own."""
    text = "\n".join(m.content for m in turn if m.role == "user")
    keys = [k.strip() for k in _SENTENCE_END.split(text) if len(k.split()) >= MIN_SENTENCE_WORDS]
    while len(keys) > MAX_SENTENCE_KEYS:
        keys = [" ".join(keys[i : i + 2]) for i in range(0, len(keys), 2)]
    return keys


@dataclass
class _Index:
    """One scope's vectors in memory: every row's vectors, L2-normalized, in the first
    ``size`` rows of ``buffer``; row ``i`` owns the vectors from ``starts[i]`` on.

    An index is never changed once installed: a newer one extends a copy. The copy shares
    ``buffer`` and writes only past the older index's ``size`` (which the older one never
    reads), so growing by a few rows does not copy the whole matrix.
    """

    stamp: tuple[int, int] = (0, 0)
    rows: list[StoredVector] = field(default_factory=list)
    buffer: Any = None
    size: int = 0
    starts: Any = None
    lexical: LexicalIndex = field(default_factory=LexicalIndex)

    @property
    def matrix(self) -> Any:
        return self.buffer[: self.size]

    def grown(self) -> _Index:
        """A copy to extend (shares the buffer; lexical postings are copied on write)."""
        return _Index(
            rows=list(self.rows),
            buffer=self.buffer,
            size=self.size,
            starts=self.starts,
            lexical=self.lexical.copy(),
        )

    def extend(self, rows: list[StoredVector]) -> None:
        np = _numpy()
        if not rows:
            return
        blocks = []
        for r in rows:
            flat = from_bytes(r.embedding)
            dimension = r.dimension or len(flat)
            if dimension <= 0 or len(flat) % dimension:
                raise ModelError(f"stored vector {r.id} does not split into {dimension} floats")
            blocks.append(flat.reshape(-1, dimension))
        counts = np.fromiter((len(b) for b in blocks), dtype=np.int64, count=len(blocks))
        block = np.vstack(blocks)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        block = block / norms
        starts = self.size + np.concatenate([[0], np.cumsum(counts)[:-1]])
        if self.buffer is None:
            self.buffer = np.empty((max(2 * len(block), 64), block.shape[1]), dtype="<f4")
            self.starts = starts
        else:
            if block.shape[1] != self.buffer.shape[1]:
                raise ModelError("stored vectors of one user have different dimensions")
            if self.size + len(block) > len(self.buffer):
                capacity = max(2 * len(self.buffer), self.size + len(block))
                bigger = np.empty((capacity, self.buffer.shape[1]), dtype="<f4")
                bigger[: self.size] = self.buffer[: self.size]
                self.buffer = bigger
            self.starts = np.concatenate([self.starts, starts])
        self.buffer[self.size : self.size + len(block)] = block
        self.size += len(block)
        self.rows.extend(rows)
        self.lexical.extend(r.content for r in rows)


class VectorMemory(BaseMemoryBlock):
    """Semantic recall of a user's past turns.

    ``update`` embeds each turn (a user message and the replies that follow)
    once — re-flushing the same messages is a no-op — as a whole and, with
    ``sentence_keys``, sentence by sentence of the user's message. ``get``
    returns the ``top_k`` turns scoring highest for the query, at least
    ``min_score``, packed within the token budget and shown oldest first. A
    turn's score is the cosine similarity of its best vector plus
    ``lexical_weight`` times its BM25 score relative to the query's own
    (0 to 1), so words the query shares with a turn (names, codes) only add.
    With ``neighbors``, the turns just before and after a hit are added when
    room remains.
    Only the user's own turns are searched (a session without a user searches
    only its own turns); turns still in the active window are never stored here.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        store: Any = None,
        top_k: int = 10,
        min_score: float = 0.2,
        max_tokens: int = 800,
        lexical_weight: float = 0.2,
        neighbors: int = 0,
        sentence_keys: bool = True,
        name: str = "vector_memory",
        token_counter: TokenCounter | None = None,
    ) -> None:
        check_block_args(name, max_tokens)
        if not hasattr(embedder, "embed"):
            raise TypeError("embedder must implement embed(texts) -> list of vectors")
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError("top_k must be a positive int")
        if not 0 <= lexical_weight <= 1:
            raise ValueError("lexical_weight must be in [0, 1]")
        if not isinstance(neighbors, int) or neighbors < 0:
            raise ValueError("neighbors must be a non-negative int")
        self.embedder = embedder
        self.store = resolve_store(store)
        self.top_k = top_k
        self.min_score = float(min_score)
        self.max_tokens = max_tokens
        self.lexical_weight = float(lexical_weight)
        self.neighbors = neighbors
        self.sentence_keys = bool(sentence_keys)
        self.name = name
        self.counter = token_counter or default_token_counter()
        self._indexes: dict[tuple[str | None, str | None], _Index] = {}
        self._lock = threading.Lock()

    # -- writing ---------------------------------------------------------------------------

    def _rows(self, vectors, turns, texts, counts, user_id, session_id) -> list[dict[str, Any]]:
        np = _numpy()
        if len(vectors) != len(texts) + sum(counts):
            raise ModelError(
                f"embedder returned {len(vectors)} vectors for {len(texts) + sum(counts)} texts"
            )
        # vectors of another size would make every later recall of this user fail
        sizes = {len(v) for v in vectors}
        expected = getattr(self.embedder, "dimension", None)
        if len(sizes) > 1 or (isinstance(expected, int) and sizes != {expected}):
            raise ModelError(
                f"embedder returned vectors of {sorted(sizes)} dimensions, "
                f"not its dimension {expected}"
            )
        rows, next_key = [], len(texts)
        for i, (turn, text) in enumerate(zip(turns, texts, strict=True)):
            own = [vectors[i], *vectors[next_key : next_key + counts[i]]]
            next_key += counts[i]
            stacked = np.asarray(own, dtype="<f4")
            rows.append(
                {
                    "user_id": user_id,
                    "session_id": session_id,
                    "first_seq": turn[0].seq or 0,
                    "last_seq": turn[-1].seq or 0,
                    "content": text,
                    "token_count": self.counter.count_text(text),
                    "dimension": stacked.shape[1],
                    "embedding": to_bytes(stacked.reshape(-1)),
                }
            )
        return rows

    def _turns(self, messages: Sequence[Message], session_id: str):
        turns = [t for t in split_turns(messages) if any(m.content.strip() for m in t)]
        texts = [format_turn(t, session_id) for t in turns]
        per_turn = [sentence_keys(t) if self.sentence_keys else [] for t in turns]
        keys = [k for ks in per_turn for k in ks]
        return turns, texts, keys, [len(ks) for ks in per_turn]

    def update(self, messages: Sequence[Message], *, user_id: str | None, session_id: str) -> None:
        """Embed and store the turns in ``messages`` (idempotent per turn)."""
        turns, texts, keys, counts = self._turns(messages, session_id)
        if not texts:
            return
        vectors = self.embedder.embed([*texts, *keys])
        rows = self._rows(vectors, turns, texts, counts, user_id, session_id)
        self.store.add_vectors(self.name, rows)

    async def aupdate(
        self, messages: Sequence[Message], *, user_id: str | None, session_id: str
    ) -> None:
        turns, texts, keys, counts = self._turns(messages, session_id)
        if not texts:
            return
        vectors = await self.embedder.aembed([*texts, *keys])
        rows = self._rows(vectors, turns, texts, counts, user_id, session_id)
        await self.store.aadd_vectors(self.name, rows)

    # -- recall ------------------------------------------------------------------------------

    def _scope(self, user_id: str | None, session_id: str) -> tuple[str | None, str | None]:
        return (user_id, None) if user_id is not None else (None, session_id)

    def _current(self, key, stamp: tuple[int, int]) -> tuple[_Index | None, int]:
        """The cached index if current, else ``(None, id to load after)``."""
        with self._lock:
            index = self._indexes.get(key)
        if index is not None and index.stamp == stamp:
            return index, 0
        grows = index is not None and stamp[0] > index.stamp[0] and stamp[1] > index.stamp[1]
        return None, index.stamp[1] if grows else 0

    def _install(self, key, after: int, rows: list[StoredVector], stamp) -> _Index | None:
        """Apply loaded rows; None if deletions mean everything must be reloaded."""
        with self._lock:
            base = self._indexes.get(key) if after else None
            index = _Index() if base is None else base
            if after and (base is None or base.stamp[1] != after):
                return None
            fresh = index.grown() if after else _Index()
            fresh.extend(rows)
            if after and len(fresh.rows) != stamp[0]:
                return None  # rows were deleted (or added meanwhile): rebuild
            fresh.stamp = (len(fresh.rows), fresh.rows[-1].id if fresh.rows else 0)
            self._indexes[key] = fresh
            return fresh

    def _index(self, user_id: str | None, session_id: str, stamp) -> _Index:
        key = self._scope(user_id, session_id)
        index, after = self._current(key, stamp)
        if index is not None:
            return index
        load = self.store.load_vectors
        index = self._install(
            key, after, load(self.name, user_id, session_id, after_id=after), stamp
        )
        if index is None:
            index = self._install(key, 0, load(self.name, user_id, session_id), stamp)
        assert index is not None
        return index

    async def _aindex(self, user_id: str | None, session_id: str, stamp) -> _Index:
        key = self._scope(user_id, session_id)
        index, after = self._current(key, stamp)
        if index is not None:
            return index
        load = self.store.aload_vectors
        rows = await load(self.name, user_id, session_id, after_id=after)
        index = self._install(key, after, rows, stamp)
        if index is None:
            index = self._install(key, 0, await load(self.name, user_id, session_id), stamp)
        assert index is not None
        return index

    def _rank(self, index: _Index, query_vector: Any, query: str, max_tokens: int) -> list[str]:
        np = _numpy()
        if not index.rows:
            return []
        q = np.asarray(query_vector, dtype="<f4")
        if q.shape[0] != index.matrix.shape[1]:
            raise ModelError(
                f"the embedder gives {q.shape[0]} dimensions, the stored vectors have "
                f"{index.matrix.shape[1]}; use another block name for another embedder"
            )
        q = q / (float(np.linalg.norm(q)) or 1.0)
        score = np.maximum.reduceat(index.matrix @ q, index.starts)  # each turn's best vector
        hits = self._best(score, index.lexical, query)
        picked = list(hits)
        if self.neighbors:
            for i in hits:
                for d in range(1, self.neighbors + 1):
                    for j in (i - d, i + d):
                        same = 0 <= j < len(index.rows) and (
                            index.rows[j].session_id == index.rows[i].session_id
                        )
                        if same and j not in picked:
                            picked.append(j)
        items = [(index.rows[i].content, index.rows[i].token_count) for i in picked]
        chosen = sorted(picked[c] for c in pack(items, max_tokens))
        return [index.rows[i].content for i in chosen]

    def _best(self, score: Any, lexical: LexicalIndex, query: str) -> list[int]:
        """Positions of the ``top_k`` best turns scoring at least ``min_score``, best first
        (``score``: cosine similarities, raised here by the lexical bonus)."""
        np = _numpy()
        if self.lexical_weight:
            bonus = lexical.relative_array(query, np)
            if bonus is not None:
                score += self.lexical_weight * bonus
        k = min(self.top_k, len(score))
        best = np.argpartition(-score, k - 1)[:k]
        return [int(i) for i in best[np.argsort(-score[best])] if score[i] >= self.min_score]

    def _candidates(self) -> int:
        """Turns native search returns for re-ranking (the lexical bonus can reorder them)."""
        return max(NATIVE_CANDIDATES, 5 * self.top_k)

    def _rank_hits(self, hits: list[SearchHit], query: str) -> list[SearchHit]:
        """Native search's candidates re-ranked as in the process (BM25 over the candidates)."""
        np = _numpy()
        if not hits:
            return []
        lexical = LexicalIndex()
        if self.lexical_weight:
            lexical.extend(h.content for h in hits)
        score = np.fromiter((h.similarity for h in hits), dtype=np.float32, count=len(hits))
        return [hits[i] for i in self._best(score, lexical, query)]

    @staticmethod
    def _pack_hits(picked: list[SearchHit], max_tokens: int) -> list[str]:
        items = [(h.content, h.token_count) for h in picked]
        chosen = sorted((picked[c] for c in pack(items, max_tokens)), key=lambda h: h.id)
        return [h.content for h in chosen]

    def _native_get(self, vector, query, user_id, session_id, budget) -> list[str] | None:
        found = self.store.search_vectors(
            self.name, user_id, session_id, vector, self._candidates()
        )
        if not found:
            return None  # not native, or nothing of this dimension: the process path explains
        hits = self._rank_hits(found, query)
        if self.neighbors and hits:
            hits += self.store.neighbor_vectors(
                self.name, user_id, session_id, hits, self.neighbors
            )
        return self._pack_hits(hits, budget)

    async def _anative_get(self, vector, query, user_id, session_id, budget) -> list[str] | None:
        found = await self.store.asearch_vectors(
            self.name, user_id, session_id, vector, self._candidates()
        )
        if not found:
            return None  # not native, or nothing of this dimension: the process path explains
        hits = self._rank_hits(found, query)
        if self.neighbors and hits:
            hits += await self.store.aneighbor_vectors(
                self.name, user_id, session_id, hits, self.neighbors
            )
        return self._pack_hits(hits, budget)

    def get(
        self, *, query: str | None, user_id: str | None, session_id: str, max_tokens: int
    ) -> list[str]:
        """The stored turns most similar to ``query`` (none without a query)."""
        if not query or not query.strip():
            return []
        budget = min(max_tokens, self.max_tokens)
        stamp = self.store.vector_stamp(self.name, user_id, session_id)
        if stamp[0] == 0:
            return []
        (vector,) = self.embedder.embed([query])
        found = self._native_get(vector, query, user_id, session_id, budget)
        if found is not None:
            return found
        index = self._index(user_id, session_id, stamp)
        return self._rank(index, vector, query, budget)

    async def aget(
        self, *, query: str | None, user_id: str | None, session_id: str, max_tokens: int
    ) -> list[str]:
        if not query or not query.strip():
            return []
        budget = min(max_tokens, self.max_tokens)
        stamp = await self.store.avector_stamp(self.name, user_id, session_id)
        if stamp[0] == 0:
            return []
        (vector,) = await self.embedder.aembed([query])
        found = await self._anative_get(vector, query, user_id, session_id, budget)
        if found is not None:
            return found
        index = await self._aindex(user_id, session_id, stamp)
        return self._rank(index, vector, query, budget)

    def delete_session(self, session_id: str) -> int:
        """Delete the vectors of this session's turns: no session can recall them any more."""
        with self._lock:
            self._indexes.clear()
        return self.store.delete_session_vectors([session_id], block=self.name)

    async def adelete_session(self, session_id: str) -> int:
        with self._lock:
            self._indexes.clear()
        return await self.store.adelete_session_vectors([session_id], block=self.name)

    def delete_user(self, user_id: str) -> int:
        with self._lock:
            self._indexes.pop((user_id, None), None)
        return self.store.delete_user(user_id, block=self.name)

    async def adelete_user(self, user_id: str) -> int:
        with self._lock:
            self._indexes.pop((user_id, None), None)
        return await self.store.adelete_user(user_id, block=self.name)

    def __repr__(self) -> str:
        return f"VectorMemory(name={self.name!r}, top_k={self.top_k})"
