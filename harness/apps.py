from django.apps import AppConfig


class HarnessConfig(AppConfig):
    """The chaos run and the benchmarks: the evidence that durability and speed hold."""

    name = "harness"
    default_auto_field = "django.db.models.BigAutoField"
