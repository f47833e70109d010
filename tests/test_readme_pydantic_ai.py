"""The README's Pydantic AI example runs as written."""

import re
import types
from pathlib import Path

import pytest

from runs.models import Run, Status

pytestmark = pytest.mark.django_db(transaction=True)

README = Path(__file__).resolve().parent.parent / "README.md"


def example() -> str:
    section = README.read_text().split("### Pydantic AI agents", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_waits_for_approval_then_answers(doorbells):
    module = types.ModuleType("readme_forecaster")
    exec(compile(example(), "README.md", "exec"), module.__dict__)

    run = Run.objects.start("forecaster", {"question": "Picnic in Lyon tomorrow?"})
    assert doorbells.drain() == ["ok/signal"]
    run.refresh_from_db()
    assert "book_table" in run.wait_prompt
    run.send_signal("approval", {"approved": True}, by="alice")
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert "table booked in" in run.output["answer"] and "sunny in" in run.output["answer"]
    names = list(run.live_checkpoints().values_list("name", flat=True))
    assert names[0] == "llm:forecaster" and "tool:forecast" in names and "tool:book_table" in names
