"""Models that fail, time out or answer garbage, again and again, during summarize and extract.

A seeded flaky summarizer, fact extractor and embedder fail most calls in every way a
remote model does (an exception, a client timeout, a call slower than the strategy's
timeout, an empty or non-text answer, malformed JSON, vectors of the wrong count or
size). After each add: the only errors are ``ModelError`` / ``BlockError``; the history
holds every message ever added, in order; a failed overflow changed nothing but the new
messages; the window, counters, summaries and block marks stay consistent; the context
stays within budget. A healthy model finally completes the pending overflow.

Two regressions are pinned here too: a block failing while ``get`` recalls raises
``BlockError`` (it leaked the embedder's own exception), and vectors of the wrong size
are refused instead of stored (stored, they broke every later recall of the user).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from conftest import backend_params
from hr_scenario import summarize_text
from mssql_memory import (
    AgentMemory,
    BlockError,
    ExtractiveMemory,
    FlushToLongTerm,
    HashingEmbedder,
    Message,
    ModelError,
    Summarize,
    VectorMemory,
)

from .helpers import REF, check_integrity, extract_refs, make_batch, record, scaled

pytestmark = pytest.mark.reliability

FAULTS = scaled(20, 100)
FAULT_BACKENDS = backend_params(("sqlite", "postgresql"))
#: Summarize's timeout; a "slow" call answers after twice as long
TIMEOUT = 0.2


class Flaky:
    """Decides each call's fate with a seeded generator; counts the faults it injected."""

    kinds: tuple[str, ...] = ()

    def __init__(self, seed: int, fault_rate: float = 0.6) -> None:
        self.rng = random.Random(seed)
        self.fault_rate = fault_rate
        self.faults: Counter[str] = Counter()
        #: faults injected while ``get`` recalled (not counted in ``injected``)
        self.recall_faults: Counter[str] = Counter()
        self.recalling = False
        self.healthy = False
        self._lock = threading.Lock()

    def draw(self) -> str:
        with self._lock:
            if self.healthy or self.rng.random() >= self.fault_rate:
                return "ok"
            kind = self.rng.choice(self.kinds)
            (self.recall_faults if self.recalling else self.faults)[kind] += 1
            return kind

    @property
    def injected(self) -> int:
        return sum(self.faults.values())


class FlakySummarizer(Flaky):
    """The fake summarizer (``[covered=N]``), failing as a remote model does."""

    kinds = ("raise", "slow", "empty", "non-text", "client-timeout", "model-error")

    def _answer(self, kind: str, messages: Sequence[Message]) -> Any:
        if kind == "raise":
            raise RuntimeError("the summarizer is down")
        if kind == "client-timeout":
            raise TimeoutError("read timed out")
        if kind == "model-error":
            raise ModelError("rate limited")
        if kind == "empty":
            return "  \n "
        if kind == "non-text":
            return {"summary": "not a string"}
        text = summarize_text(messages)
        if self.rng.random() < 0.2:  # a long-winded answer: cut to the summary budget
            text += " and so on" * 400
        return text

    def generate(self, messages: Sequence[Message]) -> Any:
        kind = self.draw()
        if kind == "slow":
            time.sleep(2 * TIMEOUT)
        return self._answer(kind, messages)

    async def agenerate(self, messages: Sequence[Message]) -> Any:
        kind = self.draw()
        if kind == "slow":
            await asyncio.sleep(2 * TIMEOUT)
        return self._answer(kind, messages)


class FlakyExtractor(Flaky):
    """The deterministic ref extractor, failing or answering garbage. Records the refs of
    requests whose retry was garbage too (the block skips those, by design)."""

    kinds = ("raise", "client-timeout", "malformed", "non-text", "model-error")

    def __init__(self, seed: int, fault_rate: float = 0.6) -> None:
        super().__init__(seed, fault_rate)
        self.skipped: set[str] = set()

    def _answer(self, kind: str, messages: Sequence[Message]) -> Any:
        if kind == "raise":
            raise RuntimeError("the extractor is down")
        if kind == "client-timeout":
            time.sleep(0.01)
            raise TimeoutError("read timed out")
        if kind == "model-error":
            raise ModelError("rate limited")
        if kind in ("malformed", "non-text"):
            if len(messages) > 2:  # the block's retry: it will skip these messages
                conversation = messages[1].content.split("Conversation:", 1)[-1]
                self.skipped.update(REF.findall(conversation))
            return "Sure! The user likes {facts: [" if kind == "malformed" else 42
        return extract_refs(messages)

    def generate(self, messages: Sequence[Message]) -> Any:
        return self._answer(self.draw(), messages)

    async def agenerate(self, messages: Sequence[Message]) -> Any:
        return self._answer(self.draw(), messages)


class FlakyEmbedder(Flaky):
    """The hashing embedder, failing or returning vectors of the wrong count or size."""

    kinds = ("raise", "client-timeout", "too-few", "ragged", "wrong-size")

    def __init__(self, seed: int, fault_rate: float = 0.6) -> None:
        super().__init__(seed, fault_rate)
        self.inner = HashingEmbedder(64)
        self.dimension = 64

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        kind = self.draw()
        if kind == "raise":
            raise RuntimeError("the embedder is down")
        if kind == "client-timeout":
            raise TimeoutError("read timed out")
        vectors = self.inner.embed(texts)
        if kind == "too-few":
            return vectors[:-1]
        if kind == "ragged":
            return [v[: 32 + i % 2] for i, v in enumerate(vectors)]
        if kind == "wrong-size":
            return [v[:32] for v in vectors]
        return vectors

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed(texts)


def _state(memory: AgentMemory, session: str) -> tuple[list[tuple[str, str]], str | None]:
    state = memory.store.get_session(session)
    history = [(m.id, m.status) for m in memory.history(session)]
    return history, state.summary.content if state.summary else None


async def _add(memory: AgentMemory, api: str, session: str, batch: list[Message]) -> None:
    if api == "async":
        await memory.aadd(session, batch, user_id="faulty-user")
    else:
        memory.add(session, batch, user_id="faulty-user")


def _check_window(
    memory: AgentMemory, session: str, added: list[str], embedder: Flaky | None = None
) -> bool:
    """Nothing lost, the window is exactly the active messages, the context fits (False if
    the context could not be built: a block failed to recall, with a typed error)."""
    history = memory.history(session)
    assert [m.id for m in history] == added, "a message was lost, duplicated or reordered"
    window = [m.id for m in memory.store.get_window(session)]
    assert window == [m.id for m in history if m.status == "active"]
    try:
        if embedder is not None:
            embedder.recalling = True
        context = memory.get(session)
    except BlockError as e:  # the embedder failed while recalling
        assert isinstance(e.__cause__, (RuntimeError, TimeoutError, ValueError)), e
        return False
    except ModelError:  # the embedder answered vectors of another size
        return False
    finally:
        if embedder is not None:
            embedder.recalling = False
    assert sum(m.token_count or 0 for m in context) <= memory.token_limit
    return True


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("backend", FAULT_BACKENDS)
async def test_summarize_survives_failing_and_slow_models(
    backend: str, api: str, make_store: Any
) -> None:
    """FAULTS model faults during Summarize: ModelError each time, nothing changed but the new
    messages, nothing lost, summaries consistent; a healthy model then catches up."""
    store = make_store(backend)
    model = FlakySummarizer(seed=11)
    summarize = Summarize(model, keep_recent=4, max_summary_tokens=40, timeout=TIMEOUT)
    memory = AgentMemory(store, token_limit=260, overflow=summarize)
    session, rng = f"faults-{api}", random.Random(7)
    added: list[str] = []
    outcomes: Counter[str] = Counter()
    index = 0
    while model.injected < FAULTS:
        index += 1
        assert index < 20 * FAULTS, "the model was hardly ever called"
        batch = make_batch("s", index, rng)
        before_history, before_summary = _state(memory, session)
        try:
            await _add(memory, api, session, batch)
            outcomes["applied or not needed"] += 1
        except ModelError:
            outcomes["ModelError"] += 1
            history, summary = _state(memory, session)
            assert history == [*before_history, *[(m.id, "active") for m in batch]]
            assert summary == before_summary
        added += [m.id for m in batch]
        _check_window(memory, session, added)
        check_integrity(store, session)
    model.healthy = True
    batch = make_batch("s", index + 1, rng)
    await _add(memory, api, session, batch)
    added += [m.id for m in batch]
    _check_window(memory, session, added)
    stats = check_integrity(store, session)
    assert memory.store.get_session(session).summary is not None
    assert outcomes["ModelError"] > 0
    record(
        f"model-faults[summarize-{backend}-{api}]",
        f"{model.injected} faults injected ({dict(model.faults)}), outcomes {dict(outcomes)}, "
        f"nothing lost: {stats}",
    )


@pytest.mark.parametrize("backend", FAULT_BACKENDS)
def test_summarize_on_error_trim_keeps_going(backend: str, make_store: Any) -> None:
    """Summarize(on_error="trim"): faults never raise; the groups are trimmed instead, and the
    summaries still cover exactly the messages they summarized."""
    store = make_store(backend)
    model = FlakySummarizer(seed=12)
    summarize = Summarize(
        model, keep_recent=4, max_summary_tokens=40, timeout=TIMEOUT, on_error="trim"
    )
    memory = AgentMemory(store, token_limit=260, overflow=summarize)
    session, rng = "faults-trim", random.Random(8)
    added: list[str] = []
    index = 0
    while model.injected < FAULTS // 2:
        index += 1
        assert index < 20 * FAULTS
        batch = make_batch("t", index, rng)
        memory.add(session, batch)  # never raises: a failed summary trims instead
        added += [m.id for m in batch]
        _check_window(memory, session, added)
    stats = check_integrity(store, session)
    assert stats["archived"] > 0 and stats["summarized"] > 0
    record(
        f"model-faults[summarize-trim-{backend}]",
        f"{model.injected} faults, no exception, trimmed instead: {stats}",
    )


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("backend", FAULT_BACKENDS)
async def test_flush_survives_failing_extractor_and_embedder(
    backend: str, api: str, make_store: Any, make_ltm_for: Any
) -> None:
    """FAULTS extractor / embedder faults during FlushToLongTerm: BlockError each time, the
    messages stay in the window, nothing lost, no block fed twice or marked beyond what
    it stored; healthy models then flush everything pending."""
    store = make_store(backend)
    ltm = make_ltm_for(store)
    extractor, embedder = FlakyExtractor(seed=21, fault_rate=0.4), FlakyEmbedder(seed=22)
    blocks = [
        ExtractiveMemory(extractor, store=ltm, max_facts=1_000_000),
        VectorMemory(embedder, store=ltm),
    ]
    memory = AgentMemory(store, token_limit=420, overflow=FlushToLongTerm(blocks))
    session, rng = f"flush-faults-{api}", random.Random(9)
    added: list[str] = []
    outcomes: Counter[str] = Counter()
    index = 0

    def injected() -> int:
        return extractor.injected + embedder.injected

    while injected() < FAULTS:
        index += 1
        assert index < 20 * FAULTS, "the blocks were hardly ever called"
        batch = make_batch("f", index, rng)
        before, _ = _state(memory, session)
        try:
            await _add(memory, api, session, batch)
            outcomes["flushed or not needed"] += 1
        except BlockError as e:
            outcomes[f"BlockError<-{type(e.__cause__).__name__}"] += 1
            history, _ = _state(memory, session)
            assert history == [*before, *[(m.id, "active") for m in batch]]
        added += [m.id for m in batch]
        if not _check_window(memory, session, added, embedder):
            outcomes["get failed (typed)"] += 1
        check_integrity(
            store, session, ltm=ltm, user_id="faulty-user", skipped_refs=extractor.skipped
        )
    extractor.healthy = embedder.healthy = True
    memory.compact(session)
    stats = check_integrity(
        store, session, ltm=ltm, user_id="faulty-user", skipped_refs=extractor.skipped
    )
    assert stats["archived"] > 0
    assert len(blocks[0].facts("faulty-user")) == stats["facts"]
    assert _check_window(memory, session, added), "recall still fails with healthy models"
    assert memory.get(session, query="look up a topic please")
    record(
        f"model-faults[flush-{backend}-{api}]",
        f"{injected()} faults injected (extractor {dict(extractor.faults)}, embedder "
        f"{dict(embedder.faults)}; {embedder.recall_faults.total()} more while recalling), "
        f"outcomes {dict(outcomes)}, "
        f"{len(extractor.skipped)} refs skipped after two malformed answers (by design), {stats}",
    )


@pytest.mark.parametrize("backend", backend_params(("memory", "sqlite")))
async def test_a_block_failing_to_recall_raises_block_error(
    backend: str, make_store: Any, make_ltm_for: Any, tmp_path: Any
) -> None:
    """An embedder that fails while ``get`` recalls surfaces as BlockError chained to its
    cause, sync and async (never the embedder's own exception); nothing is changed."""
    store = make_store(backend)
    ltm = make_ltm_for(make_store("sqlite"))
    embedder = FlakyEmbedder(seed=1, fault_rate=0.0)
    vector = VectorMemory(embedder, store=ltm, min_score=-1.0)
    memory = AgentMemory(store, token_limit=420, overflow=FlushToLongTerm([vector]))
    rng = random.Random(3)
    for index in range(12):
        memory.add("recall", make_batch("r", index, rng), user_id="u")
    assert ltm.vector_stamp("vector_memory", "u", "recall")[0] > 0
    before = [(m.id, m.status) for m in memory.history("recall")]
    embedder.healthy, embedder.fault_rate, embedder.kinds = False, 1.0, ("raise",)
    with pytest.raises(BlockError, match="vector_memory") as info:
        memory.get("recall", query="topic")
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(BlockError, match="vector_memory") as info:
        await memory.aget("recall", query="topic")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert [(m.id, m.status) for m in memory.history("recall")] == before
    embedder.fault_rate = 0.0
    assert memory.get("recall", query="topic")


@pytest.mark.parametrize("kind", ["wrong-size", "ragged"])
async def test_vectors_of_the_wrong_size_are_refused_not_stored(
    kind: str, make_store: Any, make_ltm_for: Any
) -> None:
    """An embedder answering vectors of another size than its ``dimension`` (or of mixed sizes)
    fails the flush with BlockError <- ModelError and stores nothing, sync and async — stored,
    they would make every later recall of the user fail; healthy answers then work."""
    store = make_store("sqlite")
    ltm = make_ltm_for(store)
    embedder = FlakyEmbedder(seed=1, fault_rate=0.0)
    vector = VectorMemory(embedder, store=ltm, min_score=-1.0)
    memory = AgentMemory(store, token_limit=420, overflow=FlushToLongTerm([vector]))
    rng = random.Random(4)
    embedder.fault_rate, embedder.kinds = 1.0, (kind,)
    failures = 0
    for index in range(12):
        try:
            if index % 2:
                await memory.aadd("sizes", make_batch("z", index, rng), user_id="u")
            else:
                memory.add("sizes", make_batch("z", index, rng), user_id="u")
        except BlockError as e:
            assert isinstance(e.__cause__, ModelError), e.__cause__
            failures += 1
    assert failures > 0
    assert ltm.vector_stamp("vector_memory", "u", "sizes") == (0, 0)
    embedder.fault_rate = 0.0
    memory.compact("sizes")
    assert ltm.vector_stamp("vector_memory", "u", "sizes")[0] > 0
    assert memory.get("sizes", query="topic")
