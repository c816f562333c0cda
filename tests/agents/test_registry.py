"""The registry lists each tool's declaration, as MCP annotations and as OpenAI tools."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from agents.errors import DuplicateTool, UnknownTool
from agents.registry import Registry
from agents.tools import Applied, Plan, Tool, ToolContext
from tests.agents.conftest import READER, World
from tests.agents.ledger import PutEntry


def test_declarations_carry_schema_scope_effect_and_annotations(world: World) -> None:
    by_name = {d.name: d for d in world.registry().declarations()}
    put, delete, notify = by_name["put_entry"], by_name["delete_entries"], by_name["notify"]
    assert put.scope == "ledger:write" and put.effect == "write" and put.idempotent
    assert put.input_schema["required"] == ["key", "value"]
    assert put.annotations == {
        "title": "put_entry",
        "readOnlyHint": False,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": False,
    }
    assert delete.annotations["destructiveHint"] and not delete.annotations["idempotentHint"]
    assert by_name["summarise"].annotations["readOnlyHint"]
    assert notify.annotations["openWorldHint"]


def test_openai_tools_offer_only_what_the_caller_may_use(world: World) -> None:
    everything = world.registry().openai_tools()
    assert {t["function"]["name"] for t in everything} == set(world.registry().names())
    put = next(t for t in everything if t["function"]["name"] == "put_entry")
    assert put["type"] == "function"
    assert put["function"]["description"] == "Set the value of a ledger entry."
    assert put["function"]["parameters"]["properties"]["key"]["type"] == "string"
    assert [t["function"]["name"] for t in world.registry().openai_tools(READER)] == ["summarise"]
    assert "strict" not in put["function"]
    assert all(t["function"]["strict"] is True for t in world.registry().openai_tools(READER, strict=True))


def test_unknown_and_duplicate_names_are_clear_errors(sessions: sessionmaker[Session]) -> None:
    registry = Registry([PutEntry(sessions)])
    with pytest.raises(UnknownTool, match="no tool named 'put'.*put_entry"):
        registry.get("put")
    with pytest.raises(DuplicateTool):
        registry.register(PutEntry(sessions))


class NoUndoInput(BaseModel):
    key: str


class NoUndo(Tool[NoUndoInput]):
    name = "no_undo"
    description = "A write that forgot its compensate."
    input_model = NoUndoInput
    scope = "ledger:write"
    effect = "write"

    def plan(self, input: NoUndoInput, ctx: ToolContext) -> Plan:
        return Plan("write")

    def apply(self, input: NoUndoInput, ctx: ToolContext) -> Applied:
        return Applied({}, {})


def test_a_tool_that_changes_things_must_say_how_to_undo_them() -> None:
    with pytest.raises(ValueError, match="must implement compensate"):
        Registry([NoUndo()])


def test_a_tool_name_must_be_a_valid_function_name(sessions: sessionmaker[Session]) -> None:
    class Spaced(PutEntry):
        name = "put entry"

    with pytest.raises(ValueError, match="OpenAI function names"):
        Registry([Spaced(sessions)])
