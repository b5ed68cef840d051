"""A chat model that answers after a fixed delay, standing in for a hosted LLM.

`import:bench.delayed_model:delayed` (the service bench selects it per run). It waits
`FINMATCH_BENCH_DELAY_S` seconds (default 1) without holding a thread, as a remote
endpoint would, then answers with an analysis that cites the findings it was given and
quotes no number of its own (so the grounding check has nothing to reject).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult


def _answer(messages: list[BaseMessage]) -> AIMessage:
    prompt = json.loads(str(messages[-1].content))  # {"request": ..., "data": ...}
    ids = [f["id"] for f in prompt["data"].get("findings", [])]
    body = {
        "headline": f"{prompt['request']['focus_area']}: what the evidence shows",
        "sections": [{"title": "Findings", "body": "The findings above, in order of impact."}],
        "recommendations": [
            {"priority": 1, "action": "Act on the first finding", "rationale": "It leads.",
             "finding_ids": ids[:1]}
        ] if ids else [],
    }  # fmt: skip
    return AIMessage(content=json.dumps(body))


class DelayedChatModel(BaseChatModel):
    """Sleeps `delay_s` on the event loop, then answers."""

    delay_s: float = 1.0

    @property
    def _llm_type(self) -> str:
        return "delayed"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        """Return the model itself: it never calls tools."""
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise NotImplementedError("the service calls models asynchronously")

    async def _agenerate(
        self, messages: list[BaseMessage], *args: Any, **kwargs: Any
    ) -> ChatResult:
        await asyncio.sleep(self.delay_s)
        return ChatResult(generations=[ChatGeneration(message=_answer(messages))])


def delayed(ctx: Any) -> BaseChatModel:
    """Factory for `import:bench.delayed_model:delayed`."""
    return DelayedChatModel(delay_s=float(os.environ.get("FINMATCH_BENCH_DELAY_S", "1")))
