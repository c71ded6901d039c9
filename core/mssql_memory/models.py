"""The two model protocols the core needs, and a wrapper for plain functions.

A :class:`ChatModel` turns messages into text (summaries, extracted facts);
an :class:`Embedder` turns texts into vectors. The LangChain and LlamaIndex
adapters wrap their frameworks' models into these.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from .errors import ModelError
from .messages import Message

__all__ = [
    "CallableModel",
    "ChatModel",
    "Embedder",
    "agenerate_within",
    "as_chat_model",
    "generate_within",
]


@runtime_checkable
class ChatModel(Protocol):
    """Generates a text reply to a list of messages."""

    def generate(self, messages: Sequence[Message]) -> str: ...

    async def agenerate(self, messages: Sequence[Message]) -> str: ...


@runtime_checkable
class Embedder(Protocol):
    """Embeds texts as float vectors of a fixed dimension."""

    dimension: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]: ...


class CallableModel:
    """A :class:`ChatModel` from a function ``messages -> str`` (sync or async)."""

    def __init__(
        self, fn: Callable[[Sequence[Message]], str | Awaitable[str]], *, name: str | None = None
    ) -> None:
        if not callable(fn):
            raise TypeError("fn must be callable")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "model")

    def generate(self, messages: Sequence[Message]) -> str:
        result = self.fn(messages)
        if inspect.isawaitable(result):
            raise TypeError(f"{self.name} is async; call agenerate() from async code")
        return result  # type: ignore[return-value]

    async def agenerate(self, messages: Sequence[Message]) -> str:
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(messages)  # type: ignore[misc]
        return await asyncio.to_thread(self.fn, messages)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"CallableModel({self.name})"


def as_chat_model(model: object) -> ChatModel:
    """Accept a :class:`ChatModel` or a plain function and return a :class:`ChatModel`.

    A LangChain or LlamaIndex model is refused with a pointer to the adapter's
    wrapper (LangChain's ``generate`` has another signature than ours).
    """
    roots = {cls.__module__.split(".")[0] for cls in type(model).__mro__}
    if roots & {"langchain_core", "langchain_openai", "langchain_community", "langchain"}:
        raise TypeError("wrap LangChain models with langchain_mssql_memory.as_chat_model(model)")
    if "llama_index" in roots:
        raise TypeError("wrap LlamaIndex models with llamaindex_mssql_memory.as_chat_model(llm)")
    if isinstance(model, ChatModel):
        return model
    if callable(model):
        return CallableModel(model)  # type: ignore[arg-type]
    raise TypeError(
        f"expected a ChatModel (generate/agenerate) or a callable, not {type(model).__name__}; "
        "LangChain and LlamaIndex models are wrapped by their adapters' helpers"
    )


def generate_within(
    model: ChatModel, request: Sequence[Message], timeout: float | None, what: str
) -> str:
    """``model.generate(request)``, or :class:`ModelError` after ``timeout`` seconds (the call
    is abandoned in its worker thread; None waits for ever)."""
    if timeout is None:
        return model.generate(request)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(model.generate, request)
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        if future.done():  # the model itself raised TimeoutError: not ours to rename
            raise
        raise ModelError(f"{what} timed out after {timeout}s") from None
    finally:
        pool.shutdown(wait=False)


async def agenerate_within(
    model: ChatModel, request: Sequence[Message], timeout: float | None, what: str
) -> str:
    """The async twin of :func:`generate_within` (the call is cancelled on timeout)."""
    try:
        return await asyncio.wait_for(model.agenerate(request), timeout)
    except asyncio.TimeoutError as e:
        # wait_for's own timeout cancelled the call; a TimeoutError the model raised is its own
        if not isinstance(e.__cause__, asyncio.CancelledError):
            raise
        raise ModelError(f"{what} timed out after {timeout}s") from None
