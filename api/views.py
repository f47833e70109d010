"""The JSON API: thin function views over the Run model's operations.

Reading needs `runs.view_run` (or `runs.operate`), starting a run `runs.add_run` (or
`runs.operate`), and every operator action `runs.operate`. Actions call the same Run
methods as the dashboard and the command line, which enforce the state machine and
write the audit entry; a request the run's state does not allow is answered 409 with
the model's message, and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle
from rest_framework.views import exception_handler as drf_exception_handler

from api.authentication import ThrottledTokenAuthentication
from api.parsers import StrictJSONParser
from api.renderers import SafeJSONRenderer
from api.serializers import (
    ActionResultSerializer,
    BulkResultSerializer,
    BulkSerializer,
    EditSerializer,
    ErrorSerializer,
    ReasonSerializer,
    RetrySerializer,
    RunDetailSerializer,
    RunFilterSerializer,
    RunPageSerializer,
    RunSerializer,
    SignalRequestSerializer,
    StartRunSerializer,
    WorkflowSerializer,
)
from runs.bulk import RETRYING, BulkError, BulkPlan, Selection, retrying_runs
from runs.export import attach_attempts, export_run
from runs.forms import search_condition
from runs.models import InvalidOperation, Run, UnknownQueue, ensure_json
from runs.workflow import registry

# --- access ----------------------------------------------------------------------------


def can_view(user) -> bool:
    return user.has_perm("runs.view_run") or user.has_perm("runs.operate")


def can_start(user) -> bool:
    return user.has_perm("runs.add_run") or user.has_perm("runs.operate")


class CanView(BasePermission):
    message = "Reading runs needs the runs.view_run permission."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and can_view(request.user))


class CanOperate(BasePermission):
    message = "Operating runs needs the runs.operate permission."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.has_perm("runs.operate"))


class CanViewOrStart(BasePermission):
    """GET lists runs (view permission); POST starts one (runs.add_run or runs.operate)."""

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        if request.method in SAFE_METHODS:
            self.message = CanView.message
            return can_view(request.user)
        self.message = "Starting runs needs the runs.add_run or runs.operate permission."
        return can_start(request.user)


def exception_handler(exc, context):
    """DRF's handler, plus: a wrong-state request is a 409 carrying the model's message."""
    if isinstance(exc, InvalidOperation):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    return drf_exception_handler(exc, context)


# --- the API's own policy --------------------------------------------------------------
# Set on every view rather than left to REST_FRAMEWORK's defaults, so that the API answers
# the same in any project that installs it, whatever that project's DRF settings say for
# its own APIs.


class AnonThrottle(AnonRateThrottle):
    def get_rate(self) -> str:
        return settings.DURABLE_API_ANON_RATE


class UserThrottle(UserRateThrottle):
    def get_rate(self) -> str:
        return settings.DURABLE_API_USER_RATE


POLICY = {
    # Token first: a request without credentials gets 401 and `WWW-Authenticate: Token`.
    # Sessions let a signed-in operator follow the dashboard's export link.
    "authentication_classes": [ThrottledTokenAuthentication, SessionAuthentication],
    "renderer_classes": [SafeJSONRenderer],
    "parser_classes": [StrictJSONParser],
    # Per user when signed in, per address otherwise; wrong tokens are throttled by the
    # authentication class itself, before any of this.
    "throttle_classes": [AnonThrottle, UserThrottle],
}


def endpoint(methods: list[str]):
    """DRF's @api_view with the API's policy and its exception handler."""

    def decorator(func):
        for name, classes in POLICY.items():
            setattr(func, name, classes)  # as DRF's @authentication_classes etc. do
        view = api_view(methods)(func)
        view.cls.get_exception_handler = lambda self: exception_handler
        return view

    return decorator


def find_run(run_id: int) -> Run:
    try:
        return Run.objects.get(pk=run_id)
    except Run.DoesNotExist:
        raise NotFound(f"No run with id {run_id}.") from None


@csrf_exempt
def not_found(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"detail": f"No API endpoint at {request.path}."}, status=404)


def valid(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


# --- schema building blocks ------------------------------------------------------------

ERROR = OpenApiResponse(ErrorSerializer, description="What went wrong, in words.")
INVALID = OpenApiResponse(
    OpenApiTypes.OBJECT, description="Invalid JSON or parameters: messages by field, or `detail`."
)
READ_ERRORS = {401: ERROR, 403: ERROR}
RUN_ERRORS = {**READ_ERRORS, 404: ERROR}
ACTION_ERRORS = {
    **RUN_ERRORS,
    400: INVALID,
    409: OpenApiResponse(ErrorSerializer, description="Wrong state."),
}


# --- workflows -------------------------------------------------------------------------


@extend_schema(
    operation_id="workflows_list",
    summary="Registered workflows",
    responses={200: WorkflowSerializer(many=True), **READ_ERRORS},
)
@endpoint(["GET"])
@permission_classes([CanView])
def workflows(request: Request) -> Response:
    rows = []
    for name in registry.names():
        definition = registry.get(name)
        rows.append({"name": name, "version": definition.version, "queue": definition.queue})
    return Response(WorkflowSerializer(rows, many=True).data)


# --- runs ------------------------------------------------------------------------------


@extend_schema(
    methods=["GET"],
    operation_id="runs_list",
    summary="List runs, newest first",
    description="Filters as on the dashboard. Keyset pagination: follow `next`, which passes the "
    "last id seen as `before`.",
    parameters=[RunFilterSerializer],
    responses={200: RunPageSerializer, 400: INVALID, **READ_ERRORS},
)
@extend_schema(
    methods=["POST"],
    operation_id="runs_start",
    summary="Start a run",
    description="201 with the new run; 200 with the existing run when its idempotency key was used "
    "before; 409 when that key started a run of another workflow or input.",
    request=StartRunSerializer,
    responses={201: RunSerializer, 200: RunSerializer, 400: INVALID, 409: ERROR, **READ_ERRORS},
)
@endpoint(["GET", "POST"])
@permission_classes([CanViewOrStart])
def runs(request: Request) -> Response:
    return start_run(request) if request.method == "POST" else list_runs(request)


def list_runs(request: Request) -> Response:
    filters = valid(RunFilterSerializer, request.query_params)
    runs = Run.objects.all()
    if filters.get("status") == RETRYING:
        runs = retrying_runs(runs)
        filters["status"] = ""
    for name, lookup in [
        ("status", "status"),
        ("workflow", "workflow"),
        ("started_after", "created_at__gte"),
        ("started_before", "created_at__lt"),
        ("before", "pk__lt"),
    ]:
        if filters.get(name) not in (None, ""):
            runs = runs.filter(**{lookup: filters[name]})
    if filters.get("q", "").strip():
        runs = runs.filter(search_condition(filters["q"]))
    limit = filters["limit"]
    rows = list(runs.defer("output", "error_traceback").order_by("-pk")[: limit + 1])
    next_url = None
    if len(rows) > limit:
        rows = rows[:limit]
        query = [(k, v) for k, v in request.query_params.items() if k != "before"]
        next_url = request.build_absolute_uri(
            f"{request.path}?{urlencode([*query, ('before', rows[-1].pk)])}"
        )
    return Response({"results": RunSerializer(rows, many=True).data, "next": next_url})


def start_run(request: Request) -> Response:
    data = valid(StartRunSerializer, request.data)
    key = data.get("idempotency_key") or None
    try:
        run, created = Run.objects.start_or_get(
            data["workflow"], data["input"], queue=data["queue"], by=request.user, dedupe_key=key
        )
    except UnknownQueue as exc:
        raise ValidationError({"queue": [str(exc)]}) from None
    except ValueError as exc:
        raise ValidationError({"input": [str(exc)]}) from None
    if not created and (run.workflow != data["workflow"] or run.input != ensure_json(data["input"], "input")):
        return Response(
            {
                "detail": f"Idempotency key {key!r} already started run {run.pk} of workflow "
                f"{run.workflow!r} with a different workflow or input."
            },
            status=status.HTTP_409_CONFLICT,
        )
    body = RunSerializer(run).data
    if not created:
        return Response(body, status=status.HTTP_200_OK)
    return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})


@dataclass
class History:
    checkpoints: list
    open_attempts: list
    signals: list


def run_history(run: Run) -> History:
    checkpoints = list(run.checkpoints.order_by("position", "id"))
    open_attempts = attach_attempts(checkpoints, run.attempts.order_by("position", "id"))
    return History(checkpoints, open_attempts, list(run.signals.order_by("id")))


@extend_schema(
    operation_id="runs_retrieve",
    summary="A run with its steps, attempts and signals",
    responses={200: RunDetailSerializer, **RUN_ERRORS},
)
@endpoint(["GET"])
@permission_classes([CanView])
def run_detail(request: Request, run_id: int) -> Response:
    run = find_run(run_id)
    return Response(RunDetailSerializer(run, context={"history": run_history(run)}).data)


@extend_schema(
    operation_id="runs_export",
    summary="Export a run as one JSON document",
    description="Input, every checkpoint (superseded ones too) with its failed attempts, signals, "
    "workflow name and code version. Replay it locally with `manage.py runs replay FILE`.",
    responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="The export."), **RUN_ERRORS},
)
@endpoint(["GET"])
@permission_classes([CanView])
def run_export(request: Request, run_id: int) -> Response:
    run = find_run(run_id)
    response = Response(export_run(run))
    response["Content-Disposition"] = f'attachment; filename="run-{run.pk}.json"'
    return response


# --- operator actions ------------------------------------------------------------------


def done(message: str, run: Run, warning: str = "") -> Response:
    """The action's answer; `warning` is what the run's code warning said before acting."""
    run.refresh_from_db()
    return Response(
        {"detail": message, "run": RunSerializer(run).data, "warnings": [warning] if warning else []}
    )


ACTION = {200: ActionResultSerializer, **ACTION_ERRORS}


@extend_schema(
    operation_id="runs_resume",
    summary="Resume a failed or dead-lettered run",
    request=ReasonSerializer,
    responses=ACTION,
)
@endpoint(["POST"])
@permission_classes([CanOperate])
def run_resume(request: Request, run_id: int) -> Response:
    run = find_run(run_id)
    data = valid(ReasonSerializer, request.data)
    warning = run.code_warning()
    run.resume(by=request.user, reason=data["reason"])
    return done(f"Resumed run {run.pk}.", run, warning)


@extend_schema(
    operation_id="runs_retry",
    summary="Re-execute a run from a step",
    description="Checkpoints at `from_step` and after are superseded (kept, not deleted); those steps "
    "run again with new idempotency keys.",
    request=RetrySerializer,
    responses=ACTION,
)
@endpoint(["POST"])
@permission_classes([CanOperate])
def run_retry(request: Request, run_id: int) -> Response:
    run = find_run(run_id)
    data = valid(RetrySerializer, request.data)
    warning = run.code_warning()
    details = run.retry_from(
        data["from_step"], by=request.user, reason=data["reason"], reuse_signals=data["reuse_signals"]
    )
    reused = len(details.get("reused_signals", []))
    message = f"Retrying run {run.pk} from step {data['from_step']}."
    if reused:
        message += f" {reused} signal(s) it had received are sent again."
    return done(message, run, warning)


@extend_schema(
    operation_id="runs_cancel",
    summary="Cancel a run (at once; a running step is interrupted)",
    request=ReasonSerializer,
    responses=ACTION,
)
@endpoint(["POST"])
@permission_classes([CanOperate])
def run_cancel(request: Request, run_id: int) -> Response:
    run = find_run(run_id)
    data = valid(ReasonSerializer, request.data)
    outcome = run.cancel(by=request.user, reason=data["reason"])
    return done(f"Run {run.pk}: {outcome}.", run)


@extend_schema(
    operation_id="runs_terminate",
    summary="Terminate a running run: interrupt its step now; it ends failed and can be resumed",
    request=ReasonSerializer,
    responses=ACTION,
)
@endpoint(["POST"])
@permission_classes([CanOperate])
def run_terminate(request: Request, run_id: int) -> Response:
    run = find_run(run_id)
    data = valid(ReasonSerializer, request.data)
    outcome = run.terminate(by=request.user, reason=data["reason"])
    return done(f"Run {run.pk}: {outcome}.", run)


@extend_schema(
    operation_id="runs_signal",
    summary="Send a named signal to a run",
    description="A run not waiting for it yet keeps it for its next wait of that name.",
    request=SignalRequestSerializer,
    responses=ACTION,
)
@endpoint(["POST"])
@permission_classes([CanOperate])
def run_signal(request: Request, run_id: int) -> Response:
    run = find_run(run_id)
    data = valid(SignalRequestSerializer, request.data)
    warning = run.code_warning()
    run.send_signal(data["name"], data["payload"], by=request.user, reason=data["reason"])
    return done(f"Sent signal {data['name']!r} to run {run.pk}.", run, warning)


@extend_schema(
    operation_id="runs_edit",
    summary="Replace a step's output, then resume the run",
    description="The old checkpoint is kept, superseded; the audit entry records before and after.",
    request=EditSerializer,
    responses=ACTION,
)
@endpoint(["POST"])
@permission_classes([CanOperate])
def run_edit(request: Request, run_id: int) -> Response:
    run = find_run(run_id)
    data = valid(EditSerializer, request.data)
    warning = run.code_warning()
    run.edit_checkpoint(data["position"], data["output"], by=request.user, reason=data["reason"])
    return done(
        f"Replaced the output of step {data['position']} of run {run.pk} and resumed it.", run, warning
    )


@extend_schema(
    operation_id="runs_edit_and_continue",
    summary="Replace a step's output and run every later step again",
    description="The old checkpoint is kept, superseded, and so are the later ones; the run resumes at "
    "the next position with new idempotency keys. The audit entry records before and after.",
    request=EditSerializer,
    responses=ACTION,
)
@endpoint(["POST"])
@permission_classes([CanOperate])
def run_edit_and_continue(request: Request, run_id: int) -> Response:
    run = find_run(run_id)
    data = valid(EditSerializer, request.data)
    warning = run.code_warning()
    run.edit_and_continue(data["position"], data["output"], by=request.user, reason=data["reason"])
    position = data["position"]
    return done(
        f"Replaced the output of step {position} of run {run.pk}; it continues from step {position + 1}.",
        run,
        warning,
    )


@extend_schema(
    operation_id="runs_retry_now",
    summary="Cut a step's retry backoff short: its next attempt starts now",
    request=ReasonSerializer,
    responses=ACTION,
)
@endpoint(["POST"])
@permission_classes([CanOperate])
def run_retry_now(request: Request, run_id: int) -> Response:
    run = find_run(run_id)
    data = valid(ReasonSerializer, request.data)
    warning = run.code_warning()
    run.retry_now(by=request.user, reason=data["reason"])
    return done(f"Run {run.pk} retries its step now.", run, warning)


@extend_schema(
    operation_id="runs_bulk",
    summary="Resume, cancel, retry from a step or retry now: many runs by filter or id",
    description="With `dry_run` only counts and samples. Otherwise acts on one bounded batch, each run "
    "audited; post the same body again while `remaining` is above 0 and `done` is not empty. A run "
    "already acted on is no longer eligible, so posting twice is safe. No filter selects every run "
    "(the action applies to those in a state it allows). 409 when the plan cannot be made: a retry "
    "without `from_step`.",
    request=BulkSerializer,
    responses={200: BulkResultSerializer, 400: INVALID, 409: ERROR, **READ_ERRORS},
)
@endpoint(["POST"])
@permission_classes([CanOperate])
def runs_bulk(request: Request) -> Response:
    data = valid(BulkSerializer, request.data)
    filters = ("workflow", "status", "failed_step", "error_type", "started_after", "started_before")
    selection = Selection(
        **{name: data[name] for name in filters}, code_version=data["code_version"], ids=data["ids"]
    )
    try:
        plan = BulkPlan(data["action"], selection, data["from_step"], data["reuse_signals"])
    except BulkError as exc:  # a retry without its step: valid JSON, but not a plan
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    preview = plan.preview()
    result = {
        "dry_run": data["dry_run"],
        "selected": preview["selected"],
        "eligible": preview["eligible"],
        "sample": preview["sample"],
        "warnings": preview["code_warnings"],
        "done": [],
        "refused": [],
        "remaining": preview["eligible"],
    }
    if not data["dry_run"]:
        batch = plan.apply_batch(by=request.user, reason=data["reason"])
        result.update(done=batch.done, refused=batch.refused, remaining=batch.remaining)
    return Response(BulkResultSerializer(result).data)
