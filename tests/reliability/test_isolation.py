"""Many random users: nobody ever sees another user's messages, facts or recalled turns.

Each user (ids drawn to be confusable: case variants, prefixes of each other, LIKE
wildcards, quotes, non-Latin scripts) gets sessions whose turns carry a secret code
of their own; overflows flush the turns to an extractive block (a deterministic rule
extractor) and a vector block (the hashing embedder), from several threads at once.
Then every session's context — asked about the user's own code *and* another user's
— and every store read (history, window, session listing, facts, vectors) holds no
secret but the user's own; sessions without a user see only themselves; deleting a
user removes exactly that user's data.
"""

from __future__ import annotations

import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import backend_params
from ltm_helpers import RuleExtractor
from mssql_memory import (
    AgentMemory,
    ExtractiveMemory,
    FlushToLongTerm,
    HashingEmbedder,
    Message,
    VectorMemory,
)

from .helpers import FULL, record, scaled

pytestmark = pytest.mark.reliability

USERS = scaled(100, 1000)
ANONYMOUS = scaled(5, 30)
THREADS = 4
ISOLATION_BACKENDS = backend_params(("sqlite", "postgresql", "mariadb") if FULL else ("sqlite",))
SECRET = re.compile(r"sec\d{5}x[a-z0-9]{6}")
RULES = [(r"my code is (sec\d{5}x[a-z0-9]{6})", "code", r"The user's code is \1.")]
_SCRIPTS = "abcXYZ_%'\"-.:éßçøЖжΩλ中文日本한국😀"


@dataclass
class Person:
    index: int
    user_id: str | None
    secret: str
    sessions: list[str] = field(default_factory=list)


def make_people(rng: random.Random) -> list[Person]:
    """USERS users with confusable ids, and ANONYMOUS sessions without a user."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < USERS:
        k = len(ids)
        shape = k % 5
        if shape == 0:
            base = f"user{k}"
        elif shape == 1:
            base = ids[-1].upper() if ids[-1].upper() != ids[-1] else f"User{k}"  # case twin
        elif shape == 2:
            base = f"{ids[-1]}x"  # the previous id is a prefix of this one
        elif shape == 3:
            base = "".join(rng.choice(_SCRIPTS) for _ in range(rng.randint(1, 12)))
        else:
            base = f"u{k}%_'"
        if base not in seen and base == base.strip():
            seen.add(base)
            ids.append(base)
    people = []
    for k, user in enumerate([*ids, *[None] * ANONYMOUS]):
        secret = f"sec{k:05d}x{rng.randrange(16**6):06x}"
        person = Person(k, user, secret)
        for s in range(1 if user is None else rng.randint(1, 3)):
            person.sessions.append(f"{user or 'anon'}/{k}/s{s}")
        people.append(person)
    return people


def conversation(person: Person, session: str, rng: random.Random) -> list[list[Message]]:
    """A few turns; the first says the user's code, the rest chat about other things."""
    turns = [
        [
            Message("user", f"Hello, my code is {person.secret}. Please remember it."),
            Message("assistant", "Noted, I will remember your code."),
        ]
    ]
    for k in range(rng.randint(3, 5)):
        topic = rng.choice(["leave", "payroll", "travel", "laptops", "parking", "training"])
        turns.append(
            [
                Message("user", f"Question {k} about {topic} in session {session}? " * 2),
                Message("assistant", f"Answer {k}: the {topic} policy applies to you. " * 3),
            ]
        )
    return turns


def secrets_in(texts: Any) -> set[str]:
    return {s for text in texts for s in SECRET.findall(text)}


@pytest.mark.parametrize("backend", ISOLATION_BACKENDS)
def test_no_user_ever_sees_another_users_memory(
    backend: str, make_store: Any, make_ltm_for: Any
) -> None:
    """USERS users with confusable ids, sessions, facts and vectors written by THREADS threads:
    zero cross-user secrets in any context or store read; delete_user is exact."""
    started = time.perf_counter()
    rng = random.Random(2024)
    people = make_people(rng)
    store = make_store(backend)
    store.create_schema()
    ltm = make_ltm_for(store)
    extractive = ExtractiveMemory(RuleExtractor(RULES), store=ltm)
    vector = VectorMemory(HashingEmbedder(128), store=ltm, top_k=8, min_score=-1.0)
    memory = AgentMemory(
        store,
        token_limit=700,
        memory_token_limit=250,
        overflow=FlushToLongTerm([extractive, vector]),
    )
    plans = {
        session: conversation(person, session, random.Random(f"{person.index}/{session}"))
        for person in people
        for session in person.sessions
    }

    def write(person: Person) -> None:
        for session in person.sessions:
            for turn in plans[session]:
                memory.add(session, turn, user_id=person.user_id)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(write, people))
    written = time.perf_counter() - started

    owner = {s: p for p in people for s in p.sessions}
    leaks: list[str] = []
    recalled = 0

    def check(person: Person) -> tuple[list[str], int]:
        found: list[str] = []
        own = {person.secret}
        other = people[(person.index * 7919 + 1) % len(people)]
        query = f"What is my code? Is it {other.secret}? Tell me about {other.secret}."
        seen_own = 0
        for session in person.sessions:
            context = memory.get(session, query=query)
            got = secrets_in(m.content for m in context)
            seen_own += person.secret in got
            if got - own:
                found.append(f"context of {session!r} shows {sorted(got - own)}")
            texts = [m.content for m in store.get_history(session)]
            texts += [m.content for m in store.read_session(session).window]
            if secrets_in(texts) - own:
                found.append(f"history of {session!r} shows {secrets_in(texts) - own}")
            rows = ltm.load_vectors("vector_memory", person.user_id, session)
            if secrets_in(r.content for r in rows) - own:
                found.append(f"vectors for {session!r} show another user's turns")
        if person.user_id is not None:
            listed = [s.session_id for s in store.list_sessions(user_id=person.user_id)]
            if sorted(listed) != sorted(person.sessions):
                found.append(f"list_sessions({person.user_id!r}) = {listed}")
            facts = [f.content for f in extractive.facts(person.user_id)]
            if secrets_in(facts) - own:
                found.append(f"facts of {person.user_id!r} show {secrets_in(facts) - own}")
        return found, seen_own

    with ThreadPoolExecutor(THREADS) as pool:
        for found, seen_own in pool.map(check, people):
            leaks += found
            recalled += bool(seen_own)
    assert not leaks, f"{len(leaks)} leaks, e.g. {leaks[:5]}"
    users = [p for p in people if p.user_id is not None]
    flushed = [p for p in users if store.get_history(p.sessions[0])[0].status == "archived"]
    assert len(flushed) >= len(users) // 2, "few overflows happened: the test is vacuous"
    for person in flushed:  # their first turn went to long-term memory: the code is a fact
        facts = [f.content for f in extractive.facts(person.user_id)]
        assert secrets_in(facts) == {person.secret}, f"{person.user_id!r}: {facts}"
    assert recalled >= 0.9 * len(people), f"only {recalled} users recalled their own code"

    # delete_user removes exactly that user's sessions, facts and vectors
    doomed = users[::20]
    survivors = [p for p in users if p not in doomed][:100]
    before = {p.index: _footprint(store, ltm, extractive, p) for p in survivors}
    for person in doomed:
        assert memory.delete_user(person.user_id) == len(person.sessions)
        assert _footprint(store, ltm, extractive, person) == (0, 0, 0)
    after = {p.index: _footprint(store, ltm, extractive, p) for p in survivors}
    assert after == before, "deleting a user touched another user's data"
    elapsed = time.perf_counter() - started
    sessions = sum(len(p.sessions) for p in people)
    record(
        f"isolation[{backend}]",
        f"{len(users)} users + {ANONYMOUS} anonymous sessions, {sessions} sessions, "
        f"{sum(len(t) for turns in plans.values() for t in turns)} messages, "
        f"{sum(owner[s].user_id is not None for s in owner)} user sessions checked with "
        f"adversarial queries: 0 leaks; {recalled}/{len(people)} recalled their own code; "
        f"{len(flushed)} users' codes flushed to facts and vectors; {len(doomed)} users "
        f"deleted exactly; written in {written:.1f}s, total {elapsed:.1f}s",
    )


def _footprint(store: Any, ltm: Any, extractive: Any, person: Person) -> tuple[int, int, int]:
    """(messages, facts, vectors) stored for ``person``."""
    messages = sum(len(store.get_history(s)) for s in person.sessions)
    facts = len(extractive.facts(person.user_id))
    vectors = ltm.vector_stamp("vector_memory", person.user_id, person.sessions[0])[0]
    return messages, facts, vectors
