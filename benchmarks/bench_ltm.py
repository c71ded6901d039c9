"""Long-term memory latency: vector recall over 10,000 stored turns, and extraction overhead.

    python -m benchmarks.bench_ltm [--backends sqlite,postgresql,pgvector] [--vectors 10000]
        [--repeat 200] [--out benchmarks/results/ltm.md] [--quick]

Vector recall. One user holds ``--vectors`` stored turns, written directly with
``LongTermStore.add_vectors``: synthetic text (40-85 words drawn from a 5,000-word Zipf
vocabulary, so the BM25 index has realistic postings) with random 384-dimension unit
vectors, the dimension of all-MiniLM-L6-v2, four per turn (the whole turn and three
sentence keys). Queries are embedded by a fake embedder (a
random unit vector per query), so the figures are the library's own cost: the freshness
check against the database, loading rows, cosine over the matrix, BM25, ranking and
packing. The local model's cost to embed one query is measured separately.

- cold: the first ``VectorMemory.get`` of a new instance (loads all rows, builds the
  index), repeated on fresh instances;
- warm: later queries on the same instance (one ``count/max(id)`` query, then in-process
  scoring), hybrid (default) and vector-only;
- after one write: another instance stored one more turn; the next query loads that row.

Extraction overhead. ``ExtractiveMemory.update`` on one flushed group (a user message and
the assistant's reply) with a fake model that answers at once with three facts: what the
block itself costs (reading the user's facts, building the prompt, validating the JSON,
reconciling in one transaction), for new facts and for facts already stored, with 50
facts already known about the user.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from mssql_memory import (
    ExtractiveMemory,
    LongTermStore,
    Message,
    SentenceTransformerEmbedder,
    VectorMemory,
)
from mssql_memory.ltm._common import format_turn
from mssql_memory.ltm.embedders import to_bytes

from .common import (
    Backend,
    RawDB,
    command_line,
    environment_line,
    fmt_ms,
    kept_notes,
    markdown_table,
    parse_list,
    percentile,
    probe,
    resolve_backends,
    unique_name,
    workdir,
    write_report,
)

DIMENSION = 384
#: Vectors per stored turn: the whole turn and three sentence keys (a typical user message).
KEYS_PER_TURN = 4
USER = "bench-user"
_WORDS = (
    "meeting report budget deadline dinner recipe garden weekend train ticket doctor "
    "appointment holiday flight hotel school teacher homework project launch review "
    "coffee bakery running marathon knee physio insurance mortgage rent landlord "
    "wedding sister cousin birthday present concert tickets museum exhibition painting "
    "kitchen boiler plumber invoice tax refund bank savings car garage inspection brakes "
    "puppy vet walk park weather rain sunshine laptop password printer upgrade"
).split()
_SYLLABLES = "ka lo mi ren to sa vel dor pin qua ste bri nu fal gor ith".split()


def _vocabulary(size: int = 5000) -> tuple[list[str], list[float]]:
    """Everyday words plus made-up ones, with Zipf weights (word ``r`` has weight ``1/r``),
    so postings have realistic lengths: a few very common terms, a long tail of rare ones."""
    rng = random.Random(5)
    words = list(_WORDS)
    while len(words) < size:
        word = "".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4)))
        if word not in words:
            words.append(word)
    rng.shuffle(words)
    return words, [1 / (rank + 1) for rank in range(len(words))]


VOCABULARY, WEIGHTS = _vocabulary()


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(VOCABULARY, WEIGHTS, k=rng.randint(low, high))).capitalize()


class FakeEmbedder:
    """A random unit vector per text (seeded by the text), in ``DIMENSION`` dimensions."""

    dimension = DIMENSION

    def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = []
        for text in texts:
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
            v = np.random.default_rng(seed).standard_normal(DIMENSION).astype("<f4")
            out.append(v / np.linalg.norm(v))
        return out

    async def aembed(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.embed(texts)


def synthetic_rows(count: int, rng: random.Random, start: int = 0) -> list[dict[str, Any]]:
    """``count`` stored turns of one user: dated chat text and random unit vectors."""
    base = datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)
    shape = (count, KEYS_PER_TURN, DIMENSION)
    vectors = np.random.default_rng(rng.randrange(2**32)).standard_normal(shape)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    rows = []
    for i in range(count):
        n = start + i
        at = base + timedelta(minutes=7 * n)
        user = sentence(rng, 15, 35) + "?"
        reply = sentence(rng, 25, 50) + "."
        turn = [Message("user", user, created_at=at), Message("assistant", reply, created_at=at)]
        content = format_turn(turn, f"s{n // 20}")
        rows.append(
            {
                "user_id": USER,
                "session_id": f"s{n // 20}",
                "first_seq": 2 * n + 1,
                "last_seq": 2 * n + 2,
                "content": content,
                "token_count": len(content) // 4,
                "dimension": DIMENSION,
                "embedding": to_bytes(vectors[i].reshape(-1)),
            }
        )
    return rows


def fill(store: LongTermStore, count: int, rng: random.Random) -> float:
    """Store ``count`` turns in batches of 1,000; seconds taken."""
    start = time.perf_counter()
    for first in range(0, count, 1000):
        store.add_vectors("vector_memory", synthetic_rows(min(1000, count - first), rng, first))
    return time.perf_counter() - start


def timings(fn: Callable[[], Any], repeat: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - start) / 1e6)
    return out


def p50_p95(ms: Sequence[float]) -> tuple[str, str]:
    return fmt_ms(statistics.median(ms)), fmt_ms(percentile(ms, 95))


def row(backend: str, label: str, ms: Sequence[float], *, cold: bool = False) -> tuple:
    """A table row; a cold start has too few samples for a p95."""
    p50, p95 = p50_p95(ms)
    return (backend, label, len(ms), p50, "-" if cold else p95)


@dataclass
class VectorResult:
    backend: str
    fill_s: float
    cold: list[float]
    warm_hybrid: list[float]
    warm_vector: list[float]
    after_write: list[float]
    hits: int


def bench_vectors(backend: Backend, count: int, repeat: int, cold_runs: int) -> VectorResult:
    rng = random.Random(11)
    prefix = unique_name("ltm")
    store = LongTermStore(backend.url_for("ltm"), table_prefix=prefix)
    writer_store = LongTermStore(backend.url_for("ltm"), table_prefix=prefix)
    try:
        seconds = fill(store, count, rng)
        queries = [sentence(rng, 6, 12) + "?" for _ in range(64)]
        embedder = FakeEmbedder()
        kwargs = {"query": None, "user_id": USER, "session_id": "now", "max_tokens": 800}

        def ask(vm: VectorMemory) -> Callable[[], list[str]]:
            it = iter(range(10**9))
            return lambda: vm.get(**{**kwargs, "query": queries[next(it) % len(queries)]})

        cold = []
        for _ in range(cold_runs):
            fresh = VectorMemory(
                embedder, store=LongTermStore(backend.url_for("ltm"), table_prefix=prefix)
            )
            cold.append(timings(ask(fresh), 1, warmup=0)[0])
            fresh.store.close()
        hybrid = VectorMemory(embedder, store=store, min_score=-1.0)
        vector_only = VectorMemory(embedder, store=store, lexical_weight=0.0, min_score=-1.0)
        warm_hybrid = timings(ask(hybrid), repeat)
        warm_vector = timings(ask(vector_only), repeat)
        hits = len(hybrid.get(**{**kwargs, "query": queries[0]}))

        after = []
        extra = synthetic_rows(cold_runs * 5, rng, count)
        for i in range(cold_runs * 5):
            writer_store.add_vectors("vector_memory", [extra[i]])
            after.append(timings(ask(hybrid), 1, warmup=0)[0])
        return VectorResult(backend.name, seconds, cold, warm_hybrid, warm_vector, after, hits)
    finally:
        store.drop_schema()
        store.close()
        writer_store.close()


def model_query_ms(repeat: int) -> list[float] | None:
    """Embedding one query with the local all-MiniLM-L6-v2 (None if it cannot load)."""
    try:
        model = SentenceTransformerEmbedder()
        model.embed(["warm up"])
    except Exception as e:  # the figures without the model are still useful
        print(f"local model unavailable: {e}", file=sys.stderr)
        return None
    queries = [f"When is my sister's wedding, question {i}?" for i in range(repeat)]
    it = iter(queries)
    return timings(lambda: model.embed([next(it)]), repeat - 3)


@dataclass
class ExtractResult:
    backend: str
    new_facts: list[float]
    known_facts: list[float]


def bench_extraction(backend: Backend, repeat: int) -> ExtractResult:
    prefix = unique_name("ltx")
    store = LongTermStore(backend.url_for("ltx"), table_prefix=prefix)
    counter = iter(range(10**9))
    state = {"fresh": True}

    def model(messages: Sequence[Message]) -> str:
        n = next(counter) if state["fresh"] else 0
        return json.dumps(
            {
                "facts": [
                    {"subject": f"topic_{n}", "fact": f"The user mentioned topic {n}."},
                    {"subject": "team", "fact": f"The user works in team {n % 7}."},
                    {"subject": None, "fact": f"The user likes item {n}."},
                ]
            }
        )

    try:
        block = ExtractiveMemory(model, store=store, max_facts=10_000)
        preload = [
            {"subject": f"known_{i}", "fact": f"Known fact number {i} about the user."}
            for i in range(50)
        ]
        ExtractiveMemory(lambda m: json.dumps({"facts": preload}), store=store).update(
            [Message("user", "x", seq=1)], user_id=USER, session_id="s0"
        )
        group = [
            Message("user", "My team moved to the new office and I like the coffee.", seq=2),
            Message("assistant", "Congratulations on the move! Enjoy the coffee.", seq=3),
        ]

        def update() -> None:
            block.update(group, user_id=USER, session_id="s1")

        new = timings(update, repeat)
        state["fresh"] = False
        known = timings(update, repeat)
        return ExtractResult(backend.name, new, known)
    finally:
        store.drop_schema()
        store.close()


def server_version(backend: Backend) -> str:
    raw = RawDB(backend.url_for("probe"))
    try:
        return raw.server_version()
    finally:
        raw.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql,pgvector")
    parser.add_argument("--vectors", type=int, default=None, help="default 10,000 (quick: 1,000)")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/ltm.md")
    parser.add_argument("--quick", action="store_true", help="1,000 vectors, few samples")
    parser.add_argument("--no-model", action="store_true", help="skip the local model timing")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.cold_runs = 20, 2
    if args.vectors is None:
        args.vectors = 1000 if args.quick else 10_000
    vector_rows, extract_rows, versions = [], [], []
    with workdir() as tmp:
        for backend in resolve_backends(parse_list(args.backends), tmp):
            why = probe(backend)
            if why is not None:
                print(f"skipping {backend.name}: {why}", file=sys.stderr)
                continue
            versions.append(server_version(backend))
            print(f"{backend.name}: vectors...", file=sys.stderr)
            v = bench_vectors(backend, args.vectors, args.repeat, args.cold_runs)
            vector_rows += [
                row(v.backend, "cold: first query of a new instance", v.cold, cold=True),
                row(v.backend, "warm, hybrid (default)", v.warm_hybrid),
                row(v.backend, "warm, vector only", v.warm_vector),
                row(v.backend, "after another instance wrote 1 row", v.after_write),
            ]
            print(f"  {args.vectors} rows in {v.fill_s:.1f}s, {v.hits} hits", file=sys.stderr)
            print(f"{backend.name}: extraction...", file=sys.stderr)
            x = bench_extraction(backend, args.repeat)
            extract_rows += [
                row(x.backend, "3 new facts (3 inserts, 1 supersede)", x.new_facts),
                row(x.backend, "3 facts already stored (no-op)", x.known_facts),
            ]
    model_ms = None if args.no_model else model_query_ms(min(args.repeat, 50))
    model_line = "The local model was not timed."
    if model_ms:
        p50, p95 = p50_p95(model_ms)
        model_line = (
            f"The local all-MiniLM-L6-v2 (CPU) takes {p50} ms (p50; p95 {p95} ms) to embed "
            "one query: add it to the figures above for recall with the real model."
        )
    text = "\n".join(
        [
            "# Long-term memory latency",
            "",
            f"`{command_line()}` — {environment_line(versions)}",
            "",
            f"## Vector recall: one user, {args.vectors:,} stored turns",
            "",
            "`VectorMemory.get` (defaults: top_k=10, max_tokens=800; `min_score=-1` so every "
            "query ranks its top 10 and packs what fits, about 5 turns) with a fake embedder: "
            "random "
            f"{DIMENSION}-d unit vectors, {KEYS_PER_TURN} per turn (whole turn + 3 sentence "
            "keys), written directly with `LongTermStore.add_vectors`, so the figures are the "
            "library's own cost. " + model_line,
            "",
            markdown_table(["backend", "query", "n", "p50 ms", "p95 ms"], vector_rows),
            "",
            "A warm query is one round trip (count and highest id of the user's rows, the "
            "freshness check), then in-process work: cosine over the ~40,000 vectors, BM25 over "
            "numpy postings, ranking, packing. A cold query loads every row (60 MB of vectors "
            "here) and builds the index, once per process and user, and again after a deletion. "
            "After another instance's write, only the new row is loaded; the index grows "
            "without copying its matrix or postings. `pgvector` (PostgreSQL with the vector "
            "extension, a private server from the `pgserver` package): the database ranks the "
            "user's keys (`<=>`, exact: the nearest keys by a top-n sort, then each turn's best) "
            "and returns 50 candidates, re-ranked with the lexical bonus in the process; "
            "nothing is held in memory, so a cold query costs about what a warm one does.",
            "",
            "## Extraction overhead per flushed group",
            "",
            "`ExtractiveMemory.update` on one group (user message + reply) with a fake model "
            "that answers at once with three facts; the user already has 50 facts.",
            "",
            markdown_table(["backend", "update", "n", "p50 ms", "p95 ms"], extract_rows),
        ]
    )
    print(text)
    write_report(args.out, text + kept_notes(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
