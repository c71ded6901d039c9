"""ExtractiveMemory: durable facts about a user, extracted by a model and reconciled in SQL."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from ..blocks import BaseMemoryBlock
from ..messages import Message
from ..models import ChatModel, agenerate_within, as_chat_model, generate_within
from ..tokens import TokenCounter, default_token_counter
from ._common import check_block_args, format_turn, pack, resolve_store, split_turns
from .relevance import bm25_scores
from .store import NewFact

__all__ = ["DEFAULT_EXTRACTION_PROMPT", "ExtractiveMemory", "parse_facts"]

logger = logging.getLogger("mssql_memory.ltm")

DEFAULT_EXTRACTION_PROMPT = (
    "Extract durable facts about the user from the conversation below: who they are (name, "
    "team, role), their preferences, their situation and decisions, anything worth remembering "
    "in a future conversation. Skip small talk and facts about the assistant. Each fact is one "
    "short sentence about the user. Give each fact a short snake_case subject naming the "
    "attribute it sets (for example name, department, remote_work_eligibility), so a newer "
    "fact on the same subject replaces an older one.\n"
    'Answer with JSON only: {"facts": [{"subject": "...", "fact": "..."}]}. '
    'If there is nothing worth remembering, answer {"facts": []}.'
)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)
MAX_FACT_CHARS = 1000


class FactFormatError(ValueError):
    """The extractor's answer is not the expected JSON."""


def parse_facts(text: Any) -> list[tuple[str | None, str]]:
    """Validate an extractor answer and return ``(subject, fact)`` pairs.

    Accepts ``{"facts": [...]}`` or a bare list, items as objects or strings,
    optionally inside a Markdown code fence. Anything else is FactFormatError.
    """
    if not isinstance(text, str):
        raise FactFormatError(f"expected text, got {type(text).__name__}")
    try:
        data = json.loads(_FENCE.sub("", text.strip()))
    except ValueError as e:
        raise FactFormatError(f"not JSON: {e}") from None
    items = data.get("facts") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise FactFormatError('expected {"facts": [...]}')
    out: list[tuple[str | None, str]] = []
    for item in items:
        if isinstance(item, str):
            subject, fact = None, item
        elif isinstance(item, dict) and isinstance(item.get("fact"), str):
            subject, fact = item.get("subject"), item["fact"]
            if subject is not None and not isinstance(subject, str):
                raise FactFormatError(f"subject must be a string: {item!r}")
        else:
            raise FactFormatError(f"malformed fact: {item!r}")
        fact = " ".join(fact.split())
        if not fact:
            continue
        if len(fact) > MAX_FACT_CHARS:
            raise FactFormatError("fact too long")
        subject = "_".join(subject.casefold().split())[:255] if subject else None
        out.append((subject or None, fact))
    return out


class ExtractiveMemory(BaseMemoryBlock):
    """Facts about each user, extracted by ``model`` from the messages it is given.

    The answer must be JSON (see :data:`DEFAULT_EXTRACTION_PROMPT`); a malformed
    answer is retried once, then logged and skipped (the messages stay in the
    session's history). New facts are reconciled in one transaction: duplicates
    are no-ops (a uniqueness constraint), a fact on the same subject supersedes
    the older one, which is kept with a validity end. Facts are per ``user_id``;
    messages of a session without a user are not extracted. A model call that
    takes longer than ``timeout`` seconds raises :class:`ModelError` (a flush then
    keeps the messages and tries this block again at the next one).
    """

    def __init__(
        self,
        model: ChatModel | Any,
        *,
        store: Any = None,
        prompt: str = DEFAULT_EXTRACTION_PROMPT,
        max_facts: int = 50,
        max_tokens: int = 400,
        name: str = "extractive_memory",
        token_counter: TokenCounter | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        check_block_args(name, max_tokens)
        if timeout is not None and (isinstance(timeout, bool) or timeout <= 0):
            raise ValueError("timeout must be positive or None")
        if not isinstance(max_facts, int) or isinstance(max_facts, bool) or max_facts <= 0:
            raise ValueError("max_facts must be a positive int")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty str")
        self.model = as_chat_model(model)
        self.store = resolve_store(store)
        self.prompt = prompt
        self.max_facts = max_facts
        self.max_tokens = max_tokens
        self.name = name
        self.counter = token_counter or default_token_counter()
        self.timeout = timeout

    def _generate(self, request: list[Message]) -> str:
        return generate_within(self.model, request, self.timeout, "fact extraction")

    async def _agenerate(self, request: list[Message]) -> str:
        return await agenerate_within(self.model, request, self.timeout, "fact extraction")

    def _request(self, messages: Sequence[Message], session_id: str, known: list[str]):
        transcript = "\n\n".join(format_turn(t, session_id) for t in split_turns(messages))
        body = ""
        if known:
            body += "Facts already known about the user:\n" + "\n".join(f"- {k}" for k in known)
            body += "\n\n"
        body += f"Conversation:\n{transcript}"
        return [Message("system", self.prompt), Message("user", body)]

    def _retry(self, request: list[Message], answer: Any, error: Exception) -> list[Message]:
        return [
            *request,
            Message("assistant", answer if isinstance(answer, str) else repr(answer)),
            Message("user", f"That answer was invalid ({error}). Reply with the JSON only."),
        ]

    def _new_facts(self, pairs, messages: Sequence[Message], session_id: str) -> list[NewFact]:
        last = max((m.seq or 0) for m in messages) if messages else None
        return [
            NewFact(
                content=fact,
                token_count=self.counter.count_text(fact),
                subject=subject,
                source_session_id=session_id,
                source_seq=last,
            )
            for subject, fact in pairs
        ]

    def _skip(self, error: Exception, user_id: str) -> None:
        logger.warning("fact extraction for user %s skipped: %s", user_id, error)

    def update(self, messages: Sequence[Message], *, user_id: str | None, session_id: str) -> None:
        """Extract facts from ``messages`` and reconcile them into the user's facts."""
        if user_id is None or not messages:
            return
        known = [f.content for f in self.store.facts(self.name, user_id)]
        request = self._request(messages, session_id, known)
        answer = self._generate(request)
        try:
            pairs = parse_facts(answer)
        except FactFormatError as e:
            answer2 = self._generate(self._retry(request, answer, e))
            try:
                pairs = parse_facts(answer2)
            except FactFormatError as e2:
                self._skip(e2, user_id)
                return
        if pairs:
            new = self._new_facts(pairs, messages, session_id)
            self.store.add_facts(self.name, user_id, new, max_facts=self.max_facts)

    async def aupdate(
        self, messages: Sequence[Message], *, user_id: str | None, session_id: str
    ) -> None:
        if user_id is None or not messages:
            return
        known = [f.content for f in await self.store.afacts(self.name, user_id)]
        request = self._request(messages, session_id, known)
        answer = await self._agenerate(request)
        try:
            pairs = parse_facts(answer)
        except FactFormatError as e:
            answer2 = await self._agenerate(self._retry(request, answer, e))
            try:
                pairs = parse_facts(answer2)
            except FactFormatError as e2:
                self._skip(e2, user_id)
                return
        if pairs:
            new = self._new_facts(pairs, messages, session_id)
            await self.store.aadd_facts(self.name, user_id, new, max_facts=self.max_facts)

    def _select(self, facts, query: str | None, max_tokens: int) -> list[str]:
        budget = min(max_tokens, self.max_tokens)
        items = [(f.content, f.token_count) for f in facts]
        order = list(range(len(items)))[::-1]  # newest first
        if query:
            scores = bm25_scores(query, [c for c, _ in items])
            order.sort(key=lambda i: -scores[i])  # stable: ties stay newest first
        chosen = pack([items[i] for i in order], budget)
        return [items[i][0] for i in sorted(order[c] for c in chosen)]

    def get(
        self, *, query: str | None, user_id: str | None, session_id: str, max_tokens: int
    ) -> list[str]:
        """The user's current facts, the most relevant to ``query`` first when not all fit."""
        if user_id is None:
            return []
        return self._select(self.store.facts(self.name, user_id), query, max_tokens)

    async def aget(
        self, *, query: str | None, user_id: str | None, session_id: str, max_tokens: int
    ) -> list[str]:
        if user_id is None:
            return []
        return self._select(await self.store.afacts(self.name, user_id), query, max_tokens)

    def facts(self, user_id: str, *, include_superseded: bool = False):
        """The user's stored facts (for inspection and tools)."""
        return self.store.facts(self.name, user_id, valid_only=not include_superseded)

    def delete_user(self, user_id: str) -> int:
        return self.store.delete_user(user_id, block=self.name)

    async def adelete_user(self, user_id: str) -> int:
        return await self.store.adelete_user(user_id, block=self.name)

    def __repr__(self) -> str:
        return f"ExtractiveMemory(name={self.name!r}, max_facts={self.max_facts})"
