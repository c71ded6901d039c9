"""VectorMemory with the local all-MiniLM-L6-v2 model: storage, recall, scoping, freshness."""

from __future__ import annotations

import pytest
from ltm_helpers import KeywordEmbedder, stored, turn
from mssql_memory import AgentMemory, FlushToLongTerm, LongTermStore, ModelError, VectorMemory
from mssql_memory.ltm.relevance import LexicalIndex
from sqlalchemy import func, select

pytest_plugins = ["ltm_fixtures"]

TOPICS = [
    (
        "My sister's wedding is in Lisbon on June 3rd, so I need to book flights soon.",
        "How exciting! Flights to Lisbon in early June fill up fast, so book early.",
    ),
    (
        "The vet said my dog Rex needs his vaccine booster next month.",
        "Good to know. Put a reminder in your calendar for Rex's booster.",
    ),
    (
        "I finally filed my tax return; the refund should arrive in April.",
        "Well done, that's a relief to have it submitted.",
    ),
    (
        "I'm training for the Berlin marathon and running 50 km a week.",
        "Impressive! Remember to taper in the last three weeks.",
    ),
    (
        "Our team switched from Jira to Linear for project tracking.",
        "Linear is popular for its speed and keyboard shortcuts.",
    ),
    (
        "I've been learning to bake sourdough bread on weekends.",
        "Sourdough takes patience; a healthy starter makes all the difference.",
    ),
]
ALL = dict(top_k=100, min_score=-1.0, max_tokens=100_000)


def conversation(pairs=TOPICS, first_seq: int = 1, day: int = 0):
    messages = []
    for i, (u, a) in enumerate(pairs):
        messages += turn(u, a, minutes=(day * 24 + i) * 60)
    return stored(messages, first_seq)


def vector_rows(lts: LongTermStore) -> int:
    v = lts.tables.vectors
    with lts.engines.sync.connect() as conn:
        return conn.execute(select(func.count()).select_from(v)).scalar_one()


def recall(vm: VectorMemory, query: str, user: str | None = "u", session: str = "s1") -> list[str]:
    return vm.get(query=query, user_id=user, session_id=session, max_tokens=100_000)


def test_update_is_idempotent_per_turn(ltm_backend, make_ltm, embedder):
    """Each turn is stored once: re-flushes, overlaps and a second instance add no rows."""
    lts = make_ltm(ltm_backend)
    vm = VectorMemory(embedder, store=lts)
    messages = conversation()
    vm.update(messages[:4], user_id="u", session_id="s1")
    assert vector_rows(lts) == 2
    vm.update(messages[:8], user_id="u", session_id="s1")
    assert vector_rows(lts) == 4
    vm.update(messages[:8], user_id="u", session_id="s1")
    other = VectorMemory(embedder, store=make_ltm(ltm_backend, table_prefix=lts.table_prefix))
    other.update(messages, user_id="u", session_id="s1")
    assert vector_rows(lts) == len(TOPICS)
    rows = lts.load_vectors("vector_memory", "u", "s1")
    assert [(r.first_seq, r.last_seq) for r in rows] == [(i, i + 1) for i in range(1, 13, 2)]
    assert rows[0].content.startswith("[2025-03-03 09:00 UTC, session s1]\nuser: My sister's")
    assert "\nassistant: How exciting!" in rows[0].content  # verbatim, dated, with speakers


@pytest.mark.parametrize("lexical_weight", [0.0, 0.3])
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Which city is my sibling getting married in?", "sister's wedding"),
        ("When is my pet due for its shots?", "dog Rex"),
        ("How is my preparation for the race in Germany going?", "Berlin marathon"),
        ("What tool do we use now to track our work tickets?", "Jira to Linear"),
        ("Any tips for my homemade loaves?", "sourdough"),
    ],
)
def test_recall_finds_the_turn_for_a_paraphrased_query(
    make_ltm, embedder, query, expected, lexical_weight
):
    """A question worded differently from the stored turn still recalls it first."""
    vm = VectorMemory(embedder, store=make_ltm("sqlite"), top_k=1, lexical_weight=lexical_weight)
    vm.update(conversation(), user_id="u", session_id="s1")
    (hit,) = recall(vm, query)
    assert expected in hit


def test_recall_respects_top_k_min_score_and_budget(make_ltm, embedder):
    """At most top_k turns, none under min_score, within the token budget, oldest first."""
    lts = make_ltm("sqlite")
    VectorMemory(embedder, store=lts).update(conversation(), user_id="u", session_id="s1")
    two = VectorMemory(embedder, store=lts, top_k=2)
    hits = recall(two, "wedding flights to Lisbon and the dog's vaccine")
    assert len(hits) == 2 and "wedding" in hits[0] and "Rex" in hits[1]
    strict = VectorMemory(embedder, store=lts, min_score=0.95)
    assert recall(strict, "quarterly revenue forecast spreadsheet") == []
    one_turn = lts.load_vectors("vector_memory", "u", "s1")[0].token_count
    tight = VectorMemory(embedder, store=lts, top_k=6, max_tokens=one_turn + 2)
    assert len(recall(tight, "wedding flights dog marathon bread taxes")) == 1
    assert recall(two, "") == [] and recall(two, None) == []


def test_neighbors_bring_the_adjacent_turns(make_ltm, embedder):
    """With neighbors=1 the turns around a hit (same session) come along, in order."""
    lts = make_ltm("sqlite")
    vm = VectorMemory(embedder, store=lts, top_k=1, neighbors=1)
    vm.update(conversation(), user_id="u", session_id="s1")
    hits = recall(vm, "Berlin marathon training")
    assert len(hits) == 3
    assert "tax return" in hits[0] and "marathon" in hits[1] and "Linear" in hits[2]


def test_recall_is_restricted_to_the_user(ltm_backend, make_ltm, embedder):
    """User A never gets user B's turns, however closely B's turn matches the query."""
    lts = make_ltm(ltm_backend)
    vm = VectorMemory(embedder, store=lts, min_score=-1.0, top_k=50)
    vm.update(conversation(TOPICS[:3]), user_id="alice", session_id="a1")
    secret = ("My locker code at the gym is 4417.", "I won't tell anyone.")
    vm.update(conversation([secret, *TOPICS[3:]]), user_id="bob", session_id="b1")
    for user, session in (("alice", "a1"), ("alice", "b1"), ("carol", "b1")):
        hits = recall(vm, "What is my locker code at the gym?", user, session)
        assert not any("4417" in h for h in hits)
        assert not any("marathon" in h for h in hits)
    assert len(recall(vm, "gym", "alice", "a1")) == 3
    assert "4417" in recall(vm, "What is my locker code at the gym?", "bob", "zzz")[0]


def test_vectors_of_a_session_without_user_stay_in_that_session(ltm_backend, make_ltm, embedder):
    """Without a user, a session recalls only its own turns, and no user recalls them."""
    lts = make_ltm(ltm_backend)
    vm = VectorMemory(embedder, store=lts, **{k: v for k, v in ALL.items() if k != "max_tokens"})
    vm.update(conversation(TOPICS[:2]), user_id=None, session_id="anon1")
    vm.update(conversation(TOPICS[2:4]), user_id=None, session_id="anon2")
    vm.update(conversation(TOPICS[4:]), user_id="u", session_id="anon1x")
    first = recall(vm, "wedding", None, "anon1")
    assert len(first) == 2 and all("session anon1]" in h for h in first)
    second = recall(vm, "wedding", None, "anon2")
    assert len(second) == 2 and all("session anon2]" in h for h in second)
    assert recall(vm, "wedding", None, "anon3") == []
    mine = recall(vm, "wedding", "u", "anon1")
    assert len(mine) == 2 and all("session anon1x]" in h for h in mine)


def test_the_index_is_never_stale_across_instances(ltm_backend, make_ltm):
    """Instance A sees every row instance B adds or deletes, at its very next query."""
    lts_a = make_ltm(ltm_backend)
    lts_b = make_ltm(ltm_backend, table_prefix=lts_a.table_prefix)
    emb = KeywordEmbedder()
    a = VectorMemory(emb, store=lts_a, top_k=100, min_score=-1.0)
    b = VectorMemory(emb, store=lts_b, top_k=100, min_score=-1.0)

    def seen() -> set[str]:
        return {h.split("\nuser: ")[1].split("\n")[0] for h in recall(a, "anything")}

    def truth() -> set[str]:
        rows = lts_a.load_vectors("vector_memory", "u", "x")
        return {r.content.split("\nuser: ")[1].split("\n")[0] for r in rows}

    b.update(conversation(TOPICS[:2]), user_id="u", session_id="s1")
    assert seen() == truth() and len(truth()) == 2
    b.update(conversation(TOPICS[2:3], first_seq=5), user_id="u", session_id="s1")
    assert seen() == truth() and len(truth()) == 3  # grown: loaded incrementally
    lts_b.delete_session_vectors(["s1"])
    b.update(conversation(TOPICS[3:4]), user_id="u", session_id="s2")
    assert seen() == truth() and len(truth()) == 1  # shrunk
    b.update(conversation(TOPICS[:1]), user_id="u", session_id="s3")
    assert seen() == truth()
    # delete one session and add more turns, so the count still grows: no deleted row survives
    lts_b.delete_session_vectors(["s2"])
    b.update(conversation(TOPICS[4:6]), user_id="u", session_id="s4")
    assert seen() == truth() and len(truth()) == 3
    b.delete_user("u")
    assert recall(a, "anything") == []


def test_delete_user_purges_that_users_vectors_only(ltm_backend, make_ltm, embedder):
    """delete_user removes every vector of the user; other users keep theirs."""
    lts = make_ltm(ltm_backend)
    vm = VectorMemory(embedder, store=lts)
    vm.update(conversation(TOPICS[:3]), user_id="alice", session_id="a1")
    vm.update(conversation(TOPICS[3:]), user_id="bob", session_id="b1")
    assert recall(vm, "wedding in Lisbon", "alice")
    assert vm.delete_user("alice") == 3
    assert lts.load_vectors("vector_memory", "alice", "a1") == []
    assert recall(vm, "wedding in Lisbon", "alice") == []
    assert len(lts.load_vectors("vector_memory", "bob", "b1")) == 3


def test_only_evicted_turns_are_embedded(make_store, make_ltm, embedder):
    """FlushToLongTerm stores exactly the archived turns, none still in the window."""
    sql = make_store("sqlite")
    lts = make_ltm("sqlite", source=sql)
    vm = VectorMemory(embedder, store=lts)
    memory = AgentMemory(
        sql, token_limit=500, memory_token_limit=200, overflow=FlushToLongTerm([vm])
    )
    for i in range(3):
        for u, a in TOPICS:
            memory.add("s1", turn(f"{u} ({i})", a), user_id="u")
    rows = lts.load_vectors("vector_memory", "u", "s1")
    window = sql.get_window("s1")
    assert rows and window
    assert max(r.last_seq for r in rows) < min(m.seq for m in window)
    archived = [m for m in memory.history("s1") if m.seq < window[0].seq]
    assert sum(r.last_seq - r.first_seq + 1 for r in rows) == len(archived)
    context = memory.get("s1", query="wedding in Lisbon")
    memory_text = next(m.content for m in context if "<vector_memory>" in m.content)
    assert not any(m.content in memory_text for m in window if m.role == "user")


async def test_async_update_and_get(amake_ltm, embedder):
    """aupdate and aget store and recall like update and get."""
    vm = VectorMemory(embedder, store=amake_ltm("sqlite"), top_k=1)
    await vm.aupdate(conversation(), user_id="u", session_id="s1")
    await vm.aupdate(conversation(), user_id="u", session_id="s1")
    assert vector_rows(vm.store) == len(TOPICS)
    query = "Which city is my sibling getting married in?"
    (hit,) = await vm.aget(query=query, user_id="u", session_id="s", max_tokens=500)
    assert "wedding" in hit


LONG_TURN = (
    "Work was hectic, the quarterly review ran over by an hour and I skipped lunch. "
    "We tried a new lentil curry recipe tonight but used far too much chilli. "
    "Oh, and our book club picked Piranesi for this month. "
    "The washing machine is making a weird noise again. Any advice?",
    "Long reviews are draining; try an agenda. A spoon of yoghurt rescues a spicy curry. "
    "Great book choice. Check the washing machine filter first.",
)
NEAR = [
    ("I love reading on the train in the mornings.", "Reading on the commute is a great habit."),
    ("My library card expired, I need to renew it.", "Most libraries renew online."),
    ("My friend writes short stories in her spare time.", "What a lovely hobby."),
    ("We watched a documentary about authors last night.", "Sounds interesting."),
]
FILLER = [
    (
        f"The {thing} is acting up again and the {other} needs attention. "
        "I spent the whole evening on chores. It's been that kind of week, honestly.",
        "That sounds tiring. Take it one step at a time.",
    )
    for thing, other in [
        ("boiler", "garden"),
        ("printer", "car"),
        ("laptop", "kitchen tap"),
        ("router", "fridge"),
        ("dishwasher", "bike"),
    ]
]


def test_sentence_keys_store_one_vector_per_user_sentence(make_ltm, embedder):
    """A turn's row holds its whole-turn vector, then one per user sentence of 3+ words."""
    lts = make_ltm("sqlite")
    VectorMemory(embedder, store=lts).update(
        conversation([LONG_TURN]), user_id="u", session_id="s1"
    )
    VectorMemory(embedder, store=lts, sentence_keys=False).update(
        conversation([LONG_TURN], first_seq=3), user_id="u", session_id="s2"
    )
    keyed, whole = lts.load_vectors("vector_memory", "u", "x")
    assert keyed.dimension == whole.dimension == 384
    assert len(keyed.embedding) == 4 * 384 * (1 + 4)  # "Any advice?" is too short for a key
    assert len(whole.embedding) == 4 * 384


def test_a_fact_said_in_passing_in_a_long_turn_is_recalled(make_ltm, embedder):
    """Sentence keys make a fact said in passing the top hit; whole-turn vectors don't."""
    turns = [*NEAR[:2], LONG_TURN, *NEAR[2:], *FILLER]
    query = "What are we reading in the book club this month?"
    keyed = VectorMemory(embedder, store=make_ltm("sqlite"), top_k=1, lexical_weight=0.0)
    keyed.update(conversation(turns), user_id="u", session_id="s1")
    (hit,) = recall(keyed, query)
    assert "Piranesi" in hit
    whole = VectorMemory(
        embedder, store=make_ltm("sqlite"), top_k=1, lexical_weight=0.0, sentence_keys=False
    )
    whole.update(conversation(turns), user_id="u", session_id="s1")
    assert not any("Piranesi" in h for h in recall(whole, query))


def test_rows_with_a_single_vector_still_work(make_ltm, embedder):
    """Rows stored as one whole-turn vector (no sentence keys) are recalled alongside keyed ones."""
    lts = make_ltm("sqlite")
    VectorMemory(embedder, store=lts, sentence_keys=False).update(
        conversation(TOPICS[:3]), user_id="u", session_id="s1"
    )
    vm = VectorMemory(embedder, store=lts, top_k=1)
    vm.update(conversation(TOPICS[3:], first_seq=7), user_id="u", session_id="s1")
    assert "wedding" in recall(vm, "Which city is my sibling getting married in?")[0]
    assert "marathon" in recall(vm, "How is my preparation for the race in Germany going?")[0]


def test_another_embedder_dimension_is_a_clear_error(make_ltm, embedder):
    """Querying 384-d vectors with a 64-d embedder raises ModelError naming both sizes."""
    lts = make_ltm("sqlite")
    VectorMemory(embedder, store=lts).update(conversation(), user_id="u", session_id="s1")
    with pytest.raises(ModelError, match=r"64 dimensions.*384"):
        recall(VectorMemory(KeywordEmbedder(), store=lts), "wedding")


def test_lexical_scores_are_relative_to_the_query():
    """relative_scores: 1.0 for a document holding every query term, less for fewer, capped."""
    index = LexicalIndex()
    index.extend(
        [
            "Form HR-101 is the remote work application.",
            "Remote work needs manager approval.",
            "Lunch was great today.",
            "Nothing to see here at all.",
        ]
    )
    scores = index.relative_scores("remote work form")
    assert set(scores) == {0, 1}
    assert scores[0] > scores[1] > 0 and scores[0] <= 1.0
    assert index.relative_scores("unknown words only") == {}


def test_a_copied_lexical_index_grows_without_changing_the_original():
    """Adding to LexicalIndex.copy() leaves the original's postings and scores unchanged."""
    index = LexicalIndex()
    index.extend(["remote work policy", "parental leave policy"])
    before = index.relative_scores("remote policy")
    grown = index.copy()
    grown.extend(["remote remote remote office", "policy update"])
    assert index.relative_scores("remote policy") == before
    assert len(index.lengths) == 2 and len(grown.lengths) == 4
    assert set(grown.scores("remote policy")) == {0, 1, 2, 3}


def test_lexical_array_matches_the_dict_scores():
    """relative_array gives relative_scores' numbers for every document (0 where no match)."""
    import numpy as np

    index = LexicalIndex()
    index.extend(f"{TOPICS[i % 6][0]} {TOPICS[(i * 5) % 6][1]}" for i in range(30))
    for query in ("wedding flights Lisbon", "dog vaccine booster", "bread sourdough starter"):
        dense = index.relative_array(query, np)
        sparse = index.relative_scores(query)
        assert dense.shape == (30,)
        assert np.allclose(dense, [sparse.get(i, 0.0) for i in range(30)], atol=1e-6)
    assert index.relative_array("zzz qqq", np) is None


def test_a_grown_index_equals_one_built_at_once_and_leaves_its_base_alone():
    """An index grown by steps equals one built at once; its base is left unchanged."""
    import numpy as np
    from mssql_memory.ltm.store import StoredVector
    from mssql_memory.ltm.vector import _Index

    rng = np.random.default_rng(3)

    def row(i: int, keys: int) -> StoredVector:
        vectors = rng.standard_normal((keys, 8)).astype("<f4")
        return StoredVector(i, "s", i, i, f"turn {i} word{i % 3}", 5, vectors.tobytes(), None, 8)

    rows = [row(i, 1 + i % 4) for i in range(1, 41)]
    at_once = _Index()
    at_once.extend(rows)
    base = _Index()
    base.extend(rows[:10])
    before = base.matrix.copy(), base.starts.copy(), base.lexical.relative_array("word1", np)
    grown = base
    for first in range(10, 40, 7):
        grown = grown.grown()
        grown.extend(rows[first : first + 7])
    assert np.array_equal(grown.matrix, at_once.matrix)
    assert np.array_equal(grown.starts, at_once.starts)
    assert np.allclose(
        grown.lexical.relative_array("word1", np), at_once.lexical.relative_array("word1", np)
    )
    assert np.array_equal(base.matrix, before[0]) and np.array_equal(base.starts, before[1])
    assert np.array_equal(base.lexical.relative_array("word1", np), before[2])
    assert len(base.rows) == 10 and len(base.lexical.lengths) == 10
