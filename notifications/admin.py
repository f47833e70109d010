from django import forms
from django.contrib import admin

from notifications.models import Delivery, Event, Rule


class RuleForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=[(value, label) for value, label in Event.choices if value != Event.TEST],
        widget=forms.CheckboxSelectMultiple,
    )
    url = forms.URLField(required=False, max_length=1000, assume_scheme="https")
    # Write-only: a saved secret is never shown again; leave empty to keep it.
    secret = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False), max_length=200)

    class Meta:
        model = Rule
        fields = ["name", "workflow", "events", "channel", "url", "secret", "email_to", "enabled"]

    def clean_secret(self) -> str:
        return self.cleaned_data["secret"] or (self.instance.secret if self.instance.pk else "")


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    form = RuleForm
    list_display = ("name", "workflow", "channel", "enabled")


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("rule", "event", "run", "delivery_run", "created_at")
    readonly_fields = [f.name for f in Delivery._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
