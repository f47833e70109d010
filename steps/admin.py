"""Django admin for checkpoints, failed attempts and parallel branches: history, read-only.

The one edit allowed is a live checkpoint's output while its run is finished. It goes
through Run.edit_and_continue (every later step runs again) or, for a failed or
dead-lettered run when "continue" is unticked, Run.edit_checkpoint (only this output is
replaced): the old checkpoint is kept (superseded), the run resumes, and the audit log
records before and after.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html

from runs.admin import ReadOnlyAdmin, SafeJSONReadonly, StrictJSONField
from runs.models import InvalidOperation
from steps.models import Attempt, Branch, Checkpoint


class LiveListFilter(admin.SimpleListFilter):
    title = "live or superseded"
    parameter_name = "live"

    def lookups(self, request, model_admin):
        return (("yes", "live"), ("no", "superseded"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(superseded_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(superseded_at__isnull=False)
        return queryset


class RunLink:
    @admin.display(description="run", ordering="run")
    def run_link(self, obj):
        url = reverse("run_detail", args=[obj.run_id])
        return format_html('<a href="{}">run #{}</a>', url, obj.run_id)


class CheckpointAdminForm(forms.ModelForm):
    output = StrictJSONField(
        required=False, help_text="JSON. Saving replaces the output and resumes the run."
    )
    audit_reason = forms.CharField(required=False, max_length=1000, label="Reason")
    continue_from_here = forms.BooleanField(
        required=False,
        initial=True,
        label="Edit and continue",
        help_text="Run every step after this one again with the new value (its later checkpoints are "
        "superseded, kept). Untick to replace only this output and resume: the later steps "
        "replay what they recorded.",
    )

    class Meta:
        model = Checkpoint
        fields = ("output",)

    def clean(self):
        data = super().clean()
        run = self.instance.run
        allowed = run.can_edit_and_continue if data.get("continue_from_here") else run.can_edit
        if "output" in self.changed_data and not (self.instance.is_live and allowed):
            raise ValidationError(
                f"Only a live checkpoint of a finished run can be edited and continued, and only one "
                f"of a failed or dead-lettered run replaced alone; run {run.pk} is "
                f"{run.get_status_display()}."
            )
        return data


@admin.register(Checkpoint)
class CheckpointAdmin(SafeJSONReadonly, RunLink, admin.ModelAdmin):
    form = CheckpointAdminForm
    list_display = (
        "id",
        "run_link",
        "position",
        "name",
        "status",
        "attempts",
        "started_at",
        "finished_at",
        "live",
    )
    list_filter = ("status", LiveListFilter, "finished_at")
    search_fields = ("=run__id", "name", "error_type")
    show_full_result_count = False
    list_per_page = 100
    history = (
        "run",
        "position",
        "name",
        "status",
        "error_type",
        "error_message",
        "error_traceback",
        "attempts",
        "epoch",
        "started_at",
        "finished_at",
        "superseded_at",
        "edited_from",
        "meta",
    )

    @admin.display(boolean=True, description="live")
    def live(self, obj) -> bool:
        return obj.is_live

    def editable(self, request, obj) -> bool:
        return bool(
            obj and obj.is_live and obj.run.can_edit_and_continue and request.user.has_perm("runs.operate")
        )

    def field_names(self, request, obj=None):
        if self.editable(request, obj):
            return ("output", "continue_from_here", "audit_reason", *self.history)
        return ("output", *self.history)

    def readonly_names(self, request, obj=None):
        if self.editable(request, obj):
            return self.history
        return ("output", *self.history)

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # superseded, never deleted

    def save_model(self, request, obj: Checkpoint, form, change: bool) -> None:
        if "output" not in form.changed_data:
            return
        reason = form.cleaned_data.get("audit_reason") or "edited in the admin"
        try:
            edit = (
                obj.run.edit_and_continue
                if form.cleaned_data.get("continue_from_here")
                else obj.run.edit_checkpoint
            )
            edit(obj.position, form.cleaned_data["output"], by=request.user, reason=reason)
        except InvalidOperation as exc:
            self.message_user(request, str(exc), messages.ERROR)


class ReadOnlyHistory(ReadOnlyAdmin):
    """History the engine writes once: shown, never added, edited or deleted here."""

    @admin.display(boolean=True, description="live")
    def live(self, obj) -> bool:
        return obj.superseded_at is None


@admin.register(Attempt)
class AttemptAdmin(SafeJSONReadonly, ReadOnlyHistory, RunLink, admin.ModelAdmin):
    list_display = ("id", "run_link", "position", "name", "number", "error_type", "finished_at", "live")
    list_filter = (LiveListFilter, "finished_at")
    search_fields = ("=run__id", "name", "error_type")
    show_full_result_count = False
    list_per_page = 100


@admin.register(Branch)
class BranchAdmin(SafeJSONReadonly, ReadOnlyHistory, RunLink, admin.ModelAdmin):
    """Calls of parallel groups; the engine owns their state, so the admin only shows them."""

    list_display = (
        "id",
        "run_link",
        "position",
        "index",
        "name",
        "status",
        "attempts",
        "finished_at",
        "live",
    )
    list_filter = ("status", LiveListFilter)
    search_fields = ("=run__id", "name", "error_type")
    show_full_result_count = False
    list_per_page = 100
