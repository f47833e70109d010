"""Workflows used by the tests, in-process and in real worker subprocesses.

In-process tests count side effects in CALLS; worker subprocesses write them to
the `test_ledger` table so the test can count them from the database.
"""

import os
import time
from collections import Counter

from django.db import connection

from runs.workflow import NonRetryableError, RetryPolicy, StepFailed, call, current_step, step, workflow
from steps.ratelimit import RateLimit

CALLS: Counter = Counter()
KEYS: dict[str, list[str]] = {}
TOGGLES: dict[str, object] = {}


class SimulatedCrash(BaseException):
    """Escapes everything, like the process dying mid-step."""


def called(name: str) -> None:
    CALLS[name] += 1
    KEYS.setdefault(name, []).append(current_step().idempotency_key)


@step
def add(a, b):
    called("add")
    return a + b


@step
def double(x):
    called("double")
    return x * 2


@step
def maybe_crash(x):
    called("maybe_crash")
    if TOGGLES.pop("crash", False):
        raise SimulatedCrash("power cut")
    return x + 1


@workflow("arithmetic")
def arithmetic(ctx, data):
    total = ctx.step(add, data["a"], data["b"])
    doubled = ctx.step(double, total)
    bumped = ctx.step(maybe_crash, doubled)
    return {"total": total, "doubled": doubled, "bumped": bumped}


@step
def think(turn, budget):
    called("think")
    return {"done": turn + 1 >= budget, "tool": "search" if turn % 2 == 0 else "read"}


@step
def search(turn):
    called("search")
    return f"result {turn}"


@step
def read(turn):
    called("read")
    return f"page {turn}"


@workflow("agent_loop")
def agent_loop(ctx, data):
    notes, turn = [], 0
    while True:
        decision = ctx.step(think, turn, data["budget"])
        notes.append(ctx.step(search if decision["tool"] == "search" else read, turn))
        if decision["done"]:
            return {"turns": turn + 1, "notes": notes}
        turn += 1


class PaymentAPI:
    """A payment provider that times out a given number of times, then answers.

    It deduplicates by idempotency key, as real providers do.
    """

    def __init__(self):
        self.ledger: dict[str, int] = {}
        self.timeouts_left = 0

    def charge(self, cents: int, key: str) -> dict:
        if self.timeouts_left > 0:
            self.timeouts_left -= 1
            raise TimeoutError("payment provider did not answer in time")
        if key not in self.ledger:
            self.ledger[key] = cents
        return {"charged": self.ledger[key], "key": key}


PAYMENTS = PaymentAPI()


@step(retry=RetryPolicy(max_attempts=4, initial_interval=2, backoff_coefficient=2, jitter=0))
def charge(cents):
    called("charge")
    return PAYMENTS.charge(cents, current_step().idempotency_key)


@step(retry=RetryPolicy(max_attempts=5, non_retryable=(PermissionError,)))
def refuse(reason):
    called("refuse")
    raise PermissionError(reason)


@step
def bad_request():
    called("bad_request")
    raise NonRetryableError("card number is malformed")


@workflow("payment")
def payment(ctx, data):
    receipt = ctx.step(charge, data["cents"])
    return {"receipt": receipt}


@workflow("refusal")
def refusal(ctx, data):
    try:
        ctx.step(refuse, "account locked")
    except StepFailed as failure:
        fallback = ctx.step(add, 1, 1)
        return {"caught": failure.error_type, "fallback": fallback}


@workflow("malformed")
def malformed(ctx, data):
    ctx.step(bad_request)


@step(timeout=0.2, retry=RetryPolicy(max_attempts=2, initial_interval=0, jitter=0))
def slow():
    called("slow")
    time.sleep(2)
    return "too late"


@workflow("timeout")
def timeout_workflow(ctx, data):
    return ctx.step(slow)


@step
def not_json():
    return object()


@workflow("non_json")
def non_json(ctx, data):
    return ctx.step(not_json)


@workflow("branching")
def branching(ctx, data):
    first = ctx.step(add, 1, 2)
    if TOGGLES.get("branch") == "double":
        return ctx.step(double, first)
    return ctx.step(maybe_crash, first)


@workflow("sleeper")
def sleeper(ctx, data):
    before = ctx.step(add, 0, 1)
    ctx.sleep(data.get("seconds", 7 * 24 * 3600))
    return ctx.step(add, before, 1)


@workflow("approval")
def approval(ctx, data):
    plan = ctx.step(add, 40, 2)
    decision = ctx.wait_for_signal(
        "approve", timeout=data.get("timeout"), default={"approved": False}, prompt=data.get("prompt", "")
    )
    if not decision.get("approved"):
        return {"plan": plan, "outcome": "escalated"}
    return {"plan": plan, "outcome": "done", "by": decision.get("by")}


@workflow("counter")
def counter(ctx, data):
    values = [ctx.step(add, i, 0) for i in range(data["steps"])]
    return {"sum": sum(values)}


# --- for real worker processes: side effects in a table ---------------------------


def ledger_write(run_id: int, step_name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO test_ledger (run_id, step, idempotency_key, pid) VALUES (%s, %s, %s, %s)",
            [run_id, step_name, current_step().idempotency_key, os.getpid()],
        )


def create_ledger() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS test_ledger "
            "(run_id BIGINT, step VARCHAR(100), idempotency_key VARCHAR(100), pid INTEGER)"
        )


def ledger_count(run_id: int, step_name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM test_ledger WHERE run_id = %s AND step = %s", [run_id, step_name]
        )
        return cursor.fetchone()[0]


@step
def ledger_step(index: int, pause: float):
    info = current_step()
    first_time = ledger_count(info.run_id, f"step-{index}") == 0
    ledger_write(info.run_id, f"step-{index}")
    if first_time:  # pause only the first execution, so a killed step re-runs quickly
        time.sleep(pause)
    return index


@workflow("ledger")
def ledger(ctx, data):
    """Writes one ledger row per step; step `slow_index` pauses so a test can kill the worker."""
    done = []
    for index in range(data["steps"]):
        pause = data.get("pause", 0.0) if index == data.get("slow_index") else data.get("pause_each", 0.0)
        done.append(ctx.step(ledger_step, index, pause))
    return {"done": done}


def hold_the_gil_for(seconds: float) -> float:
    """Busy for `seconds` inside C calls that never release the GIL: no other thread of
    this process runs meanwhile (a big regex, parsing, tokenising)."""
    started = time.monotonic()
    sum(range(10**6))
    rate = 10**6 / max(time.monotonic() - started, 1e-6)
    while (left := seconds - (time.monotonic() - started)) > 0:
        sum(range(int(rate * left) + 1))
    return time.monotonic() - started


@step
def hog(seconds: float) -> float:
    ledger_write(current_step().run_id, "hog")
    return round(hold_the_gil_for(seconds), 2)


@workflow("hog")
def hog_workflow(ctx, data):
    held = ctx.step(hog, data["seconds"])
    ctx.step(ledger_step, 1, 0.0)
    return {"held": held}


@step
def locked_pause(pause: float) -> str:
    """Pauses the first time inside a transaction that holds its run's row lock."""
    from django.db import transaction

    from runs.models import Run

    info = current_step()
    first_time = ledger_count(info.run_id, "locked") == 0
    ledger_write(info.run_id, "locked")
    with transaction.atomic():
        Run.objects.select_for_update().filter(pk=info.run_id).exists()
        if first_time:
            time.sleep(pause)
    return "done"


@workflow("locked")
def locked(ctx, data):
    ctx.step(locked_pause, data["pause"])
    ctx.step(ledger_step, 1, 0.0)
    return "finished"


@step(timeout=0.2, retry=RetryPolicy(max_attempts=1))
def short_fuse(seconds: float, bare: bool) -> str:
    """Sleeps past its timeout and tries to swallow the interruption, as an HTTP retry loop would."""
    if bare:
        try:
            time.sleep(seconds)
        except:  # noqa: E722  (even this does not save it: the deadline is checked on return)
            return "swallowed"
        return "slept"
    try:
        time.sleep(seconds)
    except Exception:
        return "swallowed"
    return "slept"


@workflow("swallower")
def swallower(ctx, data):
    return ctx.step(short_fuse, data["seconds"], data.get("bare", False))


@step
def operator_cancels():
    from runs.models import Run

    called("operator_cancels")
    Run.objects.get(pk=current_step().run_id).cancel(by="operator", reason="wrong customer")
    return "cancel sent"


@workflow("cancelled_midway")
def cancelled_midway(ctx, data):
    ctx.step(operator_cancels)
    return ctx.step(add, 1, 1)


@step
def metered(prompt: str):
    current_step().meta.update(model="fake-1", input_tokens=len(prompt.split()), output_tokens=3)
    return "fine, thanks"


@workflow("metered", version="2026-11-27.1")
def metered_workflow(ctx, data):
    return ctx.step(metered, data["prompt"])


# --- fan-out, children, flow control ------------------------------------------------


@step
def square(x):
    called("square")
    if TOGGLES.get("crash_on") == x:
        TOGGLES.pop("crash_on")
        raise SimulatedCrash(f"power cut while squaring {x}")
    return x * x


@step(retry=RetryPolicy(max_attempts=2, initial_interval=0, jitter=0))
def picky(x):
    called("picky")
    if x == TOGGLES.get("refuse"):
        raise ValueError(f"cannot handle {x}")
    return x


@workflow("fan_out")
def fan_out(ctx, data):
    squares = ctx.map(square, data["items"])
    total = ctx.step(add, sum(squares), 0)
    return {"squares": squares, "total": total}


@workflow("fan_out_mixed")
def fan_out_mixed(ctx, data):
    return ctx.parallel([call(add, 1, 2), call(double, 5), call(square, 3)])


@workflow("fan_out_failing")
def fan_out_failing(ctx, data):
    try:
        ctx.map(picky, data["items"])
    except StepFailed as failure:
        return {"caught": failure.error_type, "message": failure.error_message}
    return {"caught": None}


@workflow("parent")
def parent(ctx, data):
    background = ctx.start_child("approval", {})
    result = ctx.child("arithmetic", {"a": data["a"], "b": 1})
    return {"child_result": result, "background": background}


@workflow("parent_of_failure")
def parent_of_failure(ctx, data):
    return ctx.child("malformed", {})


@workflow("limited", concurrency=2)
def limited(ctx, data):
    return ctx.step(add, data["n"], 0)


@step(rate_limit=RateLimit("test:api", calls=2, period=1.0))
def rate_limited(i):
    called("rate_limited")
    return i


@workflow("rate_limited")
def rate_limited_workflow(ctx, data):
    return [ctx.step(rate_limited, i) for i in range(data["calls"])]


# --- for real worker processes ----------------------------------------------------


@step
def ledger_branch(index: int, pause: float):
    info = current_step()
    first_time = ledger_count(info.run_id, f"branch-{index}") == 0
    ledger_write(info.run_id, f"branch-{index}")
    if first_time:
        time.sleep(pause)
    return index * 10


@workflow("ledger_fan_out")
def ledger_fan_out(ctx, data):
    pauses = data.get("pauses", {})
    results = ctx.parallel(
        [call(ledger_branch, index, pauses.get(str(index), 0.0)) for index in range(data["branches"])]
    )
    return {"results": results}


@workflow("ledger_parent")
def ledger_parent(ctx, data):
    ctx.step(ledger_step, 0, data.get("pause", 0.0))
    child = ctx.child("ledger", {"steps": 2})
    ctx.step(ledger_step, 1, 0.0)
    return {"child": child}


@workflow("ledger_limited", concurrency=2)
def ledger_limited(ctx, data):
    return ctx.step(ledger_step, 0, data.get("pause", 0.2))


@step(rate_limit=RateLimit("test:shared-api", calls=5, period=1.0))
def ledger_rate_limited(index: int):
    ledger_write(current_step().run_id, f"call-{index}")
    return index


@workflow("ledger_rate_limited")
def ledger_rate_limited_workflow(ctx, data):
    return ctx.step(ledger_rate_limited, data["index"])


@step
def nap(seconds: float) -> float:
    called("nap")
    time.sleep(seconds)
    return seconds


@workflow("napper")
def napper(ctx, data):
    return ctx.step(nap, data["pause"])


@workflow("naps")
def naps(ctx, data):
    return [ctx.step(nap, data["pause"]) for _ in range(data["steps"])]


@step
def die_mid_step() -> None:
    """Kills its own process, as an out-of-memory kill would: every attempt, every worker."""
    import signal

    ledger_write(current_step().run_id, "die")
    os.kill(os.getpid(), signal.SIGKILL)


@workflow("doomed")
def doomed(ctx, data):
    ctx.step(ledger_step, 0, 0.0)
    ctx.step(die_mid_step)
    return "unreachable"


# --- recovery: a bad value recorded by one step makes a later step fail -------------


@step
def read_price(item: dict) -> dict:
    return {"item": item["name"], "price": item["price"]}


@step(retry=RetryPolicy(max_attempts=1))
def check_price(priced: dict) -> dict:
    if priced["price"] <= 0:
        raise NonRetryableError(f"invalid price {priced['price']}")
    return {"checked": priced["price"]}


@step
def invoice(checked: dict) -> dict:
    return {"invoiced": checked["checked"]}


@workflow("pricing")
def pricing(ctx, data):
    """Step 0 records the input's price; step 1 refuses one that is not positive."""
    priced = ctx.step(read_price, data)
    checked = ctx.step(check_price, priced)
    return ctx.step(invoice, checked)


# --- a deploy that changes a workflow with runs in flight -----------------------------
# TOGGLES["onboarding"] (in-process) or TESTS_ONBOARDING (worker processes) picks the
# deployed code: "old" has no welcome step; "patched" adds it behind ctx.patched;
# "unguarded" adds it bare (what breaks sleeping runs); "deprecated" keeps only the new
# path once the old runs are gone; "renamed" changes the first step's arguments.


def onboarding_code() -> str:
    return str(TOGGLES.get("onboarding") or os.environ.get("TESTS_ONBOARDING") or "old")


@step
def welcome(account: int) -> str:
    called("welcome")
    if os.environ.get("TESTS_ONBOARDING"):
        ledger_write(current_step().run_id, "welcome")
    return f"welcome {account}"


@workflow("onboarding")
def onboarding(ctx, data):
    code = onboarding_code()
    account = ctx.step(add, 100 if code == "renamed" else 1, 1)
    welcomed = None
    if code == "deprecated":
        ctx.deprecate_patch("send-welcome")
    if code in ("deprecated", "unguarded") or (code == "patched" and ctx.patched("send-welcome")):
        welcomed = ctx.step(welcome, account)
    ctx.sleep(data.get("seconds", 3600))
    return {"account": ctx.step(add, account, 10), "welcomed": welcomed}


# A workflow that declares its version; worker processes take it from TESTS_PINNED_VERSION.
PINNED_VERSION = os.environ.get("TESTS_PINNED_VERSION", "1")


@workflow("pinned_flow", version=PINNED_VERSION)
def pinned_flow(ctx, data):
    first = ctx.step(add, 1, 1)
    ctx.sleep(data.get("seconds", 3600))
    return {"first": first, "finished_by_version": PINNED_VERSION}


@workflow("digest", schedule="0 7 * * 1-5", schedule_timezone="Europe/Paris")
def digest(ctx, data):
    return ctx.step(add, 1, 1)
