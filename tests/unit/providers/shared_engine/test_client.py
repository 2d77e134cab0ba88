"""A worker's shared-engine provider counts a planned prompt as its planner does (Messages'
count_tokens), with nothing sent to the engine process."""

from pathlib import Path
from typing import Any

from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import Bound, Plan, count_prompt
from chatgate.providers.shared_engine.client import EngineLink, SharedEngineProvider
from tests.unit.fakes import ScriptedProvider


class CountingPlanner(ScriptedProvider):
    """A planner that knows the prompt's exact count (as LocalProvider in plans-only mode does)."""

    async def count_prompt(self, plan: Any) -> int:
        return 7


async def test_a_prompt_is_counted_by_the_planner_and_nothing_runs(tmp_path: Path) -> None:
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    link = EngineLink(tmp_path / "no-engine.sock")  # never connected: counting sends nothing
    counting = SharedEngineProvider(link, "m#0", "m", CountingPlanner([], Bound(40, 16)))
    plan: Plan = counting.prepare(request)
    assert await count_prompt(counting, plan) == 7
    bounding = SharedEngineProvider(link, "m#0", "m", ScriptedProvider([], Bound(40, 16)))
    assert (
        await count_prompt(bounding, bounding.prepare(request)) == 40
    )  # a planner that cannot count: the bound
    await link.aclose()
