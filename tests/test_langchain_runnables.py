"""The history inside real LangChain chains: RunnableWithMessageHistory (both configurations,
invoke / ainvoke / stream / astream), summaries reaching the prompt, and a tool-calling loop."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import backend_params
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_core.tools import tool
from mssql_memory import SUMMARY_PREFIX, AgentMemory, Summarize, Trim

from langchain_mssql_memory import MSSQLChatMessageHistory, as_chat_model, history_factory

# RunnableWithMessageHistory itself is deprecated (LangChain's warning, not ours).
pytestmark = pytest.mark.filterwarnings(
    "ignore:RunnableWithMessageHistory is deprecated:DeprecationWarning"
)

MODES = ("invoke", "ainvoke", "stream", "astream")


@pytest.fixture(params=backend_params(("sqlite", "postgresql")))
def lc_backend(request: pytest.FixtureRequest, backend_urls: Any) -> str:
    backend_urls[request.param]  # skips (or fails in CI) when the server is missing
    return request.param


@pytest.fixture
def memory(lc_backend: str, make_store: Any) -> AgentMemory:
    return AgentMemory(make_store(lc_backend), token_limit=4000)


class Spy:
    """A pass-through runnable step that records what the model is sent."""

    def __init__(self) -> None:
        self.calls: list[list[BaseMessage]] = []

    def _record(self, value: Any) -> Any:
        messages = value.to_messages() if hasattr(value, "to_messages") else list(value)
        self.calls.append(messages)
        return value

    def runnable(self) -> RunnableLambda:
        return RunnableLambda(self._record)


async def run(chain: Any, value: Any, config: dict[str, Any], mode: str) -> BaseMessage:
    """Run ``chain`` once in ``mode``; the reply as one message."""
    if mode == "invoke":
        return chain.invoke(value, config)
    if mode == "ainvoke":
        return await chain.ainvoke(value, config)
    chunks = (
        list(chain.stream(value, config))
        if mode == "stream"
        else [c async for c in chain.astream(value, config)]
    )
    assert len(chunks) > 1  # really streamed
    reply = chunks[0]
    for chunk in chunks[1:]:
        reply = reply + chunk
    return reply


def replies(n: int) -> list[str]:
    return [f"reply number {i}" for i in range(n)]


@pytest.mark.parametrize("mode", MODES)
async def test_prompt_with_history_messages_key(memory: AgentMemory, mode: str) -> None:
    """With history_messages_key, the prompt gets the stored turns and each turn is stored once."""
    spy = Spy()
    model = FakeListChatModel(responses=replies(3))
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are helpful."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    chain = RunnableWithMessageHistory(
        prompt | spy.runnable() | model,
        history_factory(memory=memory),
        input_messages_key="question",
        history_messages_key="history",
    )
    config = {"configurable": {"session_id": f"key-{mode}"}}
    for i in range(3):
        reply = await run(chain, {"question": f"question {i}"}, config, mode)
        assert reply.content == f"reply number {i}"
    assert [m.content for m in spy.calls[2]] == [
        "You are helpful.",
        "question 0",
        "reply number 0",
        "question 1",
        "reply number 1",
        "question 2",
    ]
    stored = MSSQLChatMessageHistory(f"key-{mode}", memory=memory).get_full_history()
    assert [(type(m).__name__[:5], m.content) for m in stored] == [
        (kind, text)
        for i in range(3)
        for kind, text in (("Human", f"question {i}"), ("AIMes", f"reply number {i}"))
    ]
    expected_ai = AIMessageChunk if mode in ("stream", "astream") else AIMessage
    assert all(isinstance(m, expected_ai) for m in stored[1::2])


@pytest.mark.parametrize("mode", MODES)
async def test_messages_in_messages_out(memory: AgentMemory, mode: str) -> None:
    """Without history_messages_key, the model gets history + input; only new turns are stored."""
    spy = Spy()
    model = FakeListChatModel(responses=replies(3))
    chain = RunnableWithMessageHistory(spy.runnable() | model, history_factory(memory=memory))
    config = {"configurable": {"session_id": f"plain-{mode}"}}
    for i in range(3):
        value: Any = f"question {i}" if i % 2 == 0 else [HumanMessage(f"question {i}")]
        reply = await run(chain, value, config, mode)
        assert reply.content == f"reply number {i}"
    assert [m.content for m in spy.calls[2]] == [
        "question 0",
        "reply number 0",
        "question 1",
        "reply number 1",
        "question 2",
    ]
    history = MSSQLChatMessageHistory(f"plain-{mode}", memory=memory)
    assert len(history.get_full_history()) == 6
    assert history.messages == history.get_full_history()


@pytest.mark.parametrize("mode", ["invoke", "astream"])
async def test_summary_reaches_the_prompt(lc_backend: str, make_store: Any, mode: str) -> None:
    """With Summarize and a fake summarizer, the chain's prompt carries the rolling summary."""
    summarizer_inputs = Spy()
    summarizer = as_chat_model(
        summarizer_inputs.runnable()
        | FakeListChatModel(responses=["Ann asked about parental leave and remote work."])
    )
    memory = AgentMemory(
        make_store(lc_backend),
        token_limit=260,
        overflow=Summarize(summarizer, keep_recent=2, max_summary_tokens=60),
    )
    spy = Spy()
    model = FakeListChatModel(responses=[f"answer {i} " + "detail " * 15 for i in range(8)])
    prompt = ChatPromptTemplate.from_messages(
        [MessagesPlaceholder("history"), ("human", "{question}")]
    )
    chain = RunnableWithMessageHistory(
        prompt | spy.runnable() | model,
        history_factory(memory=memory),
        input_messages_key="question",
        history_messages_key="history",
    )
    config = {"configurable": {"session_id": "summary"}}
    for i in range(8):
        await run(
            chain, {"question": f"I am Ann, question {i} " + "about leave " * 8}, config, mode
        )
    last_prompt = spy.calls[-1]
    assert isinstance(last_prompt[0], SystemMessage)
    assert last_prompt[0].content == (
        SUMMARY_PREFIX + "Ann asked about parental leave and remote work."
    )
    assert isinstance(last_prompt[1], HumanMessage)
    assert last_prompt[-1].content.startswith("I am Ann, question 7")
    assert summarizer_inputs.calls, "the summarizer was called"
    assert "I am Ann, question 0" in summarizer_inputs.calls[0][-1].content
    assert len(MSSQLChatMessageHistory("summary", memory=memory).get_full_history()) == 16


# -- a tool-calling loop ---------------------------------------------------------------------


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(response_format="content_and_artifact")
def multiply(a: int, b: int) -> tuple[str, dict[str, int]]:
    """Multiply two integers (the artifact keeps the operands)."""
    return str(a * b), {"a": a, "b": b}


TOOLS = {"add": add, "multiply": multiply}


def tool_script(rounds: int) -> Iterator[AIMessage]:
    """The fake model's replies: parallel tool calls, then an answer, ``rounds`` times."""
    for r in range(rounds):
        yield AIMessage(
            "",
            id=f"ai-call-{r}",
            tool_calls=[
                {"id": f"call_{r}_a", "name": "add", "args": {"a": r, "b": 3}},
                {"id": f"call_{r}_m", "name": "multiply", "args": {"a": r, "b": 5}},
            ],
            usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
        )
        yield AIMessage(f"round {r}: {r + 3} and {r * 5} " + "because " * 10, id=f"ai-ans-{r}")


def execute(reply: AIMessage) -> list[ToolMessage]:
    return [TOOLS[call["name"]].invoke({**call, "type": "tool_call"}) for call in reply.tool_calls]


def assert_no_split(context: list[BaseMessage]) -> None:
    """Every tool result follows its call; every call before the end has all its results."""
    expected: set[str] = set()
    for message in context:
        if isinstance(message, ToolMessage):
            assert message.tool_call_id in expected, "orphan tool result"
            expected.discard(message.tool_call_id)
        else:
            assert not expected, "a call lost its results"
            if isinstance(message, AIMessage):
                expected = {c["id"] for c in message.tool_calls}
    assert not expected


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_tool_loop_through_runnable_with_history(
    lc_backend: str, make_store: Any, asynchronous: bool
) -> None:
    """Tool results sent through the chain follow their call; the history round-trips."""
    memory = AgentMemory(make_store(lc_backend), token_limit=420, overflow=Trim())
    spy = Spy()
    rounds = 6
    model = GenericFakeChatModel(messages=tool_script(rounds))
    chain = RunnableWithMessageHistory(spy.runnable() | model, history_factory(memory=memory))
    config = {"configurable": {"session_id": "tools"}}
    history = MSSQLChatMessageHistory("tools", memory=memory)
    sent: list[BaseMessage] = []
    mode = "ainvoke" if asynchronous else "invoke"
    for r in range(rounds):
        question = HumanMessage(f"what are {r}+3 and {r}*5?", id=f"q-{r}")
        call = await run(chain, [question], config, mode)
        assert call.tool_calls
        results = execute(call)
        assert results[1].artifact == {"a": r, "b": 5}
        answer = await run(chain, results, config, mode)
        assert answer.content.startswith(f"round {r}")
        # the model saw its own call right before the results
        seen = spy.calls[-1]
        assert seen[-3:] == [call, *results]
        assert_no_split(seen)
        sent += [question, call, *results, answer]
        context = await history.aget_messages() if asynchronous else history.messages
        assert_no_split(context)
    full = history.get_full_history()
    assert full == sent
    assert len(history.messages) < len(full)  # trimming happened, by whole groups


def test_manual_tool_loop(lc_backend: str, make_store: Any) -> None:
    """The plain loop (add call, run tools, add results, call the model) keeps groups whole."""
    memory = AgentMemory(make_store(lc_backend), token_limit=300)
    history = MSSQLChatMessageHistory("manual", memory=memory)
    model = GenericFakeChatModel(messages=tool_script(5))
    for r in range(5):
        history.add_message(HumanMessage(f"compute round {r}"))
        call = model.invoke(history.messages)
        history.add_message(call)
        history.add_messages(execute(call))
        context = history.messages
        assert_no_split(context)
        assert context[-3] == call
        history.add_message(model.invoke(context))
        assert_no_split(history.messages)
    assert len(history.get_full_history()) == 25
    stored = memory.history("manual")
    assert [m.role for m in stored[:5]] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [c.name for c in stored[1].tool_calls] == ["add", "multiply"]


@pytest.mark.parametrize("step", [1, 2, 3])
def test_context_never_splits_groups_under_pressure(
    lc_backend: str, make_store: Any, step: int
) -> None:
    """Whatever the budget pressure, the context holds whole tool groups, after every write."""
    memory = AgentMemory(make_store(lc_backend), token_limit=150 + 60 * step)
    history = MSSQLChatMessageHistory(f"pressure-{step}", memory=memory)
    script = tool_script(6)
    for r, reply in zip(itertools.count(), script, strict=False):
        batch: list[BaseMessage] = [HumanMessage(f"go {r}")] if r % step == 0 else []
        batch.append(reply)
        if reply.tool_calls:
            history.add_messages(batch)
            results = execute(reply)
            for done in range(1, len(results) + 1):
                history.add_message(results[done - 1])
                context = history.messages
                if done < len(results):  # still pending: shown last, after whole groups
                    assert context[-(done + 1) :] == [reply, *results[:done]]
                    assert_no_split(context[: -(done + 1)])
                else:
                    assert_no_split(context)
        else:
            history.add_messages(batch)
            assert_no_split(history.messages)
