"""Tools: registered Python functions with a JSON-schema'd input, executed as steps.

    from agentkit import tools

    @tools.tool(
        schema={"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        retry=RetryPolicy(max_attempts=5),
    )
    def search(query: str) -> list[dict]:
        '''Search the corpus.'''          # the description the model sees
        ...

    result = tools.call(ctx, "search", {"query": "leases"})    # a step named tool:search

Arguments are validated against the schema inside the step; invalid arguments fail
the step at once (ToolInputError, not retried), and the agent loop reports the error
to the model so it can correct itself. Inside the tool, `tools.idempotency_key()`
is the step's key: stable across retries and crash-resumes, for external APIs that
deduplicate.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema

from agentkit import faults
from agentkit.llm import ToolSpec
from runs import tracing
from runs.workflow import NonRetryableError, RetryPolicy, current_step, step
from steps.retry import DEFAULT_RETRY_POLICY


class ToolInputError(NonRetryableError):
    """The arguments do not match the tool's schema."""


class UnknownTool(NonRetryableError):
    """No tool of that name is registered."""


@dataclass(frozen=True)
class Tool:
    name: str
    fn: Callable[..., Any]
    description: str
    schema: dict
    retry: RetryPolicy = DEFAULT_RETRY_POLICY
    timeout: float | None = None

    def spec(self) -> ToolSpec:
        return {"name": self.name, "description": self.description, "parameters": self.schema}

    def validate(self, arguments: Any) -> None:
        validator = jsonschema.Draft202012Validator(self.schema)
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
        if errors:
            problems = "; ".join(
                f"{'/'.join(str(p) for p in e.path) or '(input)'}: {e.message}" for e in errors[:5]
            )
            raise ToolInputError(f"invalid input for tool {self.name!r}: {problems}")


REGISTRY: dict[str, Tool] = {}


def tool(
    name: str | None = None,
    *,
    schema: dict,
    description: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
):
    """Register a function as a tool. It is called with the validated arguments as keywords."""
    jsonschema.Draft202012Validator.check_schema(schema)
    if schema.get("type") != "object":
        raise ValueError("a tool's input schema must describe an object (its keyword arguments)")

    def register(fn: Callable) -> Callable:
        tool_name = name or fn.__name__
        existing = REGISTRY.get(tool_name)
        if existing and existing.fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"tool name {tool_name!r} is already registered")
        REGISTRY[tool_name] = Tool(
            name=tool_name,
            fn=fn,
            description=description or inspect.getdoc(fn) or tool_name,
            schema=schema,
            retry=retry or DEFAULT_RETRY_POLICY,
            timeout=timeout,
        )
        return fn

    return register


def get(name: str) -> Tool:
    if name not in REGISTRY:
        raise UnknownTool(f"no tool named {name!r} (known: {', '.join(sorted(REGISTRY)) or 'none'})")
    return REGISTRY[name]


def specs(names: Iterable[str]) -> list[ToolSpec]:
    """What the model is told about these tools (pass as `tools=` to llm.chat)."""
    return [get(name).spec() for name in names]


def idempotency_key() -> str:
    """The running tool step's idempotency key, for external APIs that deduplicate."""
    return current_step().idempotency_key


def tool_step(name: str) -> Callable[..., Any]:
    """The step function that runs tool `name`; its step name is `tool:<name>`."""
    definition = get(name)

    def run_tool(arguments: dict, call_id: str = "") -> Any:
        info = current_step()
        info.meta.update(kind="tool", tool=definition.name, arguments=arguments, call_id=call_id)
        tool_call = {"gen_ai.tool.name": definition.name, "gen_ai.tool.call.id": call_id or None}
        tracing.annotate({"gen_ai.operation.name": "execute_tool", **tool_call})
        faults.inject()
        definition.validate(arguments)
        return definition.fn(**arguments)

    return step(run_tool, name=f"tool:{name}", retry=definition.retry, timeout=definition.timeout)


def call(ctx, name: str, arguments: dict | None = None, *, call_id: str = "") -> Any:
    """Run a tool as a checkpointed step and return its output."""
    get(name)  # unknown names fail in workflow code, before a step is taken
    return ctx.step(tool_step(name), arguments if arguments is not None else {}, call_id)
