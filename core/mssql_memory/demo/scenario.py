"""The HR-policy conversation of the seeds, and offline stand-ins for a model.

The offline pieces never pretend to be a live model: the assistant's answers
are the scenario's recorded responses, the summarizer picks sentences from the
conversation (extractive, no LLM), and the fact extractor matches a few
self-introduction patterns. With an API key the demo uses a real model instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from ..messages import Message

__all__ = [
    "HR_POLICY_FACTS",
    "HR_TURNS",
    "ExtractiveSummarizer",
    "PatternFactExtractor",
    "RecordedAssistant",
]

#: (user message, recorded assistant answer) pairs, from seed 003's HR-policy chatbot.
HR_TURNS: list[tuple[str, str]] = [
    (
        "Hi, I'm Sarah from the Marketing team. I need to understand our remote work policy.",
        "Hello Sarah! I'm here to help you with HR policies. Our remote work policy allows "
        "eligible employees to work remotely up to 3 days per week with manager approval. Would "
        "you like me to explain the eligibility criteria or application process?",
    ),
    (
        "What are the eligibility criteria?",
        "For remote work eligibility, you need to: 1. Have completed at least 6 months with the "
        "company 2. Have satisfactory performance ratings 3. Hold a role suitable for remote work "
        "(as determined by your manager) 4. Have necessary equipment and reliable internet "
        "connection. Are you meeting these criteria, Sarah?",
    ),
    (
        "Yes, I've been here for 2 years and have good performance reviews. How do I apply?",
        "Great! Since you meet the criteria, here's the application process: 1. Submit Form "
        "HR-101 (Remote Work Application) 2. Get manager approval and signature. The form is "
        'available on the employee portal under "HR Forms".',
    ),
    (
        "What if my manager initially says no?",
        "If your manager declines your request, you have options: 1. Ask for specific feedback "
        "2. Propose a trial period 3. Request mediation through HR.",
    ),
    (
        "No, just want to be prepared. What about equipment - does the company provide anything?",
        "Yes, the company provides essential equipment for remote work: a laptop or desktop "
        "computer, and an ergonomic chair allowance up to $300.",
    ),
    (
        "Perfect! One more question - can I work from abroad occasionally?",
        "Working from abroad has additional restrictions: a maximum of 2 weeks per year, and it "
        "must be approved 30 days in advance.",
    ),
    (
        "That's very helpful! I think I have everything I need for now.",
        "Excellent! I'm glad I could help you understand our remote work policy, Sarah. Remember "
        "to submit Form HR-101 when you're ready to apply.",
    ),
]

#: The company's policies: static, global long-term memory.
HR_POLICY_FACTS: list[dict[str, str]] = [
    {"id": "remote-days", "content": "Remote work: up to 3 days/week with manager approval."},
    {
        "id": "remote-abroad",
        "content": "International work: max 2 weeks/year, 30-day advance approval.",
    },
    {"id": "remote-form", "content": "Remote work applications use Form HR-101 (employee portal)."},
    {"id": "agent-role", "content": "You are the HR policy assistant of the company."},
]


class RecordedAssistant:
    """Replays the scenario's recorded answers, matched by the user's question."""

    def __init__(self, turns: Sequence[tuple[str, str]] = HR_TURNS) -> None:
        self.answers = dict(turns)

    def answer(self, context: Sequence[Message]) -> str:
        question = next((m.content for m in reversed(context) if m.role == "user"), "")
        return self.answers.get(question, "I'm sorry, I have no recorded answer for that.")


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


class ExtractiveSummarizer:
    """A local, LLM-free summarizer: what the user said plus the first sentence of each answer.

    Implements the core's ChatModel protocol, so it can stand in for a model.
    """

    name = "offline extractive summarizer (no LLM)"

    def __init__(self, max_sentences: int = 12) -> None:
        self.max_sentences = max_sentences

    def generate(self, messages: Sequence[Message]) -> str:
        text = messages[-1].content
        previous, _, conversation = text.partition("Conversation:\n")
        points: list[str] = []
        if previous.startswith("Previous summary:"):
            points.append(previous.removeprefix("Previous summary:").strip())
        for line in conversation.splitlines():
            role, _, content = line.partition(": ")
            if role == "user":
                points.append(f"User: {content.strip()}")
            elif role == "assistant" and content:
                points.append(f"Assistant: {_SENTENCE.split(content.strip())[0]}")
        return " ".join(points[-self.max_sentences :])

    async def agenerate(self, messages: Sequence[Message]) -> str:
        return self.generate(messages)


class PatternFactExtractor:
    """A local, LLM-free fact extractor for self-introductions ("I'm X from the Y team").

    Answers in the JSON format ExtractiveMemory expects; finds only what its
    patterns describe.
    """

    name = "offline pattern extractor (no LLM)"
    _PATTERNS: list[tuple[str, re.Pattern[str], str]] = [
        ("name", re.compile(r"\bI'?m ([A-Z][a-z]+)\b"), "The user's name is {0}."),
        (
            "department",
            re.compile(r"\bfrom the ([A-Z][A-Za-z]+) team\b"),
            "The user works in the {0} team.",
        ),
        (
            "tenure",
            re.compile(r"been here for (\d+ (?:years?|months?))"),
            "The user has been with the company for {0}.",
        ),
        (
            "performance",
            re.compile(r"\bgood performance\b", re.IGNORECASE),
            "The user has good performance reviews.",
        ),
    ]

    def generate(self, messages: Sequence[Message]) -> str:
        text = messages[-1].content.partition("Conversation:\n")[2]
        user_lines = [ln.partition(": ")[2] for ln in text.splitlines() if ln.startswith("user: ")]
        facts = []
        found = set()
        for line in user_lines:
            for subject, pattern, template in self._PATTERNS:
                match = pattern.search(line)
                if match:
                    found.add(subject)
                    facts.append({"subject": subject, "fact": template.format(*match.groups())})
        if {"tenure", "performance"} <= found:
            facts.append(
                {
                    "subject": "remote_work_eligibility",
                    "fact": "The user is eligible for remote work (tenure and performance met).",
                }
            )
        return json.dumps({"facts": facts})

    async def agenerate(self, messages: Sequence[Message]) -> str:
        return self.generate(messages)
