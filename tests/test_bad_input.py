"""Bad input: one clear line, nothing stored lost, passwords never shown."""

from __future__ import annotations


import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.conftest import run_cli
from tests.pgserver import ThrowawayPostgres
from tests.workers import worker_env

SECRET = "pa55-w0rd-never-shown"


@pytest.fixture
def password_pg():
    server = ThrowawayPostgres(password=SECRET)
    yield server
    server.close()


def _one_line_error(result, code: int = 2):
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_wrong_password_is_one_line_and_masked(password_pg):
    url = password_pg.url().replace(SECRET, "wrong-" + SECRET)
    for command in (("hpo", "status", "--storage", url),
                    ("hpo-worker", "--study", "stage1_layers", "--storage", url, "--devices", "cpu")):
        line = _one_line_error(run_cli(*command), code=1)  # the database refused: a failure
        assert "password authentication failed" in line
        assert SECRET not in line and "***" in line


def test_worker_output_never_shows_password(password_pg, tmp_path):
    url = password_pg.url()
    result = run_cli("hpo-worker", "--study", "pw", "--space", "tiny", "--storage", url,
                     "--n-trials", "1", "--epochs", "1", "--train-size", "200", "--devices", "cpu",
                     "--artifacts", str(tmp_path), env=worker_env(), check=True)
    status = run_cli("hpo", "status", "--storage", url, check=True)
    assert "pw" in status.stdout
    for text in (result.stdout, result.stderr, status.stdout, status.stderr):
        assert SECRET not in text


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON"),
    ('{"format": "hpo-export/9", "config": {}}', "not supported"),
    ('{"config": {"conv_layers": 2, "filters": [8]}}', "filters"),
    ('{"config": {"optimizer": "lbfgs"}}', "optimizer"),
    ('{"trials": []}', "non-empty"),
    ("[1, 2]", "JSON object"),
])
def test_corrupt_or_mismatched_export_is_rejected(tmp_path, content, expected):
    path = tmp_path / "best.json"
    path.write_text(content)
    line = _one_line_error(run_cli("hpo", "train", str(path), "--device", "cpu"))
    assert expected in line


def test_failing_commands_leave_the_database_intact(sqlite_url, tmp_path):
    study = optuna.create_study(study_name="keep", storage=sqlite_url, direction="maximize")
    for value in (0.1, 0.2, 0.3):
        study.add_trial(optuna.create_trial(value=value, user_attrs={"config": {}}))
    before = [(t.number, t.state, t.value) for t in study.get_trials()]
    for command in (
        ("hpo-worker", "--study", "keep", "--space", "nope", "--storage", sqlite_url),
        ("hpo-worker", "--study", "keep", "--space", "tiny", "--storage", sqlite_url,
         "--sampler", "annealing"),
        ("hpo-worker", "--study", "keep", "--space", "tiny", "--storage", sqlite_url,
         "--devices", "tpu:0"),
        ("hpo", "export", "--study", "kept", "--storage", sqlite_url),
        ("hpo", "create-study", "--study", "keep", "--storage", sqlite_url),
    ):
        _one_line_error(run_cli(*command, env=worker_env()))
    after = optuna.load_study(study_name="keep", storage=sqlite_url).get_trials()
    assert [(t.number, t.state, t.value) for t in after] == before


def test_out_of_memory_is_a_recorded_failure_and_the_worker_goes_on(small_data, tmp_path,
                                                                    monkeypatch):
    from optuna.artifacts import FileSystemArtifactStore

    import threading

    from hpo.runtime import runner as runner_module
    from hpo.store.artifacts import ArtifactPublisher
    from hpo.training.checkpoints import CheckpointStore
    from hpo.runtime.loop import told_state
    from hpo.runtime.trial_spec import TrialSpec
    from hpo.studies.objectives import ACCURACY
    from search_spaces import get_stage, DEFAULTS

    calls = []

    def fake_fit(config, data, on_epoch=None, resume=None, bf16=False, stop=None,
                 between_batches=None, on_model=None):
        calls.append(config)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner_module, "fit", fake_fit)
    store = FileSystemArtifactStore(str(tmp_path))
    spec = TrialSpec(get_stage("stage1_layers"), dict(DEFAULTS), 1, 0, ACCURACY, prunable=True)
    runner = runner_module.TrialRunner(spec, small_data, CheckpointStore(store),
                                       ArtifactPublisher(store), threading.Event())
    study = optuna.create_study(direction="maximize")
    for _ in range(2):
        trial = study.ask()
        study.tell(trial, state=told_state(runner.run(trial).ending))
    assert len(calls) == 2  # the first failure did not stop the loop
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("out of memory" in t.user_attrs["end_reason"] for t in study.trials)
