"""Turn an LLM's OpenAI-style tool calls into run steps; they are then bound like any submitted step."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agents.errors import BadToolCall
from agents.runner import Step


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def steps_from_tool_calls(calls: Sequence[Any]) -> list[Step]:
    """`message.tool_calls` (SDK objects or their dicts) as steps, in order. The model's proposal gains no
    authority: the runner still checks the caller's scopes and limits and waits for approval."""
    steps = []
    for i, call in enumerate(calls):
        function = _field(call, "function")
        name = _field(function, "name") if function is not None else None
        if not isinstance(name, str) or not name:
            raise BadToolCall(i, "it names no function")
        raw = _field(function, "arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as exc:
            raise BadToolCall(i, f"arguments of {name!r} are not JSON ({exc.msg})") from None
        if not isinstance(arguments, dict):
            raise BadToolCall(i, f"arguments of {name!r} are not a JSON object")
        steps.append(Step(name, arguments))
    return steps
