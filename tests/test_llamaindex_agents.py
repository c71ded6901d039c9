"""MSSQLMemory as ``memory=`` for FunctionAgent, ReActAgent and AgentWorkflow runs, across a
workflow Context round trip and across a process restart. The LLM is a scripted fake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ReActAgent
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.llms import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from sqlalchemy.engine import make_url
from workflows import Context

import llamaindex_mssql_memory._memory as memory_module
from llamaindex_mssql_memory import MSSQLMemory, clear_connections

REPO = Path(__file__).resolve().parents[1]
SECRET = "agent-s3cret"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Script:
    """A deterministic LLM: returns the next scripted message and records what it was sent."""

    def __init__(self, *steps: ChatMessage) -> None:
        self.steps = list(steps)
        self.seen: list[list[ChatMessage]] = []

    def __call__(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        self.seen.append([m.model_copy(deep=True) for m in messages])
        return self.steps.pop(0)

    def llm(self) -> MockFunctionCallingLLM:
        return MockFunctionCallingLLM(response_generator=self)


def call(name: str, call_id: str, **kwargs: Any) -> ChatMessage:
    block = ToolCallBlock(tool_call_id=call_id, tool_name=name, tool_kwargs=kwargs)
    return ChatMessage(role="assistant", blocks=[block])


def say(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def texts(messages: Sequence[ChatMessage]) -> list[str | None]:
    return [m.content for m in messages]


@pytest.fixture(autouse=True)
def _forget_connections():
    yield
    clear_connections()
    memory_module._agents.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def memory(request: pytest.FixtureRequest, amake_store) -> MSSQLMemory:
    """A fresh MSSQLMemory on each backend."""
    store = amake_store(request.param, flavor="url")
    return MSSQLMemory.from_defaults(session_id="agent-s", connection=store, token_limit=4000)


async def test_function_agent_stores_the_whole_turn(memory: MSSQLMemory) -> None:
    """A FunctionAgent run stores user, tool call, tool result and answer, exactly."""
    script = Script(call("add", "call_1", a=2, b=3), say("2 + 3 = 5"))
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=script.llm())
    result = await agent.run(user_msg="What is 2 + 3?", memory=memory)
    assert str(result.response.content) == "2 + 3 = 5"
    stored = await memory.aget_all()
    assert [m.role.value for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1].blocks[0].tool_name == "add" and stored[1].blocks[0].tool_call_id == "call_1"
    assert stored[2].additional_kwargs["tool_call_id"] == "call_1" and stored[2].content == "5"
    neutral = memory.store.get_history("agent-s")
    assert neutral[1].tool_calls[0].name == "add" and neutral[2].tool_call_id == "call_1"

    follow_up = Script(say("Still 5."))
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=follow_up.llm())
    await agent.run(user_msg="And again?", memory=memory)
    sent = follow_up.seen[0]
    assert texts(sent)[0] == "What is 2 + 3?" and texts(sent)[-1] == "And again?"
    assert any(m.role.value == "tool" for m in sent)


async def test_react_agent_keeps_reasoning(memory: MSSQLMemory) -> None:
    """A ReActAgent run stores the user turn and its reasoning trace; the next run sees them."""
    script = Script(
        say('Thought: I need to add.\nAction: add\nAction Input: {"a": 2, "b": 3}'),
        say("Thought: I can answer without using any more tools.\nAnswer: 5"),
    )
    agent = ReActAgent(tools=[FunctionTool.from_defaults(add)], llm=script.llm())
    result = await agent.run(user_msg="What is 2 + 3?", memory=memory)
    assert str(result.response.content).strip() == "5"
    stored = await memory.aget_all()
    assert stored[0].content == "What is 2 + 3?"
    assert "Observation: 5" in stored[-1].content and stored[-1].role.value == "assistant"

    follow_up = Script(say("Thought: I know this.\nAnswer: still 5"))
    agent = ReActAgent(tools=[FunctionTool.from_defaults(add)], llm=follow_up.llm())
    await agent.run(user_msg="Again?", memory=memory)
    assert any("What is 2 + 3?" in (m.content or "") for m in follow_up.seen[0])


def workflow_for(script: Script) -> AgentWorkflow:
    router = FunctionAgent(
        name="router",
        description="Routes questions.",
        system_prompt="Route maths to calc.",
        llm=script.llm(),
        can_handoff_to=["calc"],
    )
    calc = FunctionAgent(
        name="calc",
        description="Does arithmetic.",
        system_prompt="You add numbers.",
        tools=[FunctionTool.from_defaults(add)],
        llm=script.llm(),
    )
    return AgentWorkflow(agents=[router, calc], root_agent="router")


async def test_agent_workflow_with_handoff_and_context_round_trip(memory: MSSQLMemory) -> None:
    """A multi-agent run shares the memory; a Context restored from its dict continues it."""
    script = Script(
        call("handoff", "h1", to_agent="calc", reason="maths"),
        call("add", "c1", a=20, b=22),
        say("42"),
    )
    workflow = workflow_for(script)
    handler = workflow.run(user_msg="20 + 22?", memory=memory)
    result = await handler
    assert str(result.response.content) == "42"
    stored = await memory.aget_all()
    names = [b.tool_name for m in stored for b in m.blocks if isinstance(b, ToolCallBlock)]
    assert names == ["handoff", "add"]

    data = json.loads(json.dumps(handler.ctx.to_dict()))
    restored = Context.from_dict(workflow, data)
    follow_up = Script(say("Yes, 42."))
    workflow = workflow_for(follow_up)
    restored = Context.from_dict(workflow, data)
    await workflow.run(user_msg="Sure?", ctx=restored)
    seen = texts(follow_up.seen[0])
    assert "20 + 22?" in seen and seen[-1] == "Sure?"
    assert [m.content for m in await memory.aget_all()][-2:] == ["Sure?", "Yes, 42."]


@pytest.mark.integration
async def test_context_dict_holds_no_credentials(postgresql_url: str) -> None:
    """A Context serialized mid-conversation names the database but not its password."""
    url = make_url(postgresql_url).set(password=SECRET).render_as_string(hide_password=False)
    memory = MSSQLMemory.from_defaults(
        session_id="cred-s", connection=url, table_name=f"t_{uuid.uuid4().hex[:10]}"
    )
    try:
        script = Script(call("add", "c1", a=1, b=1), say("2"))
        agent = FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=script.llm())
        handler = agent.run(user_msg="1 + 1?", memory=memory)
        await handler
        text = json.dumps(handler.ctx.to_dict())
        assert SECRET not in text and make_url(postgresql_url).host in text
        restored = Context.from_dict(agent, json.loads(text))
        again = Script(say("still 2"))
        agent = FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=again.llm())
        await agent.run(user_msg="sure?", ctx=Context.from_dict(agent, json.loads(text)))
        assert "1 + 1?" in texts(again.seen[0])
        del restored
    finally:
        await memory.store.adrop_schema()
        await memory.store.aclose()
        memory.store.close()


RUN = textwrap.dedent(
    """
    import asyncio, json, sys
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
    from llama_index.core.llms import MockFunctionCallingLLM
    from llama_index.core.tools import FunctionTool
    from llamaindex_mssql_memory import MSSQLMemory

    url, question, tool_first = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    seen = []
    steps = []
    if tool_first:
        block = ToolCallBlock(tool_call_id="c1", tool_name="add", tool_kwargs={"a": 2, "b": 3})
        steps.append(ChatMessage(role="assistant", blocks=[block]))
    steps.append(ChatMessage(role="assistant", content="answer to " + question))

    def respond(messages, **kwargs):
        seen.append([m.content for m in messages])
        return steps.pop(0)

    def add(a: int, b: int) -> int:
        "Add two integers."
        return a + b

    async def main():
        memory = MSSQLMemory.from_defaults(session_id="restart", connection=url)
        llm = MockFunctionCallingLLM(response_generator=respond)
        agent = FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=llm)
        await agent.run(user_msg=question, memory=memory)
        history = [m.content for m in await memory.aget_all()]
        print(json.dumps({"first_call": seen[0], "history": history}))

    asyncio.run(main())
    """
)


def run_process(url: str, question: str, tool_first: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "core")])}
    done = subprocess.run(
        [sys.executable, "-c", RUN, url, question, "1" if tool_first else "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_conversation_survives_a_process_restart(tmp_path: Path) -> None:
    """A second process with the same session id and SQLite file sees the first run."""
    url = f"sqlite:///{tmp_path / 'agent.db'}"
    first = run_process(url, "What is 2 + 3?", tool_first=True)
    assert first["history"] == ["What is 2 + 3?", None, "5", "answer to What is 2 + 3?"]
    second = run_process(url, "What did I ask?", tool_first=False)
    assert second["first_call"][:4] == first["history"]
    assert second["first_call"][-1] == "What did I ask?"
    assert second["history"][-2:] == ["What did I ask?", "answer to What did I ask?"]
