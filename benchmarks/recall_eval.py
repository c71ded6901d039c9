"""Recall quality of long-term memory on long, multi-session synthetic conversations.

    python -m benchmarks.recall_eval [--users 4] [--sessions 20] [--seed 7]
        [--out benchmarks/results/recall.md] [--quick]

Each simulated user talks to the assistant over months: ~20 dated sessions of 10-20
turns (about 300 turns). A dozen facts are planted in a few of those turns ("my sister's
wedding is in Lisbon", later "they set the date: June 3rd"), among filler turns and
distractor turns that share the facts' vocabulary (a cousin's wedding in Porto, a work
trip to Lisbon). At the end, in the user's latest session, questions worded differently
from the planted turns ask for those facts.

Every turn goes through ``AgentMemory.add`` under a 2,000-token budget; a question
*succeeds* when every turn that supports it reaches the context returned by
``AgentMemory.get(session_id, query=question)`` (verbatim, in the window or in the
rendered memory). Configurations compared in one run, on the same conversations:

- newest-first: ``AgentMemory`` with ``Trim`` and no long-term memory;
- ``FlushToLongTerm([VectorMemory(...)])`` storing whole-turn vectors only
  (``sentence_keys=False``) or with sentence keys (the default), recalled by vector
  similarity only (``lexical_weight=0``) or hybrid (the default), with several
  ``top_k``, ``neighbors=1``, a higher ``min_score``, the library's default budgets, and
  with every session flushed entirely when it ends (a second ``AgentMemory`` with a tiny
  budget runs ``compact`` on it: ``FlushToLongTerm`` alone never flushes the last turns
  of a session that stays under its budget).

The embedder is the local all-MiniLM-L6-v2 (``SentenceTransformerEmbedder``); nothing
calls a remote model. Results go to ``benchmarks/results/recall.md``.
"""

from __future__ import annotations

import argparse
import html
import itertools
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mssql_memory import (
    AgentMemory,
    FlushToLongTerm,
    LongTermStore,
    Message,
    SentenceTransformerEmbedder,
    SQLStore,
    Trim,
    VectorMemory,
)

from .common import (
    ALL_BACKENDS,
    command_line,
    environment_line,
    kept_notes,
    markdown_table,
    resolve_backends,
    workdir,
    write_report,
)

TOKEN_LIMIT = 2000
#: ``--quick``: one user, six sessions (about 90 turns), eight facts.
QUICK = {"users": 1, "sessions": 6, "facts": 8, "seed": 7}
START = datetime(2024, 1, 8, 18, 30, tzinfo=timezone.utc)

# -- the synthetic conversations ------------------------------------------------------------


@dataclass
class Turn:
    user: str
    assistant: str
    at: datetime | None = None
    evidence: str | None = None  # the fact this turn supports


@dataclass
class Question:
    user_id: str
    text: str
    evidence: list[str]  # the user messages of the supporting turns
    fact: str


@dataclass
class Conversation:
    user_id: str
    sessions: list[list[Turn]]
    questions: list[Question] = field(default_factory=list)

    @property
    def turns(self) -> int:
        return sum(len(s) for s in self.sessions)


def _facts(rng: random.Random) -> list[dict[str, Any]]:
    """The facts one user can have, with values drawn for this user.

    ``evidence``: the sentences (and the assistant's answer to each) that state the fact,
    one per turn; ``question``: how the user asks for it later, in other words;
    ``distractors``: sentences about something close (another person's wedding, a friend's
    dog) or sharing the question's words.
    """
    pick = rng.choice

    def two(values: list[str]) -> list[str]:
        return rng.sample(values, 2)

    sister = pick(["Ana", "Marta", "Leonor", "Ines"])
    city, city2 = two(["Lisbon", "Seville", "Bologna", "Krakow", "Ghent", "Porto"])
    day = pick(["June 3rd", "May 24th", "September 14th", "July 19th"])
    dog, dog2 = two(["Biscuit", "Pepper", "Moose", "Tofu", "Juno"])
    breed, breed2 = two(["beagle", "corgi", "collie", "spaniel"])
    drug, drug2 = two(["penicillin", "amoxicillin", "sulfa drugs", "ibuprofen"])
    car, car2 = two(["Toyota Corolla", "Honda Civic", "Skoda Octavia", "Ford Focus"])
    problem = pick(["the brakes", "a cracked windshield", "worn tyres"])
    company, company2 = two(["Halden Logistics", "Brightwave Energy", "Norrow Health", "Qintic"])
    role, role2 = two(["data analyst", "product manager", "UX researcher", "sales lead"])
    street, street2 = two(["Maple Street", "Harbour Road", "Elm Avenue", "Mill Lane"])
    rent, rent2 = two(["1450", "1320", "1680", "1150"])
    race, race2 = two(["Berlin", "Chicago", "Valencia", "Rotterdam"])
    target = pick(["four hours", "3:45", "3:30"])
    kid = pick(["Mia", "Ada", "Nora"])
    school, school2 = two(["Riverside Primary", "Oakfield School", "St Anne's", "Hillcrest"])
    book, book2 = two(["The Overstory", "Piranesi", "Klara and the Sun", "Middlemarch"])
    checkup = pick(["the 14th of March at 9:30", "April 2nd at 11:15", "the 21st at 8:45"])
    checkup2 = pick(["next Tuesday", "the end of the month"])
    restaurant, restaurant2 = two(["Casa Rosa", "Nakama", "Le Petit Zinc", "The Olive Tree"])
    language, language2 = two(["Japanese", "Portuguese", "Korean", "Italian"])
    tutor = pick(["Kenji", "Rita", "Min-jun", "Paolo"])
    rate, rate2 = two(["3.9%", "4.2%", "3.6%", "4.5%"])
    years = pick(["10", "15", "5"])
    return [
        {
            "fact": "wedding",
            "evidence": [
                (
                    f"Big news: my sister {sister} is getting married next year, in {city}!",
                    f"Congratulations to {sister}! {city} is a beautiful place for a wedding.",
                ),
                (
                    f"{sister} and her fiance finally picked the date, it's going to be {day}.",
                    "Lovely, that gives you time to sort out travel and an outfit.",
                ),
            ],
            "question": "Where and when is my sister's wedding happening?",
            "distractors": [
                (
                    f"My friend Carla is getting married in {city2} next spring, we're invited.",
                    "How nice, a spring wedding abroad sounds fun.",
                ),
                (
                    f"My cousin's wedding last summer in {city2} had the best food.",
                    "Good food makes a wedding memorable.",
                ),
                (
                    f"I might have a work conference in {city} in the autumn.",
                    f"{city} is great for conferences; the old town is walkable.",
                ),
                (
                    "My sister keeps sending me recipes she wants to try.",
                    "That's a sweet way to stay in touch.",
                ),
            ],
        },
        {
            "fact": "dog",
            "evidence": [
                (
                    f"We adopted a {breed} puppy this weekend and named him {dog}.",
                    f"How exciting! {breed.title()}s are full of energy; enjoy the first weeks.",
                ),
            ],
            "question": "What did we call our new pet?",
            "distractors": [
                (
                    f"We're looking after my neighbour's {breed2}, {dog2}, while they travel.",
                    f"Pet-sitting is a good trial run; I hope {dog2} settles in.",
                ),
                (
                    "Is pet insurance worth it for a young puppy?",
                    "Often yes, vet bills for young animals add up quickly.",
                ),
                (
                    "My neighbour's dog barks every night around midnight.",
                    "That must be tiring; maybe mention it to them kindly.",
                ),
            ],
        },
        {
            "fact": "allergy",
            "evidence": [
                (
                    f"The hospital confirmed I'm allergic to {drug}, after that rash last week.",
                    "Good that you know now; make sure it's in your medical records.",
                ),
            ],
            "question": "Which medicine did the hospital say I react badly to?",
            "distractors": [
                (
                    f"My partner found out he can't take {drug2}, it upsets his stomach.",
                    "Worth telling his pharmacist so they flag it.",
                ),
                (
                    "Hay fever season is starting and my eyes are itchy.",
                    "Antihistamines and closed windows at night can help.",
                ),
                (
                    "My son's friend has a nut allergy so we check snack labels.",
                    "Very considerate of you.",
                ),
            ],
        },
        {
            "fact": "car",
            "evidence": [
                (
                    f"I bought a used {car}, a 2016 model, from a dealer in town.",
                    "Nice, a reliable choice. Did you get a warranty with it?",
                ),
                (
                    f"Ugh, the {car.split()[1]} failed its inspection because of {problem}.",
                    "Annoying, but that's usually a quick fix at a garage.",
                ),
            ],
            "question": "What car did I buy, and why didn't it pass the check?",
            "distractors": [
                (
                    f"My dad bought a {car2} last year and it passed every inspection.",
                    "Sounds like a solid car.",
                ),
                (
                    "My brother wants to buy an electric car next year.",
                    "Prices are coming down, so it may be a good time.",
                ),
                (
                    "The bike needs new brakes before the spring rides.",
                    "Good idea to get that done before the season starts.",
                ),
            ],
        },
        {
            "fact": "job",
            "evidence": [
                (
                    f"I got the offer! I'm starting as a {role} at {company} on the 15th.",
                    "Congratulations! A new role is exciting. How are you feeling about it?",
                ),
            ],
            "question": "Which company hired me and what position will I have?",
            "distractors": [
                (
                    f"My friend just started as a {role2} at {company2}.",
                    "Good for them, starting somewhere new takes courage.",
                ),
                (
                    "Job interviews always make me nervous.",
                    "Preparation and a few mock answers help a lot.",
                ),
                (
                    "I'm thinking about an online course on data analysis.",
                    "There are plenty of good ones, many free.",
                ),
            ],
        },
        {
            "fact": "flat",
            "evidence": [
                (
                    f"We signed the lease for the two-bedroom flat on {street}; rent is {rent} "
                    "a month.",
                    "Congrats on the new place! That sounds like a good size for you.",
                ),
            ],
            "question": "How much do we pay each month for the place we're renting?",
            "distractors": [
                (
                    f"My brother's flat on {street2} costs {rent2} a month, which seems steep.",
                    "Rents vary a lot from street to street.",
                ),
                (
                    "Our old landlord still hasn't returned the deposit.",
                    "Send a written reminder; there are usually legal deadlines.",
                ),
                (
                    "Rents in the city centre are getting ridiculous.",
                    "They really are, especially near the station.",
                ),
            ],
        },
        {
            "fact": "marathon",
            "evidence": [
                (
                    f"I signed up for the {race} marathon in the autumn!",
                    "Brave! Do you have a training plan?",
                ),
                (
                    f"My goal for the race is to finish in under {target}.",
                    "Ambitious but doable with consistent long runs.",
                ),
            ],
            "question": "Which long-distance race did I enter, and what time am I aiming for?",
            "distractors": [
                (
                    f"A colleague is running the {race2} half marathon, hoping for two hours.",
                    "That's a nice goal for a half.",
                ),
                (
                    "My knee hurts after running downhill.",
                    "Maybe rest it a few days and ease back in.",
                ),
                (
                    "I went for a short run by the river this morning.",
                    "A nice way to start the day.",
                ),
            ],
        },
        {
            "fact": "school",
            "evidence": [
                (
                    f"My daughter {kid} got a place at {school}; she starts in September.",
                    "Wonderful news! Is it close to home?",
                ),
            ],
            "question": "Which school is my daughter going to attend?",
            "distractors": [
                (
                    f"My nephew goes to {school2} and loves the art teacher.",
                    "A good teacher makes all the difference.",
                ),
                (
                    "Parents' evening is next week.",
                    "A good chance to meet the teachers.",
                ),
                (
                    "I went to a tiny village school as a kid.",
                    "Small schools can be wonderful.",
                ),
            ],
        },
        {
            "fact": "book",
            "evidence": [
                (
                    f"Our book club picked {book} for this month.",
                    "Great choice, there's a lot to discuss in it.",
                ),
            ],
            "question": "What is the title my reading group chose?",
            "distractors": [
                (
                    f"My mum's reading group is doing {book2}, she says it's slow.",
                    "Some books take a while to get going.",
                ),
                (
                    "I can never finish a book when I'm this tired.",
                    "Audiobooks might help on tired evenings.",
                ),
                (
                    "I bought a new bookshelf for the living room.",
                    "Books need a good home.",
                ),
            ],
        },
        {
            "fact": "checkup",
            "evidence": [
                (
                    f"The clinic moved my annual check-up to {checkup}.",
                    "Noted, put it in your calendar so it doesn't slip.",
                ),
            ],
            "question": "When is my appointment with the doctor now?",
            "distractors": [
                (
                    f"My mum has a doctor's appointment {checkup2}.",
                    "I hope it goes well for her.",
                ),
                (
                    "The dentist wants me back in six months.",
                    "Regular cleanings pay off.",
                ),
                (
                    "I should really book an eye test soon.",
                    "It's easy to put off, but worth doing.",
                ),
            ],
        },
        {
            "fact": "anniversary",
            "evidence": [
                (
                    f"For our anniversary we booked dinner at {restaurant}.",
                    "Lovely, that should be a special evening.",
                ),
            ],
            "question": "Where are we going out to eat to celebrate our anniversary?",
            "distractors": [
                (
                    f"My parents celebrated their anniversary at {restaurant2}.",
                    "That sounds like a lovely tradition.",
                ),
                (
                    "We ordered takeaway pizza again last night.",
                    "Sometimes that's exactly right.",
                ),
                (
                    "The new bakery downtown has amazing croissants.",
                    "Worth a visit on a weekend morning.",
                ),
            ],
        },
        {
            "fact": "language",
            "evidence": [
                (
                    f"I started learning {language} with a tutor called {tutor}, Tuesdays at 7.",
                    "That's a great commitment! Weekly lessons add up fast.",
                ),
            ],
            "question": "Which language am I studying and who teaches me?",
            "distractors": [
                (
                    f"My colleague is learning {language2} with an app on the train.",
                    "Apps are good for daily practice.",
                ),
                (
                    "I used to speak some French at school.",
                    "It might come back quicker than you think.",
                ),
                (
                    "Duolingo keeps sending me reminders.",
                    "The streaks can be motivating.",
                ),
            ],
        },
        {
            "fact": "mortgage",
            "evidence": [
                (
                    f"The bank approved our mortgage: {rate} fixed for {years} years.",
                    "That's a decent rate these days, congratulations.",
                ),
            ],
            "question": "What interest did we lock in on the home loan?",
            "distractors": [
                (
                    f"Our friends took a mortgage at {rate2} variable and now regret it.",
                    "Variable rates can be stressful when they move.",
                ),
                (
                    "Interest rates were all over the news today.",
                    "It's a volatile time for borrowers.",
                ),
                (
                    "We're trying to build an emergency fund.",
                    "A very sensible goal.",
                ),
            ],
        },
    ]


_FILLER: dict[str, tuple[list[str], dict[str, list[str]], list[str]]] = {
    "work": (
        [
            "The {meeting} ran over by {time} again and I {after}.",
            "My manager wants the {doc} by {day}, so it's going to be a busy week.",
            "We're moving the team's {doc} to a new tool and nobody likes it.",
            "A colleague from {dept} is leaving, there's a farewell lunch on {day}.",
        ],
        {
            "meeting": ["quarterly review", "planning meeting", "all-hands", "design review"],
            "time": ["an hour", "forty minutes", "half an hour"],
            "after": ["skipped lunch", "missed my train", "had to stay late"],
            "doc": ["budget report", "roadmap", "status update", "spreadsheets"],
            "day": ["Monday", "Wednesday", "Thursday", "Friday"],
            "dept": ["finance", "sales", "support", "operations"],
        },
        [
            "Long meetings are draining. Could you suggest an agenda to keep it shorter?",
            "Deadlines like that are stressful; try blocking focus time in your calendar.",
            "Tool changes take a while to settle; maybe ask for a short training session.",
            "Farewells are bittersweet. A card signed by the team is a nice touch.",
        ],
    ),
    "cooking": (
        [
            "I tried making a {dish} tonight, but I used too much {spice}.",
            "Any ideas for quick {meal}s that don't need much {spice}?",
            "We're doing a potluck on {day}; I'm thinking of bringing {dish}.",
        ],
        {
            "dish": ["lentil curry", "mushroom risotto", "vegetable lasagne", "chickpea stew"],
            "spice": ["chilli", "garlic", "salt", "cumin"],
            "meal": ["weekday dinner", "lunch", "breakfast"],
            "day": ["Saturday", "Sunday", "Friday"],
        },
        [
            "It happens! A spoon of yoghurt or a squeeze of lemon can rescue it.",
            "One-pan dishes and stir-fries are quick; keep some frozen vegetables around.",
            "That should go down well. Bring a serving spoon and a label for allergies.",
        ],
    ),
    "weather": (
        [
            "It has been {weather} for {n} days straight here.",
            "Finally some {nice} this weekend, we spent the afternoon in the {place}.",
        ],
        {
            "weather": ["raining", "grey and windy", "freezing", "humid"],
            "n": ["three", "five", "six"],
            "nice": ["sun", "warm weather", "blue sky"],
            "place": ["park", "garden", "botanical gardens"],
        },
        [
            "That gets tiring. A bright lamp in the morning helps some people.",
            "Sounds lovely, those afternoons are worth a lot.",
        ],
    ),
    "tv": (
        [
            "We started a new {genre} series, the first episode was {verdict}.",
            "Any {genre} recommendations for the weekend?",
            "I stayed up way too late watching a {genre} film.",
        ],
        {
            "genre": ["crime", "documentary", "sci-fi", "comedy", "historical drama"],
            "verdict": ["very slow", "surprisingly good", "confusing"],
        },
        [
            "Give it two more episodes, many shows find their pace later.",
            "Tell me what you liked recently and I'll suggest something similar.",
            "Late nights happen; maybe a slower start tomorrow if you can.",
        ],
    ),
    "fitness": (
        [
            "I did a {class} class for the first time today and I'm {feeling}.",
            "The gym was packed after work, I waited ages for the {machine}.",
            "I'm trying to walk {steps} steps a day this month.",
        ],
        {
            "class": ["yoga", "spin", "pilates", "boxing"],
            "feeling": ["sore", "exhausted", "hooked"],
            "machine": ["rowing machine", "squat rack", "treadmill"],
            "steps": ["eight thousand", "ten thousand", "twelve thousand"],
        },
        [
            "Nice! Stretch a bit tonight and drink plenty of water.",
            "Evenings are peak time; mornings or late evenings are quieter.",
            "A short walk after lunch makes that goal much easier.",
        ],
    ),
    "home": (
        [
            "The {appliance} is making a weird noise again.",
            "I spent {day} clearing out the {room}.",
            "We're thinking of painting the {room} {colour}.",
        ],
        {
            "appliance": ["washing machine", "fridge", "dishwasher", "boiler"],
            "day": ["Saturday", "Sunday", "the whole afternoon"],
            "room": ["garage", "kitchen", "spare room", "hallway"],
            "colour": ["green", "pale blue", "white", "terracotta"],
        },
        [
            "Check the filter first; if it keeps up, call a technician.",
            "That's satisfying work. Did you find anything surprising?",
            "Try a sample pot on the wall before committing to it.",
        ],
    ),
    "travel": (
        [
            "Train tickets for the {season} are so expensive this year.",
            "I'd love a weekend trip somewhere by the {scenery}.",
            "My {document} expires next year, I should renew it.",
        ],
        {
            "season": ["holidays", "summer", "long weekend"],
            "scenery": ["sea", "mountains", "lakes"],
            "document": ["passport", "driving licence", "ID card"],
        },
        [
            "Booking early or travelling midweek usually brings prices down.",
            "A short trip can be very restful. Do you prefer quiet places or towns?",
            "Renewals can take weeks, so it's good to start early.",
        ],
    ),
}
_ASKS = ["", "", " Any advice?", " What do you think?", " How should I plan for it?"]
_GENERIC = [
    "If it helps, I can put together a short checklist for you.",
    "Let me know how it goes; I'm happy to help you think it through.",
    "It's worth writing things like this down so you don't have to keep it all in your head.",
    "Take it one step at a time; there's no need to sort everything out today.",
    "Is there anything else on your mind this week?",
    "Small routines tend to make busy weeks feel more manageable.",
    "I'm glad you told me; it sounds like a lot is going on at the moment.",
    "We can come back to this whenever you like.",
]


def _filler(rng: random.Random) -> tuple[str, str]:
    """A chat sentence on an everyday topic, and the assistant's answer to it."""
    templates, slots, replies = _FILLER[rng.choice(sorted(_FILLER))]
    index = rng.randrange(len(templates))
    text = templates[index].format(**{k: rng.choice(v) for k, v in slots.items()})
    return text, replies[index]


def _compose(rng: random.Random, main: tuple[str, str] | None) -> tuple[str, str]:
    """A realistic turn: the user says two to four things (``main`` among them) and asks;
    the assistant answers each and adds some of the chat an assistant adds."""
    parts = [_filler(rng) for _ in range(rng.randint(1, 3))]
    if main is not None:
        parts.insert(rng.randint(0, len(parts)), main)
    user = " ".join(u for u, _ in parts) + rng.choice(_ASKS)
    assistant = " ".join([*(a for _, a in parts), *rng.sample(_GENERIC, rng.randint(1, 3))])
    return user, assistant


def make_conversation(user_id: str, sessions: int, facts: int, rng: random.Random) -> Conversation:
    """One user's dated sessions with ``facts`` planted facts and their questions.

    Each evidence or distractor sentence is one thing among several in a long turn.
    Evidence and distractors sit anywhere (a fact's second piece at least ten turns after
    its first); the questions come after the last turn.
    """
    bank = rng.sample(_facts(rng), k=min(facts, 13))
    lengths = [rng.randint(10, 20) for _ in range(sessions)]
    slots = [(s, i) for s in range(sessions) for i in range(lengths[s])]
    chosen: dict[tuple[int, int], Turn] = {}

    def free() -> list[int]:
        return [k for k in range(len(slots)) if slots[k] not in chosen]

    questions = []
    for fact in bank:
        evidence = fact["evidence"]
        while True:
            positions = sorted(rng.sample(free(), len(evidence)))
            if all(b - a >= 10 for a, b in itertools.pairwise(positions)):
                break
        needed = []
        for k, sentence in zip(positions, evidence, strict=True):
            chosen[slots[k]] = Turn(*_compose(rng, sentence), evidence=fact["fact"])
            needed.append(chosen[slots[k]].user)
        for sentence in fact["distractors"]:
            chosen[slots[rng.choice(free())]] = Turn(*_compose(rng, sentence))
        questions.append(Question(user_id, fact["question"], needed, fact["fact"]))
    out: list[list[Turn]] = []
    day = START
    for s in range(sessions):
        day += timedelta(days=rng.randint(5, 12), minutes=rng.randint(-90, 90))
        at = day
        session: list[Turn] = []
        for i in range(lengths[s]):
            turn = chosen.get((s, i)) or Turn(*_compose(rng, None))
            at += timedelta(minutes=rng.randint(1, 4))
            session.append(Turn(turn.user, turn.assistant, at, turn.evidence))
        out.append(session)
    return Conversation(user_id, out, questions)


def make_dataset(users: int, sessions: int, facts: int, seed: int) -> list[Conversation]:
    rng = random.Random(seed)
    return [make_conversation(f"user{u:02d}", sessions, facts, rng) for u in range(users)]


# -- feeding and scoring ------------------------------------------------------------------


class CachedEmbedder:
    """The model behind a cache, so configurations sharing texts embed them once."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.dimension = model.dimension
        self._cache: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            self.calls += len(missing)
            with self._lock:
                self._cache.update(zip(missing, self.model.embed(missing), strict=True))
        return [self._cache[t] for t in texts]

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed(texts)


def session_id(conv: Conversation, index: int) -> str:
    return f"{conv.user_id}-s{index:02d}"


def feed(memory: AgentMemory, data: list[Conversation], closer: AgentMemory | None = None) -> None:
    """Every turn through ``memory.add``; with ``closer``, each finished session is flushed."""
    for conv in data:
        for index, session in enumerate(conv.sessions):
            sid = session_id(conv, index)
            for turn in session:
                assert turn.at is not None
                memory.add(
                    sid,
                    [
                        Message("user", turn.user, created_at=turn.at),
                        Message("assistant", turn.assistant, created_at=turn.at),
                    ],
                    user_id=conv.user_id,
                )
            if closer is not None and index < len(conv.sessions) - 1:
                closer.compact(sid)


def _present(needle: str, text: str) -> bool:
    return needle in text or " ".join(html.escape(needle, quote=False).split()) in text


@dataclass
class Score:
    questions: int = 0
    answered: int = 0  # every supporting turn in context
    turns: int = 0
    turns_found: int = 0
    context_tokens: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def row(self) -> tuple[str, str, str, str]:
        tokens = sorted(self.context_tokens)
        return (
            f"{100 * self.answered / self.questions:.1f}%",
            f"{100 * self.turns_found / self.turns:.1f}%",
            f"{tokens[len(tokens) // 2]} / {tokens[-1]}",
            f"{1000 * sorted(self.seconds)[len(self.seconds) // 2]:.1f}",
        )

    @property
    def recall(self) -> float:
        return self.answered / self.questions


def score(memory: AgentMemory, data: list[Conversation]) -> Score:
    """Ask every question in the user's latest session; count the supporting turns found."""
    result = Score()
    counter = memory.token_counter
    for conv in data:
        sid = session_id(conv, len(conv.sessions) - 1)
        for q in conv.questions:
            start = time.perf_counter()
            context = memory.get(sid, query=q.text)
            result.seconds.append(time.perf_counter() - start)
            text = "\n".join(m.content for m in context)
            found = [_present(e, text) for e in q.evidence]
            result.questions += 1
            result.answered += all(found)
            result.turns += len(found)
            result.turns_found += sum(found)
            result.context_tokens.append(sum(counter.count_message(m) for m in context))
            if result.context_tokens[-1] > memory.token_limit:
                raise AssertionError(f"context over budget: {result.context_tokens[-1]}")
    return result


# -- configurations -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One configuration: how turns are stored (``writer``, ``memory_tokens``,
    ``close_sessions``) and how they are recalled (``vector``)."""

    name: str
    vector: dict[str, Any] = field(default_factory=dict)  # VectorMemory arguments for recall
    memory_tokens: int | None = 1200  # AgentMemory memory_token_limit (None: the default)
    close_sessions: bool = False  # flush each finished session entirely
    writer: dict[str, Any] = field(default_factory=dict)  # VectorMemory arguments for storing

    @property
    def feed_key(self) -> str:
        """Configurations with the same key store the same vectors: they share one feed."""
        parts = [str(self.memory_tokens), str(self.close_sessions)]
        parts += [f"{k}={v}" for k, v in sorted(self.writer.items())]
        return "_".join(parts)


#: The configuration the smoke test compares with the newest-first window.
DEFAULT = "hybrid, sentence keys (the defaults: top_k=10, lexical_weight=0.2, min_score=0.2)"
NEWEST_FIRST = "newest-first window, no long-term memory"


def configs(quick: bool) -> list[Config]:
    """The configurations compared (the quick mode: the default and whole-turn vectors)."""
    big = {"max_tokens": 1200}
    whole = {"sentence_keys": False}
    closed = {"close_sessions": True}
    main = [
        Config(
            "whole-turn vectors, vector only (lexical_weight=0), top_k=5",
            {**big, "lexical_weight": 0.0, "top_k": 5},
            writer=whole,
        ),
        Config(DEFAULT, dict(big)),
    ]
    if quick:
        return main
    return [
        Config("library defaults (memory_token_limit=500, max_tokens=800)", {}, memory_tokens=None),
        main[0],
        Config("whole-turn vectors, hybrid, top_k=10", dict(big), writer=whole),
        main[1],
        Config("sentence keys, vector only (lexical_weight=0)", {**big, "lexical_weight": 0.0}),
        Config("sentence keys, hybrid, top_k=3", {**big, "top_k": 3}),
        Config("sentence keys, hybrid, top_k=5", {**big, "top_k": 5}),
        Config("sentence keys, hybrid, top_k=20", {**big, "top_k": 20}),
        Config("sentence keys, hybrid + neighbors=1", {**big, "neighbors": 1}),
        Config("sentence keys, hybrid, min_score=0.3", {**big, "min_score": 0.3}),
        Config(
            "every session flushed at its end: whole-turn vectors, vector only, top_k=10",
            {**big, "lexical_weight": 0.0},
            writer=whole,
            **closed,
        ),
        Config(
            "every session flushed at its end: whole-turn vectors, hybrid, top_k=10",
            dict(big),
            writer=whole,
            **closed,
        ),
        Config(
            "every session flushed at its end: sentence keys, vector only",
            {**big, "lexical_weight": 0.0},
            **closed,
        ),
        Config(
            "every session flushed at its end: sentence keys, hybrid (defaults)",
            dict(big),
            **closed,
        ),
    ]


@dataclass
class Run:
    rows: list[tuple[str, Score]]
    dataset: dict[str, int]
    seconds: float


def evaluate(
    data: list[Conversation],
    embedder: Any,
    url: str,
    config_list: list[Config],
    *,
    log: Callable[[str], None] = print,
) -> Run:
    """Feed ``data`` once per distinct feed (newest-first, and each ``feed_key``), then score
    every configuration on the same conversations."""
    started = time.perf_counter()
    embedder = embedder if isinstance(embedder, CachedEmbedder) else CachedEmbedder(embedder)
    rows: list[tuple[str, Score]] = []
    opened: list[Any] = []
    try:
        plain_store = SQLStore(url, table_name="recall_plain")
        opened.append(plain_store)
        plain = AgentMemory(plain_store, token_limit=TOKEN_LIMIT, overflow=Trim())
        feed(plain, data)
        rows.append(("newest-first window, no long-term memory", score(plain, data)))
        log(f"  newest-first: {rows[-1][1].recall:.1%}")

        fed: dict[str, tuple[SQLStore, LongTermStore]] = {}
        for config in config_list:
            if config.feed_key not in fed:
                table = f"recall_{len(fed)}"
                sql = SQLStore(url, table_name=table)
                lts = LongTermStore(sql, table_prefix=table)
                opened += [sql, lts]
                writer = VectorMemory(embedder, store=lts, **config.writer)
                memory = AgentMemory(
                    sql,
                    token_limit=TOKEN_LIMIT,
                    memory_token_limit=config.memory_tokens,
                    overflow=FlushToLongTerm([writer]),
                )
                closer = None
                if config.close_sessions:
                    closer = AgentMemory(
                        sql,
                        token_limit=100,
                        memory_token_limit=0,
                        overflow=FlushToLongTerm(
                            [writer], max_stm_token_ratio=0.01, target_ratio=0
                        ),
                    )
                t = time.perf_counter()
                feed(memory, data, closer)
                log(f"  fed {config.feed_key!r} in {time.perf_counter() - t:.1f}s")
                fed[config.feed_key] = (sql, lts)
            sql, lts = fed[config.feed_key]
            vector = VectorMemory(embedder, store=lts, **{**config.writer, **config.vector})
            reader = AgentMemory(
                sql,
                token_limit=TOKEN_LIMIT,
                memory_token_limit=config.memory_tokens,
                overflow=FlushToLongTerm([vector]),
            )
            rows.append((config.name, score(reader, data)))
            log(f"  {config.name}: {rows[-1][1].recall:.1%}")
    finally:
        for store in reversed(opened):
            store.drop_schema()
            if isinstance(store, SQLStore):
                store.close()
    stats = {
        "users": len(data),
        "sessions": sum(len(c.sessions) for c in data),
        "turns": sum(c.turns for c in data),
        "questions": sum(len(c.questions) for c in data),
        "supporting turns": sum(len(q.evidence) for c in data for q in c.questions),
    }
    return Run(rows, stats, time.perf_counter() - started)


def report(run: Run, data: list[Conversation], extra: str = "", backend: str = "sqlite") -> str:
    table = markdown_table(
        [
            "configuration",
            "questions answered",
            "supporting turns found",
            "context tokens p50 / max",
            "get p50 ms",
        ],
        [(name, *s.row()) for name, s in run.rows],
    )
    first = data[0]
    span = (first.sessions[0][0].at, first.sessions[-1][-1].at)
    sample = next(q for q in first.questions if len(q.evidence) > 1)
    lines = [
        "# Recall quality of long-term memory",
        "",
        f"`{command_line()}` — {environment_line()}",
        "",
        "Synthetic multi-session conversations (benchmarks/recall_eval.py): "
        + ", ".join(f"{v} {k}" for k, v in run.dataset.items())
        + f"; one user's sessions span {span[0]:%Y-%m-%d} to {span[1]:%Y-%m-%d}. "
        "Each planted fact sits in one or two turns among filler and distractor turns that "
        "share its words; the question, asked in the user's latest session, is worded "
        f'differently (e.g. "{sample.text}" needs "{sample.evidence[0]}" and '
        f'"{sample.evidence[1]}").',
        "",
        f"Database: {backend}"
        + (
            " (vectors searched natively in PostgreSQL by pgvector, candidates re-ranked in "
            "the process)"
            if backend == "pgvector"
            else ""
        )
        + f". Budget: `token_limit={TOKEN_LIMIT}` for the whole context. Long-term configurations "
        "use `FlushToLongTerm([VectorMemory(SentenceTransformerEmbedder())])` "
        "(all-MiniLM-L6-v2, local) with `memory_token_limit=1200` and `max_tokens=1200` "
        "unless noted; *sentence keys*: each stored turn also has one vector per sentence of "
        "the user's message, and scores as its best vector. A question is answered when "
        "every supporting turn reaches the context "
        "`AgentMemory.get(session_id, query=question)` returns, verbatim.",
        "",
        table,
        "",
    ]
    if extra:
        lines += [extra, ""]
    lines.append(f"Run time: {run.seconds:.0f} s.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--facts", type=int, default=13)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "recall.md"))
    parser.add_argument("--quick", action="store_true", help="one small user, three configurations")
    parser.add_argument(
        "--backend",
        default="sqlite",
        choices=ALL_BACKENDS,
        help="database (pgvector: native vector search in PostgreSQL; default: a SQLite file)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        data = make_dataset(**QUICK)
    else:
        data = make_dataset(args.users, args.sessions, args.facts, args.seed)
    embedder = SentenceTransformerEmbedder()
    with workdir() as tmp:
        (backend,) = resolve_backends([args.backend], tmp)
        url = backend.url_for("recall").render_as_string(hide_password=False)
        run = evaluate(data, embedder, url, configs(args.quick))
    text = report(run, data, backend=args.backend)
    print(text)
    write_report(args.out, text + kept_notes(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
