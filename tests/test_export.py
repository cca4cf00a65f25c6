"""``hpo export`` -> ``hpo train`` round trip, ``--top``/``--trial``, export errors, status."""

from __future__ import annotations

import json
import os
import re

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tests.conftest import REPO, run_cli

ENV = {"OMP_NUM_THREADS": "1", "HPO_STAGES": "tests.tiny_stages",
       "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """(storage URL, study) after 4 trials of the tiny stage, 2 epochs each, none pruned."""
    folder = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{folder / 'hpo.db'}"
    run_cli("hpo-worker", "--study", "tiny", "--storage", url, "--devices", "cpu", "--epochs", "2",
            "--train-size", "300", "--n-trials", "4", "--pruner", "none", "--sampler", "random",
            "--seed", "0", env=ENV, check=True, timeout=240)
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name="tiny", storage=storage)
    storage.engine.dispose()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    return url, study


def _export(url: str, *args: str) -> dict:
    return json.loads(run_cli("hpo", "export", "--storage", url, *args, env=ENV, check=True).stdout)


def _one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpo: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_export_best_retrains_to_the_same_validation_accuracy(searched, tmp_path):
    url, study = searched
    path = tmp_path / "best.json"
    result = run_cli("hpo", "export", "--storage", url, "--study", "tiny", "-o", str(path), env=ENV,
                     check=True)
    assert str(path) in result.stderr
    doc = json.loads(path.read_text())
    assert (doc["study"], doc["stage"], doc["trial"]) == ("tiny", "tiny", study.best_trial.number)
    assert doc["value"] == study.best_value
    assert doc["config"] == study.best_trial.user_attrs["config"]
    assert (doc["train_size"], doc["dataset"]) == (300, "cifar10-sample")
    assert doc["value"] > 0.1, "the best trial should have learnt something, or the check is weak"

    assert (doc["device"], doc["threads"]) == ("cpu", 1)
    # hpo train takes the trial's thread count from the export, whatever the environment says
    trained = run_cli("hpo", "train", str(path), "--device", "cpu",
                      env={**ENV, "OMP_NUM_THREADS": "2"}, check=True, timeout=240).stdout
    assert "1 CPU thread(s), as the trial ran" in trained
    best = re.search(r"^validation accuracy (\d\.\d{4}) \(last epoch", trained, re.M)
    assert best, trained
    assert best.group(1) == f"{doc['value']:.4f}"
    epochs = [float(v) for v in re.findall(r"^epoch \d+/2 .* val_acc (\d\.\d{4})", trained, re.M)]
    assert epochs == [round(h["val_acc"], 4) for h in doc["history"]]
    assert f"exported validation accuracy {doc['value']:.4f}" in trained
    assert re.search(r"^test accuracy \d\.\d{4}$", trained, re.M)


def test_export_top_three_are_the_best_sorted(searched):
    url, study = searched
    doc = _export(url, "--study", "tiny", "--top", "3")
    trials = doc["trials"]
    assert len(trials) == 3
    values = [t["value"] for t in trials]
    assert values == sorted(values, reverse=True)
    ranked = sorted((t.value for t in study.trials), reverse=True)
    assert values == ranked[:3]
    assert trials[0]["trial"] == _export(url, "--study", "tiny")["trial"]
    assert len({t["trial"] for t in trials}) == 3


def test_export_chosen_trial(searched):
    url, study = searched
    chosen = min(study.trials, key=lambda t: t.value)
    doc = _export(url, "--study", "tiny", "--trial", str(chosen.number))
    assert (doc["trial"], doc["value"], doc["state"]) == (chosen.number, chosen.value, "COMPLETE")
    assert doc["params"] == chosen.params
    assert doc["config"] == chosen.user_attrs["config"]


def test_export_unknown_study_and_trial_are_one_line_errors(searched):
    url, _ = searched
    _one_line_error(run_cli("hpo", "export", "--storage", url, "--study", "tinny", env=ENV),
                    "'tinny'", "tiny")
    _one_line_error(run_cli("hpo", "export", "--storage", url, "--study", "tiny", "--trial", "99",
                            env=ENV), "99", "0..3")
    _one_line_error(run_cli("hpo", "export", "--storage", url, "--study", "tiny", "--top", "0",
                            env=ENV), "--top '0'")


def test_export_study_without_complete_trial_is_one_line_error(sqlite_url):
    study = optuna.create_study(study_name="stage1_layers", storage=sqlite_url)
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"config": {}}))
    study.add_trial(create_trial(state=TrialState.FAIL))
    _one_line_error(run_cli("hpo", "export", "--storage", sqlite_url, "--study", "stage1_layers"),
                    "'stage1_layers'", "no complete trial")


def test_status_shows_counts_by_state_and_best_value(sqlite_url):
    lr = {"lr": FloatDistribution(1e-3, 1e-1, log=True)}
    study = optuna.create_study(study_name="stage1_layers", storage=sqlite_url,
                                direction="maximize")
    study.set_user_attr("stage", "stage1_layers")
    for value in (0.41, 0.4567, 0.3):
        study.add_trial(create_trial(value=value, params={"lr": 0.01}, distributions=lr))
    for state in (TrialState.PRUNED, TrialState.PRUNED, TrialState.FAIL):
        study.add_trial(create_trial(state=state))
    study.enqueue_trial({"lr": 0.02})
    optuna.create_study(study_name="empty_one", storage=sqlite_url)

    out = run_cli("hpo", "status", "--storage", sqlite_url, check=True).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"stage1_layers", "empty_one"}
    # study, stage, done, pruned, failed, running, waiting, best (#trial), running now
    assert rows["stage1_layers"][:9] == ["stage1_layers", "stage1_layers", "3", "2", "1", "0", "1",
                                         "0.4567", "(#1)"]
    assert rows["empty_one"][2:8] == ["0", "0", "0", "0", "0", "-"]

    only = run_cli("hpo", "status", "--storage", sqlite_url, "--study", "empty_one",
                   check=True).stdout
    assert "empty_one" in only and "stage1_layers" not in only
    _one_line_error(run_cli("hpo", "status", "--storage", sqlite_url, "--study", "nope"),
                    "'nope'", "empty_one, stage1_layers")
