"""The tool registry: look tools up by name, list their declarations, and offer them to an LLM."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from agents.errors import DuplicateTool, UnknownTool
from agents.tools import Effect, Tool
from retrieval.types import Principal

# OpenAI function names: letters, digits, `_` and `-`, at most 64.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ToolDeclaration:
    """Everything a caller may know about a tool before using it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    scope: str
    effect: Effect
    idempotent: bool
    annotations: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Registry:
    """Tools by name."""

    def __init__(self, tools: list[Tool[Any]] | None = None) -> None:
        self._tools: dict[str, Tool[Any]] = {}
        for tool in tools or []:
            self.register(tool)

    def register(self, tool: Tool[Any]) -> None:
        if not _NAME.match(tool.name):
            raise ValueError(f"tool name {tool.name!r} must match {_NAME.pattern} (OpenAI function names)")
        if tool.effect != "read" and type(tool).compensate is Tool.compensate:
            raise ValueError(f"tool {tool.name!r} is a {tool.effect} tool: it must implement compensate()")
        if not tool.scope:
            raise ValueError(f"tool {tool.name!r} must declare the scope it requires")
        if tool.name in self._tools:
            raise DuplicateTool(f"a tool named {tool.name!r} is already registered; pick another name")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool[Any]:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownTool(name, list(self._tools)) from None

    def names(self) -> list[str]:
        return sorted(self._tools)

    def declarations(self, principal: Principal | None = None) -> list[ToolDeclaration]:
        """Every tool's declaration; with a principal, only the tools whose scope it holds."""
        tools = [self._tools[n] for n in self.names()]
        return [
            ToolDeclaration(
                name=t.name,
                description=t.description,
                input_schema=t.input_model.model_json_schema(),
                scope=t.scope,
                effect=t.effect,
                idempotent=t.idempotent,
                annotations=t.annotations(),
            )
            for t in tools
            if principal is None or principal.has_scope(t.scope)
        ]

    def openai_tools(self, principal: Principal | None = None, strict: bool = False) -> list[dict[str, Any]]:
        """The `tools=[...]` argument of an OpenAI chat completion; with a principal, only tools it may use.

        `strict`: ask the server to hold the arguments to each input schema (vLLM then constrains decoding to
        it; without it, a small model's arguments come out as free JSON)."""
        tools = []
        for d in self.declarations(principal):
            function: dict[str, Any] = {"name": d.name, "description": d.description, "parameters": d.input_schema}
            if strict:
                function["strict"] = True
            tools.append({"type": "function", "function": function})
        return tools
