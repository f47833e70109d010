"""Provider calls outlive their runs: the run link is cleared on delete, and each call
keeps its run's workflow (backfilled here) for the reports that group by it."""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def copy_workflows(apps, schema_editor):
    ProviderCall = apps.get_model("agents", "ProviderCall")
    Run = apps.get_model("runs", "Run")
    # One UPDATE; the calls of runs pruned before this migration have no run to ask.
    ProviderCall.objects.filter(run__isnull=False).update(
        workflow=Subquery(Run.objects.filter(pk=OuterRef("run_id")).values("workflow")[:1])
    )


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="providercall",
            name="workflow",
            field=models.CharField(blank=True, default="", max_length=200),
        ),
        migrations.AlterField(
            model_name="providercall",
            name="run",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="provider_calls",
                to="runs.run",
            ),
        ),
        migrations.RunPython(copy_workflows, migrations.RunPython.noop),
    ]
