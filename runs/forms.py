"""Forms of the operator dashboard: list filters, operator actions, JSON editors.

Forms only parse and validate. What an action may do to a run is decided by
the Run model's operator methods, which raise InvalidOperation.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode
from zoneinfo import available_timezones

import jsonschema
from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet

from runs import jsoninput
from runs.bulk import RETRYING
from runs.jsoninput import JSONInputError
from runs.models import ACTIVE_STATUSES, Run, Status, WaitKind
from runs.search import text_condition

# Runs an action on "all matching this filter" touches per request; the
# confirmation says so when more match.
BULK_LIMIT = 1000


def parse_json(text: str) -> Any:
    """Parse JSON as runs.jsoninput does (strict, within the size and depth limits), or
    raise ValidationError with its message."""
    try:
        return jsoninput.parse(text)
    except JSONInputError as exc:
        raise ValidationError(str(exc), code="invalid_json") from None


class JSONTextField(forms.CharField):
    """A textarea holding JSON text; cleans to the parsed value (which may be null)."""

    widget = forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "class": "json-input"})

    def __init__(self, *, empty_value: Any = None, **kwargs):
        self.empty_json = empty_value
        kwargs.setdefault("strip", True)
        super().__init__(**kwargs)

    def clean(self, value):
        text = super().clean(value)
        if text in (None, ""):
            return self.empty_json
        return parse_json(text)


def pretty(value: Any) -> str:
    return jsoninput.pretty(value)


class ReasonForm(forms.Form):
    reason = forms.CharField(
        required=False,
        max_length=1000,
        strip=True,
        widget=forms.TextInput(attrs={"placeholder": "reason (optional, kept in the audit log)"}),
    )


class SignalForm(ReasonForm):
    name = forms.CharField(max_length=200, strip=True, initial="approve")
    payload = JSONTextField(
        required=False,
        label="Payload (JSON)",
        help_text="Empty sends null.",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "class": "json-input"}),
    )


class DecisionForm(ReasonForm):
    """A person's answer to a run waiting for a signal: approve, reject, or a JSON payload."""

    DECISIONS = (("approve", "Approve"), ("reject", "Reject"), ("payload", "Send the JSON payload"))

    decision = forms.ChoiceField(choices=DECISIONS)
    payload = JSONTextField(
        required=False,
        label="Payload (JSON)",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "json-input"}),
    )
    # The wait position the person was shown; the decision is refused if the run moved on.
    at = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)

    def clean(self):
        data = super().clean()
        if data.get("decision") == "payload" and not (self.data.get("payload") or "").strip():
            self.add_error("payload", "Write the JSON payload to send, or approve or reject instead.")
        return data

    def signal_payload(self, username: str) -> Any:
        """What the run receives: approvals as agents expect them, {"approved", "note", "by"}."""
        decision = self.cleaned_data["decision"]
        if decision == "payload":
            return self.cleaned_data["payload"]
        approved = decision == "approve"
        note = self.cleaned_data["reason"] or f"{'approved' if approved else 'rejected'} by {username}"
        return {"approved": approved, "note": note, "by": username}


def input_schema(workflow: str) -> dict | None:
    """The JSON schema a workflow declares for its input (an `input_schema` attribute on
    its function), or None."""
    from runs.workflow import UnknownWorkflow, registry

    try:
        schema = getattr(registry.get(workflow).fn, "input_schema", None)
    except UnknownWorkflow:
        return None
    return schema if isinstance(schema, dict) else None


class StartRunForm(forms.Form):
    """Start a run from the dashboard: a registered workflow, its input, and the options
    the API takes (an idempotency key, a queue)."""

    workflow = forms.ChoiceField(choices=())
    input = JSONTextField(
        required=False,
        label="Input (JSON)",
        help_text="Empty starts the run with null.",
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false", "class": "json-input"}),
    )
    idempotency_key = forms.CharField(
        required=False,
        max_length=200,
        help_text="Starting again with the same key opens the run it started instead of a new one.",
    )
    queue = forms.ChoiceField(required=False, choices=(), help_text="Empty: the workflow's own queue.")

    def __init__(self, *args, workflows: list[str], queues: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["workflow"].choices = [(name, name) for name in workflows]
        self.fields["queue"].choices = [("", "the workflow's queue"), *((q, q) for q in queues)]

    def clean_idempotency_key(self) -> str | None:
        key = self.cleaned_data["idempotency_key"]
        if "\x00" in key:
            raise ValidationError("An idempotency key cannot contain a NUL character.")
        return key or None

    def clean(self):
        data = super().clean()
        schema = input_schema(data.get("workflow", ""))
        if schema is None or "input" in self.errors:
            return data
        checker = jsonschema.validators.validator_for(schema)
        try:
            checker.check_schema(schema)
        except jsonschema.SchemaError:
            self.add_error("workflow", "This workflow's input schema is itself invalid; tell its author.")
            return data
        validator = checker(schema)
        problems = sorted(validator.iter_errors(data.get("input")), key=lambda error: list(error.path))
        for problem in problems[:10]:
            where = "/".join(str(part) for part in problem.path) or "the input"
            self.add_error("input", f"{where}: {problem.message}")
        return data


class EditOutputForm(ReasonForm):
    output = JSONTextField(
        label="New output (JSON)",
        widget=forms.Textarea(attrs={"rows": 14, "spellcheck": "false", "class": "json-input"}),
    )


class DateTimeLocalInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, **kwargs):
        super().__init__(format="%Y-%m-%dT%H:%M", **kwargs)


class RunFilterForm(forms.Form):
    """The run list's filters. Invalid values are reported and ignored."""

    status = forms.ChoiceField(
        choices=[("", "any status"), *Status.choices, (RETRYING, "retrying (in backoff)")], required=False
    )
    workflow = forms.CharField(required=False, max_length=200)
    q = forms.CharField(
        required=False,
        max_length=200,
        label="Search",
        widget=forms.TextInput(attrs={"placeholder": "run id or input text", "type": "search"}),
    )
    started_after = forms.DateTimeField(required=False, label="Started from", widget=DateTimeLocalInput())
    started_before = forms.DateTimeField(required=False, label="to", widget=DateTimeLocalInput())
    # Keyset cursors: ids of the last row of the newer page / first row of the older one.
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)
    after = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)

    FILTER_FIELDS = ("status", "workflow", "q", "started_after", "started_before")

    def values(self) -> dict[str, Any]:
        self.is_valid()  # fills cleaned_data with the fields that are valid
        return self.cleaned_data

    def runs(self, *, with_status: bool = True, search: bool = True) -> QuerySet[Run]:
        """The runs these filters select, unordered and without the cursor.

        The run list searches the input text itself, a window of runs at a time
        (runs.views.run_list.search_page); `search=False` leaves the text out.
        """
        data = self.values()
        runs = Run.objects.all()
        if with_status and data.get("status") == RETRYING:
            runs = runs.filter(status=Status.WAITING, wait_kind=WaitKind.RETRY)
        elif with_status and data.get("status"):
            runs = runs.filter(status=data["status"])
        if data.get("workflow"):
            runs = runs.filter(workflow__in=workflows_named(data["workflow"]))
        if data.get("started_after"):
            runs = runs.filter(created_at__gte=data["started_after"])
        if data.get("started_before"):
            runs = runs.filter(created_at__lt=data["started_before"])
        if search and data.get("q"):
            runs = runs.filter(search_condition(data["q"]))
        return runs

    def query_items(self) -> list[tuple[str, str]]:
        """The active filters as query-string pairs (no cursor), for links and hidden inputs."""
        items = []
        for name in self.FILTER_FIELDS:
            raw = self.data.get(name, "")
            if raw and name not in self.errors:
                items.append((name, raw))
        return items

    def live_query(self, stamp: str) -> str:
        """The live refresh's query string: the filters, the page's cursor, and the stamp
        of the moment the page was drawn (Run.objects.last_change)."""
        cursor = [(name, self.data[name]) for name in ("before", "after") if self.data.get(name)]
        return urlencode([*self.query_items(), *cursor, ("v", stamp)])

    @property
    def is_filtered(self) -> bool:
        return bool(self.query_items())


def workflows_named(text: str) -> list[str]:
    """The workflow filter's names: the text itself, and the registered workflows whose
    names start with it. A list rather than LIKE 'text%', so that the index on
    (workflow, -id) still serves the list newest first."""
    from runs.workflow import registry

    text = text.strip()
    return [text, *(name for name in registry.names() if name.startswith(text) and name != text)][:50]


def search_condition(text: str) -> Q:
    """A run id (with or without #) matches that run; any text matches inside the input,
    the output or the error message (runs.search)."""
    text = text.strip()
    condition = text_condition(text)
    digits = text.removeprefix("#")
    # Bounded so that a long number cannot overflow the id column.
    if digits.isdigit() and len(digits) <= 18:
        condition |= Q(pk=int(digits))
    return condition


BULK_ACTIONS = {
    # action: (statuses it applies to, label)
    "resume": ((Status.FAILED, Status.DEAD), "resume"),
    "cancel": (tuple(ACTIVE_STATUSES), "cancel"),
}


class BulkForm(ReasonForm):
    # Retry from a step goes through runs.bulk's plan, by step name, for the ticked runs.
    action = forms.ChoiceField(choices=[*((name, name) for name in BULK_ACTIONS), ("retry", "retry")])
    scope = forms.ChoiceField(
        choices=[("selected", "selected runs"), ("matching", "all runs matching the filter")],
        initial="selected",
    )
    run = forms.TypedMultipleChoiceField(coerce=int, required=False, choices=())
    from_step = forms.CharField(required=False, max_length=200, strip=True, label="Retry from step")

    def __init__(self, data, **kwargs):
        super().__init__(data, **kwargs)
        # Any id is a valid choice; unknown ids simply match no run.
        self.fields["run"].valid_value = lambda value: str(value).isdigit()

    def clean(self):
        data = super().clean()
        if data.get("action") == "retry":
            return self.clean_retry(data)
        if data.get("scope") == "selected" and not data.get("run"):
            raise ValidationError("Select at least one run, or choose all runs matching the filter.")
        return data

    def clean_retry(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("scope") != "selected":
            raise ValidationError(
                "Retry from a step applies to the selected runs here; to retry every run matching "
                "a filter, use the Recover page."
            )
        if not data.get("run"):
            raise ValidationError("Select the runs to retry.")
        if not data.get("from_step"):
            raise ValidationError("Type or choose the name of the step to retry from.")
        return data

    def retry_plan(self, reuse_signals: bool = False):
        """The bulk plan of a retry from a step: each selected run at that name's position."""
        from runs.bulk import BulkPlan, Selection

        data = self.cleaned_data
        return BulkPlan("retry", Selection(ids=data["run"]), data["from_step"], reuse_signals)

    def target_runs(self, filters: RunFilterForm) -> QuerySet[Run]:
        """The runs the operator pointed at, before narrowing to those the action applies to."""
        if self.cleaned_data["scope"] == "matching":
            return filters.runs()
        return Run.objects.filter(pk__in=self.cleaned_data["run"])

    def eligible(self, runs: QuerySet[Run]) -> QuerySet[Run]:
        statuses, _ = BULK_ACTIONS[self.cleaned_data["action"]]
        return runs.filter(status__in=statuses)


class RecoverForm(forms.Form):
    """The bulk recovery page: which runs (filters), what to do, and from which step."""

    action = forms.ChoiceField(
        choices=[
            ("retry", "Retry from a step"),
            ("resume", "Resume"),
            ("retry_now", "Retry now (runs in backoff)"),
            ("cancel", "Cancel"),
        ]
    )
    from_step = forms.CharField(
        required=False,
        max_length=200,
        label="Retry from step",
        help_text="A step name, e.g. tool:issue_refund",
    )
    workflow = forms.CharField(required=False, max_length=200)
    status = forms.ChoiceField(
        required=False,
        choices=[("", "any status"), (RETRYING, "retrying (in backoff)"), *Status.choices],
    )
    failed_step = forms.CharField(required=False, max_length=200, label="Failed at step")
    error_type = forms.CharField(required=False, max_length=200, label="Error type")
    started_after = forms.DateTimeField(required=False, label="Started from", widget=DateTimeLocalInput())
    started_before = forms.DateTimeField(required=False, label="to", widget=DateTimeLocalInput())
    code_version = forms.CharField(required=False, max_length=64, label="Code version")
    reuse_signals = forms.BooleanField(required=False, label="Reuse received signals")
    reason = forms.CharField(required=False, max_length=1000, strip=True)

    FILTERS = (
        "workflow",
        "status",
        "failed_step",
        "error_type",
        "started_after",
        "started_before",
        "code_version",
    )

    def plan(self):
        """The BulkPlan these fields describe; raises runs.bulk.BulkError when it cannot be made."""
        from runs.bulk import BulkPlan, Selection

        data = self.cleaned_data
        selection = Selection(
            **{name: data[name] or _empty(name) for name in (*self.FILTERS, "code_version")}
        )
        return BulkPlan(data["action"], selection, data["from_step"], bool(data["reuse_signals"]))


def _empty(name: str):
    return None if name.startswith("started_") else ""


def time_zone_choices() -> list[tuple[str, str]]:
    return [("", "the time zone of my browser"), *((zone, zone) for zone in sorted(available_timezones()))]


class TimeZoneForm(forms.Form):
    time_zone = forms.ChoiceField(
        choices=time_zone_choices,
        required=False,
        label="Show times in",
        help_text="Every time on the dashboard is shown in this zone, with UTC on hover.",
    )
