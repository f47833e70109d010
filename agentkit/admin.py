from django.contrib import admin

from agentkit.models import Note, Notification, Order, Payment, PaymentRequest, ProviderCall
from runs.admin import ReadOnlyAdmin


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["number", "customer", "item", "total_cents", "status", "refund_reference"]
    list_filter = ["status"]
    search_fields = ["number", "customer", "email"]


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["reference", "order", "amount_cents", "idempotency_key", "created_at"]
    search_fields = ["reference", "idempotency_key", "order__number"]


@admin.register(PaymentRequest)
class PaymentRequestAdmin(admin.ModelAdmin):
    list_display = ["created_at", "order_number", "amount_cents", "outcome", "idempotency_key"]
    list_filter = ["outcome"]
    search_fields = ["idempotency_key", "order_number"]


@admin.register(ProviderCall)
class ProviderCallAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """What the provider billed: kept as recorded; billing retention removes old rows."""

    list_display = [
        "created_at",
        "workflow",
        "run",
        "position",
        "attempt",
        "provider",
        "model",
        "outcome",
        "cost_usd",
    ]
    list_filter = ["provider", "model", "outcome"]
    search_fields = ["workflow"]
    raw_id_fields = ["run"]


admin.site.register(Note)
admin.site.register(Notification)
