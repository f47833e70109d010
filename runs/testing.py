"""Turn exported runs into regression tests.

Export a run that matters (a production failure, a golden run), keep the file in
your tests, and assert that the current code still replays it:

    from runs.testing import assert_replays, exports_in

    def test_refund_still_replays():
        assert_replays("tests/runs/refund-1234.json")

    @exports_in("tests/runs")
    def test_every_exported_run_replays(export):
        assert_replays(export)

Replay needs no database and calls no step function (see runs.export).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runs.export import OUTCOMES, ReplayReport, load_export, replay


def assert_replays(path: str | Path, *, outcome: str | None = None) -> ReplayReport:
    """Replay the export at `path` against the current code and fail the test if it is unsafe.

    By default the replay must not diverge nor end differently than recorded
    (`report.ok`); pass `outcome="clean"` to also require that the code reproduces
    the run exactly, or any other outcome of runs.export.OUTCOMES. Returns the
    report for further assertions (`report.output`, `report.called`...).
    """
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}")
    report = replay(load_export(path))
    if (not report.ok) if outcome is None else (report.outcome != outcome):
        wanted = "a safe replay (clean or continues)" if outcome is None else f"outcome {outcome!r}"
        pytest.fail(f"{path}: expected {wanted}, got:\n{report}", pytrace=False)
    return report


def exports_in(folder: str | Path):
    """Parametrize a test with every `*.json` export in `folder` (argument name: `export`)."""
    paths = sorted(Path(folder).glob("*.json"))
    return pytest.mark.parametrize("export", paths, ids=[path.stem for path in paths])
