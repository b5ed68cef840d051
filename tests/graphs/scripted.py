"""Scripted chat models standing in for hosted LLMs, which cannot run in tests.

`ScriptedChatModel` replays a fixed list of replies (tool calls included) and records the
messages it was sent. The factories at the bottom are for `--model import:...` runs in
child processes: a model that always fails, and one that hangs until its process is
killed (it writes a marker file first so the test knows the run reached the model step),
and one that waits at the model step until the test opens a gate file.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field


class ScriptedChatModel(BaseChatModel):
    """Replays `replies` in order; `bind_tools` returns the model itself."""

    replies: list[AIMessage]
    seen: list[list[BaseMessage]] = Field(default_factory=list)
    fail_first: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        self.seen.clear()
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(list(messages))
        if self.fail_first > 0:
            self.fail_first -= 1
            raise ConnectionError("endpoint unavailable (scripted)")
        if not self.replies:
            raise AssertionError("the scripted model ran out of replies")
        return ChatResult(generations=[ChatGeneration(message=self.replies.pop(0))])


def answer(
    headline: str, sections: list[tuple[str, str]], recs: list[tuple[str, list[str]]]
) -> AIMessage:
    """An AIMessage holding an Analysis JSON answer."""
    body = {
        "headline": headline,
        "sections": [{"title": t, "body": b} for t, b in sections],
        "recommendations": [
            {"priority": i + 1, "action": a, "rationale": a, "finding_ids": ids}
            for i, (a, ids) in enumerate(recs)
        ],
    }
    return AIMessage(content="```json\n" + json.dumps(body) + "\n```")


def tool_call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


class _Failing(BaseChatModel):
    @property
    def _llm_type(self) -> str:
        return "failing"

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        raise ConnectionError("serving endpoint returned 503 (scripted)")

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self


class _Hanging(_Failing):
    @property
    def _llm_type(self) -> str:
        return "hanging"

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        Path(os.environ["FINMATCH_TEST_MARKER"]).write_text("model step reached")
        await self._wait()
        reply = answer("Gated answer", [("Findings", "As the evidence shows.")], [])
        return ChatResult(generations=[ChatGeneration(message=reply)])

    async def _wait(self) -> None:
        await asyncio.Event().wait()  # never set: the test kills this process


class _Gated(_Hanging):
    """Writes the marker, waits until the gate file exists, then answers."""

    @property
    def _llm_type(self) -> str:
        return "gated"

    async def _wait(self) -> None:
        gate = Path(os.environ["FINMATCH_TEST_GATE"])
        while not gate.exists():
            await asyncio.sleep(0.05)


def failing(ctx: Any) -> BaseChatModel:
    """Factory for `import:tests.graphs.scripted:failing`."""
    return _Failing()


def hanging(ctx: Any) -> BaseChatModel:
    """Factory for `import:tests.graphs.scripted:hanging`."""
    return _Hanging()


CURRENT: list[BaseChatModel] = []


def current(ctx: Any) -> BaseChatModel:
    """Factory for `import:tests.graphs.scripted:current`: the model a test put in CURRENT."""
    return CURRENT[-1]


def gated(ctx: Any) -> BaseChatModel:
    """Factory for `import:tests.graphs.scripted:gated`: answers once the gate file exists."""
    return _Gated()
