"""Errors the agent runner raises; each says what to do next (the API maps them to status codes)."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error in agents/."""

    code = "agent_error"


class UnknownTool(AgentError):
    """A step names a tool the registry does not have."""

    code = "unknown_tool"

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no tool named {name!r}; registered tools: {', '.join(sorted(known)) or '(none)'}")
        self.name = name


class DuplicateTool(AgentError):
    """Two tools were registered under one name."""

    code = "duplicate_tool"


class RunNotFound(AgentError):
    """No run with this id; list runs or check the id."""

    code = "run_not_found"


class InvalidRunState(AgentError):
    """The run is not in a state that allows this action (e.g. approving a run that is not waiting)."""

    code = "invalid_run_state"


class ApprovalDenied(AgentError):
    """The approver lacks the `approve` scope (or may not approve their own run)."""

    code = "approval_denied"


class BadToolCall(AgentError):
    """A model's tool call could not be read as a step (arguments not a JSON object)."""

    code = "bad_tool_call"

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"tool call {index}: {reason}; ask the model again or submit the steps explicitly")
        self.index = index
