"""End to end: the HR scenario of seed 003 (section 4.2) through AgentMemory with
FlushToLongTerm([extractive, vector]) and a static block, a deterministic fake extractor and
the local embedding model. After the flush, long-term memory holds what the seed shows, and a
new session of the same user gets it back in context."""

from __future__ import annotations

from hr_scenario import (
    FIRST_KEPT,
    FLUSH_WINDOW,
    KEPT_MESSAGES,
    SESSION,
    SYSTEM_PROMPT,
    TURNS,
    USER,
    areplay,
    replay,
)
from ltm_helpers import RuleExtractor
from mssql_memory import (
    AgentMemory,
    ExtractiveMemory,
    FlushToLongTerm,
    LongTermStore,
    Message,
    StaticMemory,
    VectorMemory,
    default_token_counter,
)

pytest_plugins = ["ltm_fixtures"]

#: The seed's static memory (4.2.2).
POLICIES = [
    {"id": "remote_work", "content": "Remote work: 3 days/week with approval."},
    {
        "id": "international",
        "content": "International work: max 2 weeks/year, 30-day advance approval.",
    },
]
#: What the fake extractor recognizes, as a model would from the same messages.
RULES = [
    (r"I'm (Sarah) from", "name", r"User: \1"),
    (r"from the (\w+) team", "department", r"Department: \1"),
    (
        r"I've been here for (\d+) years and have good performance reviews",
        "remote_work_eligibility",
        r"Status: Eligible for remote work (\1 years tenure, good performance).",
    ),
]
MEMORY_TOKENS = 600
NAME, TEAM = "User: Sarah", "Department: Marketing"
ELIGIBLE = "Status: Eligible for remote work (2 years tenure, good performance)."


def hr_memory(sql, lts: LongTermStore, embedder, extractor: RuleExtractor) -> AgentMemory:
    """The seed's configuration: a 490-token window flushed at 0.8 down to 0.4 of it."""
    extractive = ExtractiveMemory(extractor, store=lts, max_tokens=150)
    vector = VectorMemory(embedder, store=lts, max_tokens=300, top_k=3)
    static = StaticMemory(POLICIES, store=lts, max_tokens=150)
    static.load()  # at application start: persists the policies (idempotent)
    system = default_token_counter().count_message(Message("system", SYSTEM_PROMPT))
    return AgentMemory(
        sql,
        token_limit=FLUSH_WINDOW + system + MEMORY_TOKENS,
        memory_token_limit=MEMORY_TOKENS,
        overflow=FlushToLongTerm([extractive, vector], max_stm_token_ratio=0.8, target_ratio=0.4),
        blocks=[static],
    )


def memory_text(context: list[Message]) -> str:
    (message,) = [m for m in context if m.metadata.get("mssql_memory") == "long_term_memory"]
    return message.content


def check_long_term_memory(lts: LongTermStore, extractor: RuleExtractor) -> None:
    facts = [f.content for f in lts.facts("extractive_memory", USER)]
    assert facts == [NAME, TEAM, ELIGIBLE]
    assert [f.content for f in lts.facts("static_memory")] == [p["content"] for p in POLICIES]
    turns = lts.load_vectors("vector_memory", USER, SESSION)
    topics = [t.content.split("\nuser: ", 1)[1].split("\n", 1)[0] for t in turns]
    assert topics == [u for u, _ in TURNS[:3]]  # introduction, eligibility, how to apply
    assert len(extractor.calls) == 1  # one flush, one extraction


def test_hr_scenario_flushes_to_long_term_memory_and_a_new_session_recalls_it(
    ltm_backend, make_store, make_ltm, embedder
):
    """After the flush LTM holds Sarah's facts, the policies and turns; a new session gets them."""
    sql = make_store(ltm_backend)
    lts = make_ltm(ltm_backend, source=sql)
    extractor = RuleExtractor(RULES)
    memory = hr_memory(sql, lts, embedder, extractor)
    replay(memory, user_id=USER)

    window = sql.get_window(SESSION)
    assert window[0].content == FIRST_KEPT and len(window) == KEPT_MESSAGES + 1  # + the reply
    check_long_term_memory(lts, extractor)

    # a new session, days later: "how do I apply again?"
    question = "Remind me how I apply to work from home?"
    memory.add("hr-sarah-2", Message("user", question), user_id=USER)
    context = memory.get("hr-sarah-2")
    text = memory_text(context)
    tags = ("<static_memory>", "<extractive_memory>", "<vector_memory>")
    assert sorted(tags, key=text.index) == list(tags)
    for expected in (*(p["content"] for p in POLICIES), NAME, TEAM, ELIGIBLE, "Form HR-101"):
        assert expected in text
    assert context[-1].content == question
    assert sum(memory.token_counter.count_message(m) for m in context) <= memory.token_limit

    # the old session's context recalls the flushed turns next to its own window
    context = memory.get(SESSION, query="What are the eligibility criteria again?")
    assert "Have completed at least 6 months" in memory_text(context)
    assert context[-1].content == window[-1].content

    # another employee: the policies, nothing of Sarah
    memory.add("hr-bob-1", Message("user", "How do I apply to work from home?"), user_id="bob")
    text = memory_text(memory.get("hr-bob-1"))
    assert POLICIES[0]["content"] in text
    assert "Sarah" not in text and "Marketing" not in text and "HR-101" not in text


async def test_hr_scenario_async(amake_store, make_ltm, embedder):
    """The same scenario through aadd/aget gives the same long-term memory and recall."""
    sql = amake_store("sqlite", flavor="url")
    lts = make_ltm("sqlite", source=sql)
    extractor = RuleExtractor(RULES)
    memory = hr_memory(sql, lts, embedder, extractor)
    await areplay(memory, user_id=USER)
    check_long_term_memory(lts, extractor)
    await memory.aadd("s2", Message("user", "Which form was it for remote work?"), user_id=USER)
    text = memory_text(await memory.aget("s2"))
    for expected in (POLICIES[1]["content"], NAME, TEAM, ELIGIBLE, "Form HR-101"):
        assert expected in text
