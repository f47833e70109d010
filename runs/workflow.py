"""The authoring API: declare workflows and steps.

    from runs.workflow import RetryPolicy, current_step, step, workflow

    @step(retry=RetryPolicy(max_attempts=5), timeout=30)
    def charge(order_id, cents):
        return payments.charge(order_id, cents, idempotency_key=current_step().idempotency_key)

    @workflow("refund")
    def refund(ctx, data):
        receipt = ctx.step(charge, data["order_id"], data["cents"])
        ...

Steps and workflows may be `async def` (`await ctx.step(charge, ...)`); runs.asyncflow
drives async workflows, steps.eventloop runs async steps.

This module knows nothing of the database; runs.engine executes what it declares.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any

from steps.retry import DEFAULT_RETRY_POLICY, NonRetryableError, RetryPolicy, StepTimeout

__all__ = [
    "NonDeterminismError",
    "NonRetryableError",
    "RetryPolicy",
    "StepFailed",
    "StepInfo",
    "StepTimeout",
    "UnknownWorkflow",
    "call",
    "current_step",
    "registry",
    "step",
    "workflow",
]


@dataclass(frozen=True)
class StepDefinition:
    fn: Callable[..., Any]
    name: str
    retry: RetryPolicy = DEFAULT_RETRY_POLICY
    timeout: float | None = None
    rate_limit: Any = None  # a steps.ratelimit.RateLimit
    # (args, kwargs) -> (args, kwargs): how this call was written before its arguments
    # changed format; `runs check` accepts a recorded input that matches either.
    former_call: Callable[[tuple, dict], tuple[tuple, dict]] | None = None

    @property
    def target(self) -> str:
        """Where any worker can import the function from: "module:qualname"."""
        qualname = getattr(self.fn, "__qualname__", "")
        if not qualname or "<" in qualname:
            raise TypeError(
                f"step {self.name!r} must be a module-level function to run in parallel or on another worker"
            )
        return f"{self.fn.__module__}:{qualname}"


def step(
    fn: Callable | None = None,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    rate_limit=None,
    former_call: Callable[[tuple, dict], tuple[tuple, dict]] | None = None,
):
    """Give a function a step name, retry policy, timeout and rate limit for `ctx.step(fn, ...)`.

    `rate_limit` is a `steps.ratelimit.RateLimit(key, calls, period)` shared by every
    step naming the same key. `former_call(args, kwargs)` returns the same call in the
    arguments' earlier format, for runs recorded before a change of format (`runs check`
    compares recorded inputs). The function itself is unchanged and can still be called
    directly.
    """

    def decorate(func: Callable) -> Callable:
        check_name(name or func.__name__, "step")
        func.__durable_step__ = StepDefinition(
            fn=func,
            name=name or func.__name__,
            retry=retry or DEFAULT_RETRY_POLICY,
            timeout=timeout,
            rate_limit=rate_limit,
            former_call=former_call,
        )
        return func

    return decorate(fn) if fn is not None else decorate


MAX_NAME = 150  # names are stored in 200-character columns, some with a prefix


def check_name(name: str, what: str) -> None:
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"a {what} name needs 1 to {MAX_NAME} characters, got {name!r}")


def resolve_target(target: str) -> Callable:
    module, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class StepCall:
    """One call in a parallel group: `call(fn, *args, **kwargs)`."""

    definition: StepDefinition
    args: tuple
    kwargs: dict


def call(fn: Callable, *args, **kwargs) -> StepCall:
    return StepCall(step_definition(fn), args, kwargs)


def step_definition(fn: Callable) -> StepDefinition:
    definition = getattr(fn, "__durable_step__", None)
    if definition is not None:
        return definition
    if not callable(fn):
        raise TypeError(f"ctx.step() needs a function, got {type(fn).__name__}")
    return StepDefinition(fn=fn, name=getattr(fn, "__qualname__", repr(fn)))


@dataclass(frozen=True)
class WorkflowDefinition:
    name: str
    fn: Callable[..., Any]
    queue: str = ""
    declared_version: str = ""
    concurrency: int | None = None
    # A cron expression ("0 7 * * 1-5") or an interval (seconds or timedelta): the schedules
    # app starts a run at each tick.
    schedule: str | int | float | timedelta | None = None
    schedule_timezone: str = "UTC"

    def schedule_timing(self) -> tuple[str, int | None]:
        """(cron expression, "") or ("", interval in seconds) of the declared schedule."""
        if isinstance(self.schedule, str):
            return self.schedule, None
        seconds = self.schedule.total_seconds() if isinstance(self.schedule, timedelta) else self.schedule
        return "", max(int(seconds), 1)

    @cached_property
    def version(self) -> str:
        """The author's version string, else a hash of the function's source."""
        if self.declared_version:
            return self.declared_version
        try:
            source = inspect.getsource(self.fn)
        except (OSError, TypeError):
            source = self.fn.__code__.co_code.hex()
        return HASHED_VERSION_PREFIX + hashlib.sha256(source.encode()).hexdigest()[:12]


HASHED_VERSION_PREFIX = "src-"


def pinned_elsewhere(recorded: str, registered: str) -> bool:
    """A run recorded under one declared version cannot execute where another is declared.

    Only versions an author declared pin a run; source hashes change with every edit and
    pin nothing (ctx.patched is the tool for those changes).
    """
    declared = [v for v in (recorded, registered) if v and not v.startswith(HASHED_VERSION_PREFIX)]
    return len(declared) == 2 and recorded != registered


PATCH_PREFIX = "patch:"


def patch_marker(change_id: str) -> str:
    """The checkpoint name that records a run took `ctx.patched(change_id)`'s new path."""
    if not isinstance(change_id, str):
        raise TypeError(f"a change id is a string, got {type(change_id).__name__}")
    check_name(change_id, "change id")
    return PATCH_PREFIX + change_id


class UnknownWorkflow(LookupError):
    pass


class Registry:
    def __init__(self) -> None:
        self._workflows: dict[str, WorkflowDefinition] = {}

    def register(self, definition: WorkflowDefinition) -> None:
        existing = self._workflows.get(definition.name)
        if existing and existing.fn.__qualname__ != definition.fn.__qualname__:
            raise ValueError(f"workflow name {definition.name!r} is already registered")
        self._workflows[definition.name] = definition

    def get(self, name: str) -> WorkflowDefinition:
        try:
            return self._workflows[name]
        except KeyError:
            known = ", ".join(sorted(self._workflows)) or "none registered"
            raise UnknownWorkflow(f"No workflow named {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._workflows)

    def load(self, modules: list[str]) -> None:
        for module in modules:
            importlib.import_module(module)


registry = Registry()


def workflow(
    name: str | None = None,
    *,
    queue: str = "",
    version: str = "",
    concurrency: int | None = None,
    schedule: str | int | float | timedelta | None = None,
    schedule_timezone: str = "UTC",
):
    """Register a function `fn(ctx, input)` as a workflow that runs can be started of.

    `version` names the code's version; without it, a hash of the source is used. Runs
    record it, and a run recorded under a declared version executes only on workers that
    register that same version: declare a new `queue` with a new version, and keep a
    worker with the old code on the old queue until its runs are done.
    `concurrency` caps how many of its runs execute at once; the rest wait queued.
    `schedule` starts a run at every tick of a cron expression (read in `schedule_timezone`)
    or every so many seconds, once the schedules app is installed (schedules.models).
    """
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1")

    def decorate(fn: Callable) -> Callable:
        check_name(name or fn.__name__, "workflow")
        registry.register(
            WorkflowDefinition(
                name=name or fn.__name__,
                fn=fn,
                queue=queue,
                declared_version=version,
                concurrency=concurrency,
                schedule=schedule,
                schedule_timezone=schedule_timezone,
            )
        )
        return fn

    return decorate


@dataclass(frozen=True)
class StepInfo:
    """What a step's code may know about itself while it runs."""

    run_id: int
    name: str
    position: int
    attempt: int
    # Stable across this step's retries and across crash-resumes of the run; new
    # only when an operator retries the run from this step or an earlier one.
    idempotency_key: str
    # Facts about the call (tokens, cost, model, ...) saved on the step's checkpoint.
    meta: dict = field(default_factory=dict)


_current_step: ContextVar[StepInfo | None] = ContextVar("durable_current_step", default=None)


def current_step() -> StepInfo:
    info = _current_step.get()
    if info is None:
        raise RuntimeError("current_step() is only available inside a step run by ctx.step()")
    return info


class StepFailed(Exception):
    """A step failed for good. Raised on first execution and again on every replay."""

    def __init__(
        self, step_name: str, position: int, error_type: str, error_message: str, traceback: str = ""
    ):
        super().__init__(f"step {step_name!r} at position {position} failed: {error_type}: {error_message}")
        self.step_name = step_name
        self.position = position
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback


class NonDeterminismError(Exception):
    """Replay met a different step than the one recorded at that position."""
