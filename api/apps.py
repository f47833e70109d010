from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "JSON API and metrics"

    def ready(self) -> None:
        from api.tallies import settle_pruned
        from runs.retention import pruning

        # Counters keep what a prune deletes (see api/tallies.py).
        pruning.connect(settle_pruned, dispatch_uid="api.tallies.settle_pruned")
