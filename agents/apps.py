from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agent toolkit and demo agents"
    default_auto_field = "django.db.models.BigAutoField"
