"""Multi-objective studies end to end: a real worker with --objectives accuracy,time or
accuracy,params, then export of a Pareto point, the report's Pareto figure and `hpo status`."""

from __future__ import annotations

import json
import math
import subprocess

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpo.store import study_records
from tests.conftest import BIN, REPO, run_cli
from tests.workers import worker_env

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _matches_second_value(trial: optuna.trial.FrozenTrial, objectives: str) -> bool:
    """The second objective is the trial's training seconds (as recorded, to clock rounding)
    or its parameter count (exactly)."""
    if objectives == "accuracy,time":
        return math.isclose(trial.values[1], trial.user_attrs["seconds"], rel_tol=1e-3)
    return trial.values[1] == float(trial.user_attrs["params"])


@pytest.mark.parametrize("objectives", ["accuracy,time", "accuracy,params"])
def test_worker_multiobjective_study_pareto_export_report_status(objectives, tmp_path):
    storage, study_name = f"sqlite:///{tmp_path / 'hpo.db'}", "pareto"
    worker = subprocess.run(
        [str(BIN / "hpo-worker"), "--study", study_name, "--space", "tiny", "--storage", storage,
         "--artifacts", str(tmp_path / "art"), "--objectives", objectives, "--n-trials", "3",
         "--epochs", "1", "--train-size", "200", "--devices", "cpu", "--seed", "0"],
        env=worker_env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert worker.returncode == 0, worker.stdout + worker.stderr

    study = optuna.load_study(study_name=study_name, storage=storage)
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert study.user_attrs["objectives"] == objectives
    assert study_records.read(optuna.storages.RDBStorage(storage), study_name)["settings"]["objectives"] == objectives
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3, [(t.number, t.state, t.user_attrs.get("end_reason"))
                                for t in study.trials]
    for t in complete:
        accuracy, second = t.values
        assert 0.0 <= accuracy <= 1.0 and second > 0
        assert _matches_second_value(t, objectives), (t.values, t.user_attrs)
    front = study.best_trials
    assert front, "the Pareto front is empty"

    # A user picks the Pareto point with the smallest second objective and exports it.
    chosen = min(front, key=lambda t: t.values[1])
    out = tmp_path / "chosen.json"
    run_cli("hpo", "export", "--storage", storage, "--study", study_name,
            "--trial", str(chosen.number), "-o", str(out), check=True)
    doc = json.loads(out.read_text())
    assert doc["trial"] == chosen.number and doc["state"] == "COMPLETE"
    assert doc["values"] == chosen.values and doc["value"] == chosen.values[0]
    assert doc["objectives"] == objectives
    assert doc["config"] == chosen.user_attrs["config"]

    report = run_cli("hpo", "report", "--storage", storage, "--study", study_name,
                     "-o", str(tmp_path / "report"), check=True)
    pareto = tmp_path / "report" / study_name / "pareto.png"
    assert pareto.exists(), f"no {pareto}; hpo report wrote:\n{report.stdout}"
    assert pareto.read_bytes().startswith(PNG_SIGNATURE)
    assert str(pareto) in report.stdout
    page = (tmp_path / "report" / "index.html").read_text()
    assert f"Pareto-optimal trials ({len(front)})" in page

    status = run_cli("hpo", "status", "--storage", storage, check=True)
    assert "Traceback" not in status.stderr, status.stderr
    row = next(line for line in status.stdout.splitlines() if line.startswith(study_name))
    best = max(complete, key=lambda t: t.values[0])
    assert "tiny" in row and f"{best.values[0]:.4f} (#{best.number})" in row, status.stdout
