"""Fakes and helpers shared by the long-term memory tests (no fixtures: see ltm_fixtures).

- :class:`RuleExtractor`: a deterministic extraction "model" answering JSON from regex rules;
- :class:`ScriptedModel`: answers (or raises) from a script;
- :class:`KeywordEmbedder`: a tiny fixed-dimension embedder for tests that need no semantics;
- :func:`turn` / :func:`stored`: dated messages, numbered as a store numbers them.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

from mssql_memory import Message


class RuleExtractor:
    """A deterministic extraction model: each ``(pattern, subject, fact)`` rule that matches
    the conversation it is shown yields ``{"subject": ..., "fact": ...}`` (``fact`` may use
    the pattern's groups, ``\\1``). Records its calls; ``before_answer`` runs before answering
    (a barrier, a failure)."""

    def __init__(
        self,
        rules: Sequence[tuple[str, str | None, str]],
        *,
        before_answer: Callable[[], None] | None = None,
    ) -> None:
        self.rules = [(re.compile(p, re.IGNORECASE), s, f) for p, s, f in rules]
        self.before_answer = before_answer
        self.calls: list[list[Message]] = []
        self._lock = threading.Lock()

    def answer(self, messages: Sequence[Message]) -> str:
        conversation = messages[1].content.split("Conversation:", 1)[-1]
        facts = []
        for pattern, subject, fact in self.rules:
            for match in pattern.finditer(conversation):
                facts.append({"subject": subject, "fact": match.expand(fact)})
        return json.dumps({"facts": facts})

    def generate(self, messages: Sequence[Message]) -> str:
        with self._lock:
            self.calls.append(list(messages))
        if self.before_answer is not None:
            self.before_answer()
        return self.answer(messages)

    async def agenerate(self, messages: Sequence[Message]) -> str:
        return self.generate(messages)


class ScriptedModel:
    """A model that returns (or raises) the scripted answers in order, then repeats the last."""

    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[list[Message]] = []

    def generate(self, messages: Sequence[Message]) -> str:
        self.calls.append(list(messages))
        index = min(len(self.calls), len(self.answers)) - 1
        answer = self.answers[index]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def agenerate(self, messages: Sequence[Message]) -> str:
        return self.generate(messages)


class KeywordEmbedder:
    """A fixed-dimension bag-of-words embedder (word -> hashed axis), L2-normalized."""

    dimension = 64

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            vector = [0.0] * self.dimension
            for word in re.findall(r"\w+", text.casefold()):
                vector[sum(map(ord, word)) % self.dimension] += 1.0
            norm = sum(x * x for x in vector) ** 0.5 or 1.0
            out.append([x / norm for x in vector])
        return out

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed(texts)


T0 = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)


def turn(user: str, assistant: str, *, minutes: int = 0) -> list[Message]:
    """A user message and the assistant's reply, dated ``minutes`` after ``T0``."""
    at = T0 + timedelta(minutes=minutes)
    return [
        Message("user", user, created_at=at),
        Message("assistant", assistant, created_at=at + timedelta(seconds=20)),
    ]


def stored(messages: Sequence[Message], first_seq: int = 1) -> list[Message]:
    """``messages`` numbered as a store numbers them (what a block's update receives)."""
    return [m.with_fields(seq=first_seq + i) for i, m in enumerate(messages)]
