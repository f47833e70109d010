from django.apps import AppConfig


class AgentKitConfig(AppConfig):
    name = "agentkit"
    # The app was called `agents` until its import name had to make way for the OpenAI Agents
    # SDK's (`import agents`). The label stays, so its tables, migrations, permissions and
    # admin URLs are those deployments already have.
    label = "agents"
    verbose_name = "Agent toolkit and demo agents"
    default_auto_field = "django.db.models.BigAutoField"
