# Celery autodiscovery imports `tasks` modules of installed apps; this one brings in
# the maintenance tasks that live with the runs they maintain.
from runs.maintenance import prune

__all__ = ["prune"]
