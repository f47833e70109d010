"""Django admin for runs, signals, the audit log and worker processes.

The admin is a supported way to fix a stuck run, through the same state machine as
everything else: its actions call the dashboard's Run operator methods, and a status
change offers only the moves the transition table allows and goes through Run.set_state,
which checks what the new status needs and audits every changed field with its old and
new value. Saves are conditional on the run not having changed since the form was opened.
Runs are never deleted here (retention does that); a deleted signal is audited.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html, format_html_join

from runs import jsoninput
from runs.forms import parse_json
from runs.jsoninput import JSONInputError
from runs.models import TRANSITIONS, AuditEntry, InvalidOperation, Run, Signal, Status, WorkerProcess

# Checkpoints listed on a run's admin page; a longer run links to the rest.
CHECKPOINTS_SHOWN = 200
# Run fields an admin may set to unstick a run, through Run.set_state; the rest is history.
RUN_EDITABLE = ("status", "wait_kind", "wait_signal", "wait_position", "wake_at", "output", "error_message")


def as_json(value: Any) -> Any:
    """A value as it can be stored in an audit entry's details."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


class StrictJSONField(forms.JSONField):
    """The admin's JSON field: parsed by runs.jsoninput like every other door (no NaN, size
    and depth limits), and a stored value it cannot format is shown raw instead of failing."""

    def to_python(self, value):
        passthrough = (list, dict, int, float, forms.fields.JSONString)
        if self.disabled or value in self.empty_values or isinstance(value, passthrough):
            return super().to_python(value)
        converted = parse_json(value)
        return forms.fields.JSONString(converted) if isinstance(converted, str) else converted

    def bound_data(self, data, initial):
        # Django's re-parses the submitted text with json.loads to show it again.
        if self.disabled:
            return initial
        if data is None:
            return None
        try:
            return jsoninput.parse(data)
        except (JSONInputError, TypeError):
            return forms.fields.InvalidJSONInput(data)

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return jsoninput.render(value, cls=self.encoder)[0]

    def has_changed(self, initial, data):
        try:
            return super().has_changed(initial, data)
        except (RecursionError, ValueError, TypeError):
            return True  # a value too deep to compare is not the one submitted


SHOWN = "_shown"  # suffix of the read-only display of a JSON field
SHOWN_CAP = 20_000  # characters of a read-only JSON value shown on an admin page


class SafeJSONReadonly:
    """Read-only JSON fields are shown through runs.jsoninput: a stored value too deep or too
    large to format (a row older than today's limits) is shown raw, escaped and capped. Django's
    own display json.dumps it, and a RecursionError there would make the page a 500."""

    def _json_names(self) -> set[str]:
        return {f.name for f in self.model._meta.concrete_fields if isinstance(f, models.JSONField)}

    # Admins that choose their fields per object override these two, not Django's getters.
    def readonly_names(self, request, obj=None):
        return super().get_readonly_fields(request, obj)

    def field_names(self, request, obj=None):
        return super().get_fields(request, obj)

    def _readonly_json(self, request, obj) -> set[str]:
        if not self.has_change_permission(request, obj):  # a view-only page: every field
            return self._json_names()
        return set(self.readonly_names(request, obj)) & self._json_names()

    def _shown(self, request, obj, names) -> list[str]:
        json_names = self._readonly_json(request, obj)
        return [f"{name}{SHOWN}" if name in json_names else name for name in names]

    def get_readonly_fields(self, request, obj=None):
        return self._shown(request, obj, self.readonly_names(request, obj))

    def get_fields(self, request, obj=None):
        return self._shown(request, obj, self.field_names(request, obj))

    def get_form(self, request, obj=None, **kwargs):
        # The fields shown read-only stay out of the form under their own names too.
        hidden = [
            *(self.exclude or ()),
            *self.get_readonly_fields(request, obj),
            *self._readonly_json(request, obj),
        ]
        return super().get_form(request, obj, **{**kwargs, "exclude": hidden})

    def __getattr__(self, name: str):
        field = name.removesuffix(SHOWN)
        if name.endswith(SHOWN) and field in self._json_names():

            def show(obj):
                return format_html("<pre>{}</pre>", jsoninput.pretty(getattr(obj, field), cap=SHOWN_CAP))

            show.short_description = field.replace("_", " ")
            return show
        raise AttributeError(name)


class ReadOnlyAdmin:
    """Rows shown, never added, edited or deleted here."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class OperateActions:
    """Admin actions that go through Run's operator methods (and so are audited)."""

    def has_operate_permission(self, request) -> bool:
        return request.user.has_perm("runs.operate")

    def _operate(self, request, runs, verb: str, operation) -> None:
        done, refused = 0, []
        for run in runs:
            try:
                operation(run)
                done += 1
            except InvalidOperation as exc:
                refused.append(str(exc))
        if done:
            self.message_user(request, f"{verb}: {done} run(s).", messages.SUCCESS)
        for reason in refused[:10]:
            self.message_user(request, reason, messages.WARNING)
        if len(refused) > 10:
            self.message_user(request, f"… and {len(refused) - 10} more refused.", messages.WARNING)

    @admin.action(description="Resume selected runs (failed or dead-lettered)", permissions=["operate"])
    def resume_runs(self, request, queryset):
        runs = queryset.order_by("pk")
        self._operate(
            request, runs, "Resumed", lambda run: run.resume(by=request.user, reason="admin action")
        )

    @admin.action(description="Cancel selected runs", permissions=["operate"])
    def cancel_runs(self, request, queryset):
        runs = queryset.order_by("pk")
        self._operate(
            request, runs, "Cancelled", lambda run: run.cancel(by=request.user, reason="admin action")
        )

    @admin.action(description="Terminate selected runs (interrupt the running step)", permissions=["operate"])
    def terminate_runs(self, request, queryset):
        runs = queryset.order_by("pk")
        self._operate(
            request, runs, "Terminating", lambda run: run.terminate(by=request.user, reason="admin action")
        )


class RunActionForm(admin.helpers.ActionForm):
    """What some actions need besides the runs: a step position, a reason."""

    position = forms.IntegerField(required=False, min_value=0, label="From step")
    reason = forms.CharField(required=False, max_length=1000, label="Reason")


class RunAdminForm(forms.ModelForm):
    output = StrictJSONField(required=False, help_text="JSON; needed to mark a run succeeded.")
    audit_reason = forms.CharField(
        required=False,
        max_length=1000,
        label="Reason",
        help_text="Kept in the audit log together with the fields you changed.",
    )
    # The run's updated_at when the form was opened; the save is refused if it moved.
    loaded_version = forms.CharField(required=False, widget=forms.HiddenInput)

    class Meta:
        model = Run
        fields = RUN_EDITABLE
        help_texts = {
            "status": "Only the moves the state machine allows from the run's current status. Waiting "
            "needs its wait; succeeded an output; failed an error message. Pending dispatches it again.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            current = self.instance.status
            allowed = [current, *sorted(TRANSITIONS[current])]
            self.fields["status"].choices = [(value, Status(value).label) for value in allowed]
            if not self.is_bound:
                self.fields["loaded_version"].initial = self.instance.updated_at.isoformat()

    def clean(self):
        data = super().clean()
        loaded = parse_datetime(data.get("loaded_version") or "")
        current = Run.objects.filter(pk=self.instance.pk).values_list("updated_at", "status").first()
        if self.instance.pk and current and loaded != current[0]:
            raise ValidationError(
                f"This run changed while you were editing it (it is now {Status(current[1]).label}). "
                "Reload the page and make your change again."
            )
        return data


@admin.register(Run)
class RunAdmin(SafeJSONReadonly, OperateActions, admin.ModelAdmin):
    form = RunAdminForm
    list_display = (
        "id",
        "workflow",
        "status",
        "steps_done",
        "current_step",
        "error_type",
        "recovery_count",
        "created_at",
        "finished_at",
    )
    list_display_links = ("id", "workflow")
    list_filter = ("status", "wait_kind", "cancel_requested", "created_at")
    search_fields = ("=id", "workflow", "=idempotency_key", "error_type")
    actions = ("resume_runs", "retry_runs", "cancel_runs", "terminate_runs", "mark_failed_runs")
    action_form = RunActionForm
    date_hierarchy = None
    show_full_result_count = False
    list_per_page = 50

    def readonly_names(self, request, obj=None):
        history = [f.name for f in Run._meta.concrete_fields if f.name not in RUN_EDITABLE and f.name != "id"]
        return ["dashboard", "checkpoints", *history]

    def get_fieldsets(self, request, obj=None):
        shown_apart = ("dashboard", "checkpoints")
        readonly = [name for name in self.get_readonly_fields(request, obj) if name not in shown_apart]
        return [
            (None, {"fields": ["dashboard", "audit_reason", "loaded_version"]}),
            ("State (editable, audited)", {"fields": list(RUN_EDITABLE)}),
            ("Checkpoints (read-only)", {"fields": ["checkpoints"]}),
            ("History (read-only)", {"fields": readonly}),
        ]

    @admin.display(description="Checkpoints")
    def checkpoints(self, obj: Run):
        """The run's checkpoints in order, each linked to its own admin page (where a live one
        of a failed run can be edited); the first CHECKPOINTS_SHOWN of a long run."""
        if not obj.pk:
            return "–"
        rows = obj.checkpoints.order_by("position", "id").values_list(
            "pk", "position", "name", "status", "superseded_at"
        )[: CHECKPOINTS_SHOWN + 1]
        lines = format_html_join(
            "",
            '<tr><td><a href="{}">#{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (reverse("admin:steps_checkpoint_change", args=[pk]), position, name, status, state)
                for pk, position, name, status, superseded in rows[:CHECKPOINTS_SHOWN]
                for state in ["superseded" if superseded else "live"]
            ),
        )
        if not lines:
            return "none yet"
        more = ""
        if len(rows) > CHECKPOINTS_SHOWN:
            listed = reverse("admin:steps_checkpoint_changelist") + f"?q={obj.pk}"
            more = format_html('<p><a href="{}">all checkpoints of run #{}</a></p>', listed, obj.pk)
        return format_html(
            '<table class="run-checkpoints"><thead><tr><th>Step</th><th>Name</th><th>Status</th>'
            "<th></th></tr></thead><tbody>{}</tbody></table>{}",
            lines,
            more,
        )

    def has_add_permission(self, request) -> bool:
        return False  # runs are started through Run.objects.start (dashboard, CLI, API)

    @admin.display(description="Dashboard")
    def dashboard(self, obj: Run):
        if not obj.pk:
            return "–"
        return format_html(
            '<a href="{}">open run #{} on the dashboard</a>', reverse("run_detail", args=[obj.pk]), obj.pk
        )

    def save_model(self, request, obj: Run, form, change: bool) -> None:
        """Every change goes through Run.set_state; a refused one is a message, and nothing moves."""
        changed = [name for name in form.changed_data if name in RUN_EDITABLE]
        request._durable_outcome = "unchanged"
        if not change or not changed:
            return
        data = form.cleaned_data
        fields = {name: data.get(name) for name in RUN_EDITABLE if name != "status"}
        run = Run.objects.get(pk=obj.pk)
        try:
            run.set_state(data["status"], by=request.user, reason=data.get("audit_reason", ""), **fields)
        except (InvalidOperation, ValueError) as exc:
            request._durable_outcome = str(exc)
            return
        request._durable_outcome = "saved"

    def response_change(self, request, obj):
        outcome = getattr(request, "_durable_outcome", "saved")
        if outcome == "saved":
            return super().response_change(request, obj)
        if outcome == "unchanged":
            self.message_user(request, "Nothing changed, so nothing was saved.", messages.INFO)
        else:
            self.message_user(request, f"Not saved: {outcome}", messages.ERROR)
        return HttpResponseRedirect(request.path)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # history is never deleted by hand: retention (`runs prune`) does it

    @admin.action(description="Retry selected runs from the step given below", permissions=["operate"])
    def retry_runs(self, request, queryset):
        position = request.POST.get("position", "")
        if not position.isdigit():
            self.message_user(request, "Give the step position to retry from.", messages.ERROR)
            return
        reason = request.POST.get("reason", "") or "admin action"
        self._operate(
            request,
            queryset.order_by("pk"),
            "Retrying",
            lambda run: run.retry_from(int(position), by=request.user, reason=reason),
        )

    @admin.action(
        description="Mark selected runs failed, with the reason given below", permissions=["operate"]
    )
    def mark_failed_runs(self, request, queryset):
        reason = request.POST.get("reason", "").strip()
        if not reason:
            self.message_user(request, "Give the reason the runs failed.", messages.ERROR)
            return
        self._operate(
            request,
            queryset.order_by("pk"),
            "Marked failed",
            lambda run: run.mark_failed(request.user, reason),
        )


class SignalAdminForm(forms.ModelForm):
    payload = StrictJSONField(required=False, help_text="JSON; empty sends null.")
    audit_reason = forms.CharField(required=False, max_length=1000, label="Reason")

    class Meta:
        model = Signal
        fields = ("run", "name", "payload")

    def clean(self):
        data = super().clean()
        run = data.get("run")
        if run is not None and not run.can_signal:
            raise ValidationError(
                f"Run {run.pk} is {run.get_status_display()}; only unfinished runs take signals."
            )
        return data


@admin.register(Signal)
class SignalAdmin(SafeJSONReadonly, admin.ModelAdmin):
    form = SignalAdminForm
    list_display = ("id", "run", "name", "sent_by", "created_at", "consumed_at", "consumed_position")
    list_filter = (("consumed_at", admin.EmptyFieldListFilter), "created_at")
    search_fields = ("=run__id", "name", "sent_by")
    raw_id_fields = ("run",)
    show_full_result_count = False

    def field_names(self, request, obj=None):
        if obj is None:
            return ("run", "name", "payload", "audit_reason")
        return ("run", "name", "payload", "sent_by", "created_at", "consumed_at", "consumed_position")

    def readonly_names(self, request, obj=None):
        return () if obj is None else self.field_names(request, obj)

    def has_add_permission(self, request) -> bool:
        return request.user.has_perm("runs.operate")

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request)

    def save_model(self, request, obj: Signal, form, change: bool) -> None:
        """A signal added here is sent through Run.send_signal, which wakes the run and audits."""
        data = form.cleaned_data
        try:
            sent = obj.run.send_signal(
                data["name"], data["payload"], by=request.user, reason=data["audit_reason"]
            )
        except InvalidOperation as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        obj.pk = sent.pk
        obj.__dict__.update({k: v for k, v in sent.__dict__.items() if not k.startswith("_")})

    def delete_model(self, request, obj: Signal) -> None:
        self._audit_deletes(request, [obj])
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        self._audit_deletes(request, list(queryset))
        super().delete_queryset(request, queryset)

    @staticmethod
    def _audit_deletes(request, signals) -> None:
        for signal in signals:
            details = {"signal_id": signal.pk, "name": signal.name, "payload": signal.payload}
            AuditEntry.record(signal.run, "admin delete signal", request.user, details=details)

    def response_add(self, request, obj, post_url_continue=None):
        if obj.pk is None:  # refused: the message says why
            return HttpResponseRedirect(reverse("admin:runs_signal_changelist"))
        return super().response_add(request, obj, post_url_continue)


@admin.register(AuditEntry)
class AuditEntryAdmin(SafeJSONReadonly, ReadOnlyAdmin, admin.ModelAdmin):
    """The audit log is written once."""

    list_display = ("created_at", "actor_name", "action", "run", "reason")
    list_filter = ("action", "created_at")
    search_fields = ("=run__id", "actor_name", "action", "reason")
    show_full_result_count = False
    list_select_related = ("run",)


@admin.register(WorkerProcess)
class WorkerProcessAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ("name", "hostname", "pid", "started_at", "heartbeat_at")
    search_fields = ("name", "hostname")
