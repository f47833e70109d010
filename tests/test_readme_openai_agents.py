"""The README's OpenAI Agents SDK example runs as written."""

import re
import types
from pathlib import Path

import pytest

from runs.models import Run, Status

pytestmark = pytest.mark.django_db(transaction=True)

README = Path(__file__).resolve().parent.parent / "README.md"


def example() -> str:
    section = README.read_text().split("### OpenAI Agents SDK", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_calls_the_tool_then_answers(doorbells):
    module = types.ModuleType("readme_weather")
    exec(compile(example(), "README.md", "exec"), module.__dict__)

    run = Run.objects.start("weather", {"question": "Picnic in Lyon tomorrow?"})
    assert doorbells.drain() == ["succeeded"]

    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert run.output == {"answer": "Picnic: sunny in Lyon."}
    names = list(run.live_checkpoints().values_list("name", flat=True))
    assert names == ["llm:weather", "tool:forecast", "llm:weather"]
