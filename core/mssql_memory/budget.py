"""Token budgets: explicit, or derived from a model's context window minus reserves."""

from __future__ import annotations

from .errors import BudgetError

__all__ = ["CONTEXT_WINDOWS", "DEFAULT_TOKEN_LIMIT", "context_window", "derive_token_limit"]

#: The adapters' budget when neither a limit nor a model is given: fits a 16k-context model
#: with room for the system prompt, tools and the reply.
DEFAULT_TOKEN_LIMIT = 12_000

#: Context windows (tokens) of well-known models, matched by longest prefix.
CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "claude": 200_000,
    "gemini-1.5": 1_000_000,
    "gemini-2": 1_000_000,
    "llama3": 8_192,
    "llama-3.1": 128_000,
    "mistral-large": 128_000,
}


def context_window(model: str) -> int:
    """The context window of ``model``; an unknown model is a :class:`BudgetError`."""
    name = model.lower().split("/")[-1]
    best = max((p for p in CONTEXT_WINDOWS if name.startswith(p)), key=len, default=None)
    if best is None:
        raise BudgetError(
            f"unknown model {model!r}: pass token_limit= explicitly "
            f"(known prefixes: {', '.join(sorted(CONTEXT_WINDOWS))})"
        )
    return CONTEXT_WINDOWS[best]


def derive_token_limit(
    *,
    token_limit: int | None,
    model: str | None,
    reserve_system: int,
    reserve_tools: int,
    reserve_response: int,
) -> int:
    """The memory's budget: ``token_limit``, or the model's window minus the reserves."""
    for name, value in (
        ("reserve_system", reserve_system),
        ("reserve_tools", reserve_tools),
        ("reserve_response", reserve_response),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int")
    if token_limit is not None:
        if not isinstance(token_limit, int) or isinstance(token_limit, bool) or token_limit <= 0:
            raise ValueError("token_limit must be a positive int")
        return token_limit
    if not model:
        raise BudgetError("give token_limit= or a known model= to derive it from")
    limit = context_window(model) - reserve_system - reserve_tools - reserve_response
    if limit <= 0:
        raise BudgetError(f"the reserves leave no room in {model}'s context window")
    return limit
