from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The built-in delivery workflow is registered wherever the app is installed.
        from notifications import delivery  # noqa: F401
