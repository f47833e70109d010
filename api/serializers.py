"""What the API reads and writes. Serializers parse and validate; the Run model acts."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from runs import jsoninput
from runs.jsoninput import JSONInputError
from runs.models import Run, Signal, Status
from runs.workflow import UnknownWorkflow, registry
from steps.models import Attempt, Checkpoint

MAX_ID = 2**63 - 1


def storable(value: Any) -> None:
    """Refuse JSON that a database column cannot hold: NUL characters, lone surrogates,
    non-finite numbers, nesting beyond DURABLE_JSON_MAX_DEPTH (runs.jsoninput)."""
    try:
        jsoninput.check_value(value)
    except JSONInputError as exc:
        raise serializers.ValidationError(str(exc)) from None


def check_text(text: str) -> None:
    try:
        jsoninput.check_text(text, "Text")
    except JSONInputError as exc:
        raise serializers.ValidationError(str(exc)) from None


# Published as each text field's `pattern` too, so clients (and schemathesis) know that
# NUL characters and lone surrogates are refused.
STORABLE_TEXT = RegexValidator(
    r"^[^\x00\ud800-\udfff]*\Z", "Text contains a character the database cannot store."
)


class Text(serializers.CharField):
    """A JSON string (not a number turned into one) that the database can store."""

    def __init__(self, **kwargs):
        kwargs.setdefault("validators", []).extend([STORABLE_TEXT, check_text])
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class Integer(serializers.IntegerField):
    """A JSON integer: not a string of digits, not 2.0, not true."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class Boolean(serializers.BooleanField):
    """A JSON boolean: not 0, 1, "yes" or "true"."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class AnyJSON(serializers.JSONField):
    """Any JSON value (null included) that the database can store."""

    def __init__(self, **kwargs):
        kwargs.setdefault("validators", []).append(storable)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)


# --- reading -------------------------------------------------------------------------


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Attempt
        fields = [
            "id",
            "position",
            "name",
            "number",
            "started_at",
            "finished_at",
            "error_type",
            "error_message",
            "error_traceback",
            "superseded_at",
        ]
        read_only_fields = fields


class CheckpointSerializer(serializers.ModelSerializer):
    """A step's recorded outcome, with the failed attempts that led to it."""

    idempotency_key = serializers.SerializerMethodField()
    failed_attempts = AttemptSerializer(many=True, read_only=True)

    class Meta:
        model = Checkpoint
        fields = [
            "id",
            "position",
            "name",
            "status",
            "output",
            "error_type",
            "error_message",
            "error_traceback",
            "attempts",
            "epoch",
            "idempotency_key",
            "started_at",
            "finished_at",
            "superseded_at",
            "edited_from",
            "meta",
            "failed_attempts",
        ]
        read_only_fields = fields

    def get_idempotency_key(self, checkpoint: Checkpoint) -> str:
        return self.context["run"].step_idempotency_key(checkpoint.position, epoch=checkpoint.epoch)


class SignalSerializer(serializers.ModelSerializer):
    class Meta:
        model = Signal
        fields = ["id", "name", "payload", "sent_by", "created_at", "consumed_at", "consumed_position"]
        read_only_fields = fields


class RunSerializer(serializers.ModelSerializer):
    """A run as the list shows it."""

    url = serializers.SerializerMethodField()
    idempotency_key = serializers.CharField(
        source="dedupe_key",
        read_only=True,
        allow_null=True,
        help_text="The client's key it was started with.",
    )
    deployed_version = serializers.SerializerMethodField(
        help_text="The workflow's code version deployed now; differs from code_version after an upgrade."
    )

    class Meta:
        model = Run
        fields = [
            "id",
            "url",
            "workflow",
            "status",
            "input",
            "queue",
            "idempotency_key",
            "code_version",
            "deployed_version",
            "steps_done",
            "current_step",
            "error_type",
            "error_message",
            "error_position",
            "wait_kind",
            "wait_signal",
            "wake_at",
            "cancel_requested",
            "recovery_count",
            "epoch",
            "parent",
            "created_at",
            "started_at",
            "finished_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_url(self, run: Run) -> str:
        return reverse("api:run-detail", args=[run.pk])

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_deployed_version(self, run: Run) -> str | None:
        try:
            return registry.get(run.workflow).version
        except UnknownWorkflow:
            return None


class RunDetailSerializer(RunSerializer):
    """A run with its output, steps (superseded ones too), attempts and signals."""

    output = serializers.JSONField(read_only=True, allow_null=True)
    error_traceback = serializers.CharField(read_only=True)
    steps = serializers.SerializerMethodField()
    open_attempts = serializers.SerializerMethodField(
        help_text="Failed attempts of a step that has no checkpoint yet (waiting to retry)."
    )
    signals = serializers.SerializerMethodField()
    code_warning = serializers.CharField(
        read_only=True, help_text="Set when acting on the run would replay it under other code."
    )
    code_versions = serializers.ListField(
        child=serializers.CharField(),
        read_only=True,
        help_text="The code versions it ran under, oldest first.",
    )

    class Meta(RunSerializer.Meta):
        fields = [
            *RunSerializer.Meta.fields,
            "output",
            "error_traceback",
            "steps",
            "open_attempts",
            "signals",
            "code_warning",
            "code_versions",
        ]
        read_only_fields = fields

    @extend_schema_field(CheckpointSerializer(many=True))
    def get_steps(self, run: Run) -> list:
        return CheckpointSerializer(self.context["history"].checkpoints, many=True, context={"run": run}).data

    @extend_schema_field(AttemptSerializer(many=True))
    def get_open_attempts(self, run: Run) -> list:
        return AttemptSerializer(self.context["history"].open_attempts, many=True).data

    @extend_schema_field(SignalSerializer(many=True))
    def get_signals(self, run: Run) -> list:
        return SignalSerializer(self.context["history"].signals, many=True).data


class RunPageSerializer(serializers.Serializer):
    results = RunSerializer(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next (older) page, or null on the last page.")


class WorkflowSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.CharField()
    queue = serializers.CharField(help_text="Empty: the default queue.")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class ActionResultSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="What happened, in words.")
    run = RunSerializer()
    warnings = serializers.ListField(
        child=serializers.CharField(),
        help_text="What the operator should know, e.g. that the run continued under other code.",
    )


class BulkSampleSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    workflow = serializers.CharField()
    status = serializers.CharField()
    error = serializers.CharField()
    position = serializers.IntegerField(allow_null=True, help_text="Retry: the position retried from.")
    code_version = serializers.CharField()


class BulkResultSerializer(serializers.Serializer):
    dry_run = serializers.BooleanField()
    selected = serializers.IntegerField(help_text="Runs the filter matches (capped).")
    eligible = serializers.IntegerField(help_text="Of those, runs the action applies to now (capped).")
    sample = BulkSampleSerializer(many=True)
    warnings = serializers.ListField(child=serializers.CharField())
    done = serializers.ListField(child=serializers.IntegerField(), help_text="Runs acted on in this batch.")
    refused = serializers.ListField(child=serializers.CharField(), help_text="Runs that changed meanwhile.")
    remaining = serializers.IntegerField(
        help_text="Eligible runs left: post again (same body) while it is above 0 and `done` is not empty."
    )


# --- writing -------------------------------------------------------------------------


class RunFilterSerializer(serializers.Serializer):
    """The run list's filters (the dashboard's), and the keyset cursor."""

    # Blank filters are ignored, as on the dashboard.
    status = serializers.ChoiceField(
        choices=[*Status.choices, ("retrying", "retrying (waiting in a step's retry backoff)")],
        required=False,
        allow_blank=True,
    )
    workflow = Text(max_length=200, required=False, allow_blank=True)
    q = Text(
        max_length=200,
        required=False,
        allow_blank=True,
        help_text="A run id, or text to find in the input JSON.",
    )
    started_after = serializers.DateTimeField(required=False, help_text="Runs started at or after this.")
    started_before = serializers.DateTimeField(required=False, help_text="Runs started before this.")
    before = serializers.IntegerField(
        min_value=1, max_value=MAX_ID, required=False, help_text="Cursor: only runs with a smaller id."
    )
    limit = serializers.IntegerField(min_value=1, max_value=200, default=50, required=False)

    def to_internal_value(self, data):
        # DRF reads an empty query value as "not given"; for a date or a number that
        # hides a client's mistake, so it is refused.
        blank = [name for name in TYPED_FILTERS if data.get(name) == ""]
        if blank:
            raise serializers.ValidationError({name: ["This field may not be blank."] for name in blank})
        return super().to_internal_value(data)


TYPED_FILTERS = ("started_after", "started_before", "before", "limit")


class StartRunSerializer(serializers.Serializer):
    workflow = serializers.ChoiceField(choices=[], help_text="A registered workflow's name.")
    input = AnyJSON(required=False, default=None, help_text="The run's input (any JSON).")
    idempotency_key = Text(
        max_length=200,
        required=False,
        help_text="Starting again with the same key returns the same run (200 instead of 201).",
    )
    queue = serializers.ChoiceField(
        choices=[],
        required=False,
        default="",
        allow_blank=True,
        help_text="A queue workers consume (DURABLE_QUEUES); default: the workflow's queue, else the "
        "default queue.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Read at request time: the schema lists the workflows and queues this deployment has.
        names = registry.names()
        field = self.fields["workflow"]
        field.choices = names
        known = ", ".join(names) or "none registered"
        field.error_messages["invalid_choice"] = f"No workflow named {{input!r}} (known: {known})"
        queues = self.fields["queue"]
        queues.choices = list(settings.DURABLE_QUEUES)
        queues.error_messages["invalid_choice"] = (
            f"No worker consumes queue {{input!r}}; the queues workers consume are "
            f"{', '.join(settings.DURABLE_QUEUES)} (the DURABLE_QUEUES setting)."
        )


class ReasonSerializer(serializers.Serializer):
    reason = Text(
        max_length=1000, required=False, default="", allow_blank=True, help_text="Kept in the audit log."
    )


class RetrySerializer(ReasonSerializer):
    from_step = Integer(
        min_value=0, max_value=2**31 - 1, help_text="Position to re-execute from; later steps run again too."
    )
    reuse_signals = Boolean(
        default=False,
        help_text="Retrying across a signal the run received: reuse it (a copy is sent again) instead of "
        "waiting for a new one.",
    )


class BulkSerializer(ReasonSerializer):
    action = serializers.ChoiceField(choices=["resume", "cancel", "retry", "retry_now"])
    from_step = Text(
        max_length=200,
        required=False,
        default="",
        allow_blank=True,
        help_text="Retry: the step name to retry from, at its (last) position in each run.",
    )
    reuse_signals = Boolean(default=False)
    dry_run = Boolean(default=False, help_text="Only count and sample; change nothing.")
    ids = serializers.ListField(
        child=Integer(min_value=1, max_value=MAX_ID),
        required=False,
        default=list,
        max_length=1000,
    )
    workflow = Text(max_length=200, required=False, default="", allow_blank=True)
    status = serializers.ChoiceField(
        choices=["retrying", *Status.values], required=False, default="", allow_blank=True
    )
    failed_step = Text(max_length=200, required=False, default="", allow_blank=True)
    error_type = Text(max_length=200, required=False, default="", allow_blank=True)
    started_after = serializers.DateTimeField(required=False, allow_null=True, default=None)
    started_before = serializers.DateTimeField(required=False, allow_null=True, default=None)
    code_version = Text(max_length=64, required=False, default="", allow_blank=True)


class SignalRequestSerializer(ReasonSerializer):
    name = Text(max_length=200)
    payload = AnyJSON(required=False, default=None)


class EditSerializer(ReasonSerializer):
    position = Integer(min_value=0, max_value=2**31 - 1)
    output = AnyJSON(help_text="The step's new output; the run then resumes.")
