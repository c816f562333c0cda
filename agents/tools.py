"""The tool contract: what a tool declares, plans, applies and how it undoes what it applied."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel

from retrieval.types import Principal

Effect = Literal["read", "write", "destructive"]
InputT = TypeVar("InputT", bound=BaseModel)


@dataclass(frozen=True)
class Target:
    """Something a step touches: a kind (`source`, `document`, `url_host`, ...) and its id."""

    kind: str
    id: str


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about its caller: the run's principal (never more) and the run id."""

    principal: Principal
    run_id: str
    step: int = 0
    dry_run: bool = False


@dataclass(frozen=True)
class Plan:
    """What a step would do, computed without side effects (the dry-run answer and the replay baseline)."""

    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Applied:
    """What a step did: its result, the record `compensate` needs to undo it, and what it actually spent."""

    result: dict[str, Any]
    undo: dict[str, Any]
    records: int | None = None  # records actually touched; None means as declared by `records(input)`
    tokens: int = 0  # tokens actually spent (e.g. on an LLM call)


class Tool(ABC, Generic[InputT]):
    """A bounded action. Subclasses set the class attributes and implement `plan`, `apply` and `compensate`."""

    name: ClassVar[str]
    description: ClassVar[str]
    input_model: ClassVar[type[BaseModel]]
    scope: ClassVar[str]
    effect: ClassVar[Effect]
    idempotent: ClassVar[bool] = False
    open_world: ClassVar[bool] = False  # talks to things outside this service (e.g. a webhook)

    def targets(self, input: InputT) -> list[Target]:
        """The targets a step with this input touches; checked against the run's allowed targets."""
        return []

    def records(self, input: InputT) -> int:
        """How many records a step with this input is expected to touch."""
        return 0 if self.effect == "read" else 1

    def tokens(self, input: InputT) -> int:
        """Tokens a step with this input is expected to spend (counted against the run's token budget)."""
        return 0

    @abstractmethod
    def plan(self, input: InputT, ctx: ToolContext) -> Plan:
        """What the step would do. Must have no side effects."""

    @abstractmethod
    def apply(self, input: InputT, ctx: ToolContext) -> Applied:
        """Do it; return the result and an undo record that `compensate` can act on."""

    def compensate(self, undo: dict[str, Any], ctx: ToolContext) -> None:
        """Undo what `apply` did, from its undo record. Read tools have nothing to undo."""
        if self.effect != "read":
            raise NotImplementedError(f"tool {self.name!r} changes things but has no compensate()")

    def annotations(self) -> dict[str, Any]:
        """MCP-style tool annotations derived from the declaration."""
        return {
            "title": self.name,
            "readOnlyHint": self.effect == "read",
            "destructiveHint": self.effect == "destructive",
            "idempotentHint": self.idempotent,
            "openWorldHint": self.open_world,
        }
