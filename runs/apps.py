from django.apps import AppConfig
from django.conf import settings
from django.core import checks

from runs import conf


class RunsConfig(AppConfig):
    name = "runs"
    default_auto_field = "django.db.models.BigAutoField"

    def __init__(self, app_name, app_module):
        super().__init__(app_name, app_module)
        # Before any app's models are imported, so every read of a DURABLE_* setting finds a
        # value: a project sets only what differs from runs.conf's defaults.
        conf.apply_defaults(settings)

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in
        from django.db.backends.signals import connection_created

        from runs.search import register_sqlite_functions
        from runs.viewer_zone import restore_choice
        from runs.workflow import registry

        conf.validate(settings)  # a wrong type or range stops every process, web and worker
        checks.register(conf.check_project)
        # The text search's fold() on SQLite (runs.search); the import registers its lookup.
        connection_created.connect(register_sqlite_functions, dispatch_uid="runs.search")
        registry.load(settings.DURABLE_WORKFLOW_MODULES)
        user_logged_in.connect(restore_choice, dispatch_uid="runs.viewer_zone")
