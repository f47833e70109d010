from django import forms
from django.contrib import admin

from runs.admin import StrictJSONField
from schedules.models import Schedule, Tick


class ScheduleForm(forms.ModelForm):
    input = StrictJSONField(required=False, help_text="The input of every run it starts, as JSON.")

    class Meta:
        model = Schedule
        fields = [
            "name",
            "workflow",
            "input",
            "cron",
            "interval_seconds",
            "time_zone",
            "queue",
            "enabled",
            "overlap",
            "catch_up",
        ]


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ("name", "workflow", "timing", "enabled", "overlap", "catch_up", "last_tick_at")
    list_filter = ("enabled", "from_code")
    readonly_fields = ("from_code", "last_tick_at", "created_at")


@admin.register(Tick)
class TickAdmin(admin.ModelAdmin):
    list_display = ("schedule", "tick_at", "outcome", "run", "manual")
    list_filter = ("outcome", "manual")
    readonly_fields = [f.name for f in Tick._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
