"""``hpo-worker --chain``: real worker processes on the embedded sample run stages in order, each
starting with the configuration it inherited, and recover a killed worker's trial before the
next stage begins."""

from __future__ import annotations

import os
import signal
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from hpo.studies import chain as chains
from hpo.store import study_records
from hpo.training.geometry import is_possible
from hpo.errors import HpoError
from tests.conftest import BIN, REPO, run_cli
from tests.workers import trials, wait_for

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TINY = ("--dataset", "cifar10-sample", "--train-size", "300", "--epochs", "1", "--seed", "0")


def _chain(url: str, *args: str, artifacts: str, log_path=None) -> subprocess.Popen:
    command = [str(BIN / "hpo-worker"), "--storage", url, "--artifacts", artifacts,
               "--devices", "cpu", "--heartbeat", "1", "--grace", "6", *args]
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _studies(url: str) -> dict[str, optuna.Study]:
    storage = optuna.storages.RDBStorage(url)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in storage.get_all_studies()}


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial:
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    return max(done, key=lambda t: (t.value, -t.number))


STAGES = ("stage1_layers", "stage2_fc", "stage3_filters", "stage4_conv", "stage5_regularization",
          "stage6_batchnorm", "stage7_optimizer", "stage8_schedule")


def test_chain_runs_every_stage_in_order_from_its_inherited_best(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    worker = _chain(url, "--chain", "--chain-name", "tiny", "--n-trials", "4",
                    "--jobs-per-device", "2", *TINY, artifacts=str(tmp_path / "art"),
                    log_path=tmp_path / "log")
    assert worker.wait(timeout=600) == 0, (tmp_path / "log").read_text()[-3000:]
    studies = _studies(url)
    storage = optuna.storages.RDBStorage(url)
    assert study_records.read(storage, "tiny")["chain"]["stages"] == list(STAGES)
    previous = None
    for stage in STAGES:
        study = studies[f"tiny.{stage}"]
        trained = [t for t in study.trials if t.state in FINISHED]
        budget = study_records.read(storage, study.study_name)["settings"]["n_trials"]
        assert len(trained) == budget, (stage, [(t.state, t.params) for t in study.trials])
        assert not [t for t in study.trials if t.state in (TrialState.RUNNING,
                                                             TrialState.WAITING)]
        # No configuration trained twice; no impossible geometry trained.
        configs = [t.user_attrs["config"] for t in trained]
        assert len({repr(sorted(c.items())) for c in configs}) == len(configs), stage
        assert all(is_possible(c) for c in configs)
        first = study.trials[0]
        if previous is None:
            # The chain starts from its own base (batch norm, cosine, flips), not the reports'.
            assert first.user_attrs["warm_start"] == {"defaults": True, "base": "chain"}
            assert study_records.read(storage, study.study_name)["frozen_config"] == \
                chains.BASE
        else:
            # The stage starts only once its predecessor is finished ...
            assert min(t.datetime_start for t in study.trials) >= \
                max(t.datetime_complete for t in previous.trials)
            # ... with the predecessor's best configuration as its first trial ...
            best = _best(previous)
            assert first.user_attrs["warm_start"] == {"study": previous.study_name,
                                                      "trial": best.number}
            assert first.user_attrs["config"] == best.user_attrs["config"]
            # ... so its best never falls below the predecessor's.
            assert _best(study).value >= best.value
        previous = study
    # stage6 (batch norm on/off for conv and FC: 4 points, no more than its budget) is exhaustive.
    assert study_records.read(storage, "tiny.stage6_batchnorm")["settings"]["exhaustive"] is True
    assert len({repr(t.params) for t in studies["tiny.stage6_batchnorm"].trials}) == 4

    # Visible: hpo status and hpo report show each stage's best and what it froze from where,
    # and the dashboard note on the chain's record says the same.
    status = run_cli("hpo", "status", "--storage", url, check=True).stdout
    assert "chain 'tiny': stage1_layers..stage8_schedule" in status and "; finished" in status
    stage2 = next(line for line in status.splitlines() if line.startswith("  stage2_fc "))
    best1 = _best(studies["tiny.stage1_layers"])
    assert f"tiny.stage1_layers #{best1.number} ({best1.value:.4f})" in stage2
    report = run_cli("hpo", "report", "--storage", url, "-o", str(tmp_path / "rep"), check=True)
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "Chain tiny" in html and "tiny.stage8_schedule" in html, report.stdout
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name("tiny"))
    note = "".join(v for k, v in sorted(attrs.items()) if k.startswith("dashboard:note_str"))
    assert "Finished" in note and "`tiny.stage4_conv`" in note

    # `optuna studies` stays readable: settings and frozen configs are not in its table.
    listing = subprocess.run([str(BIN / "optuna"), "studies", "--storage", url],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "tiny.stage8_schedule" in listing.stdout and "stage8_schedule" in listing.stdout
    for hidden in ("frozen_config", "train_size", "val_fraction", "matmul_precision"):
        assert hidden not in listing.stdout, hidden
    assert max(map(len, listing.stdout.splitlines())) < 400, listing.stdout

    # A second run of the same command finds every stage finished and trains nothing.
    again = run_cli("hpo-worker", "--storage", url, "--artifacts", str(tmp_path / "art"),
                    "--devices", "cpu", "--chain", "--chain-name", "tiny", "--n-trials", "4",
                    *TINY, timeout=300)
    assert again.returncode == 0, again.stderr
    assert sum(len(s.trials) for s in _studies(url).values()) == \
        sum(len(s.trials) for s in studies.values())


def test_chain_base_is_the_defaults_plus_three_knobs_and_from_replaces_it(tmp_path):
    from hpo.views.notes import stage_note
    from hpo.studies.freezing import frozen_from_predecessor
    from search_spaces import DEFAULTS, get_stage

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'x.db'}")
    stage1 = get_stage("stage1_layers")
    base, origin = frozen_from_predecessor(storage, stage1, None, None, chain_base=True)
    assert {k: v for k, v in base.items() if DEFAULTS[k] != v} == \
        {"conv_batchnorm": True, "scheduler": "cosine", "flip": True}
    assert origin == {"defaults": True, "base": "chain",
                      "reason": "stage1_layers builds on no stage"}
    assert "the chain's starting point" in stage_note(stage1, origin, base)  # the dashboard's
    # A single stage keeps the reports' start; a chain given --from starts from the file.
    assert frozen_from_predecessor(storage, stage1, None, None)[0] == DEFAULTS
    reports = REPO / "benchmarks/bases/reports.json"
    config, origin = frozen_from_predecessor(storage, stage1, None, str(reports), chain_base=True)
    assert config == DEFAULTS and origin["file"] == str(reports)


def test_chain_killed_worker_trial_is_rerun_before_the_next_stage(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    args = ("--chain", "stage1_layers..stage2_fc", "--n-trials", "3", "--dataset",
            "cifar10-sample", "--train-size", "300", "--epochs", "4", "--seed", "0")
    art = str(tmp_path / "art")
    victim = _chain(url, *args, artifacts=art, log_path=tmp_path / "victim.log")
    survivor = _chain(url, *args, artifacts=art, log_path=tmp_path / "survivor.log")
    try:
        def victims_trial():
            return [t for t in trials(url, "chain.stage1_layers")
                    if t.state == TrialState.RUNNING and t.user_attrs.get("pid") == victim.pid
                    and t.intermediate_values]
        killed = wait_for(victims_trial, 240, "the victim to be one epoch into a trial")[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        assert survivor.wait(timeout=400) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    finally:
        for p in (victim, survivor):
            if p.poll() is None:
                p.kill()
    stage1, stage2 = trials(url, "chain.stage1_layers"), trials(url, "chain.stage2_fc")
    assert next(t for t in stage1 if t.number == killed.number).state == TrialState.FAIL
    retry = [t for t in stage1 if t.state in FINISHED  # the pruner may stop the re-run too
             and t.params == killed.params and t.number != killed.number]
    assert retry, [(t.number, t.state, t.params) for t in stage1]
    assert retry[0].datetime_complete <= min(t.datetime_start for t in stage2)
    assert len([t for t in stage1 if t.state in FINISHED]) == 3


def test_chain_late_joiner_starts_at_the_active_stage(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    args = ("--chain", "stage1_layers..stage3_filters", "--n-trials", "5", "--dataset",
            "cifar10-sample", "--train-size", "300", "--epochs", "2", "--seed", "0")
    art = str(tmp_path / "art")
    first = _chain(url, *args, artifacts=art, log_path=tmp_path / "first.log")
    late = None
    try:
        wait_for(lambda: any(t.state == TrialState.RUNNING
                             for t in trials(url, "chain.stage2_fc")), 300,
                 "the first worker to reach stage 2")
        status = run_cli("hpo", "status", "--storage", url, check=True).stdout
        assert "active stage stage2_fc (2 of 3)" in status, status
        late = _chain(url, *args, artifacts=art, log_path=tmp_path / "late.log")
        assert first.wait(timeout=400) == 0
        assert late.wait(timeout=400) == 0, (tmp_path / "late.log").read_text()[-3000:]
    finally:
        for p in (first, late):
            if p is not None and p.poll() is None:
                p.kill()
    pids = {stage: {t.user_attrs.get("pid") for t in trials(url, f"chain.{stage}")}
            for stage in ("stage1_layers", "stage2_fc", "stage3_filters")}
    assert late.pid not in pids["stage1_layers"]
    assert late.pid in pids["stage2_fc"] | pids["stage3_filters"]
    assert "chain.stage1_layers: finished" in (tmp_path / "late.log").read_text()


@pytest.mark.parametrize("chain, message", [
    ("stage1_layers..nonsense", "unknown stage 'nonsense'"),
    ("stage5_regularization..stage2_fc", "stage2_fc comes before stage5_regularization"),
    ("stage1_layers..joint", "joint does not build on stage1_layers"),
    ("stage1_layers", "allowed: all, or FIRST..LAST"),
])
def test_chain_bad_range_is_one_line_and_stores_nothing(tmp_path, chain, message):
    result = run_cli("hpo-worker", "--chain", chain, "--storage", f"sqlite:///{tmp_path / 'x.db'}",
                     "--devices", "cpu", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "--chain" in lines[0], result.stderr
    assert not (tmp_path / "x.db").exists()


def test_chain_name_taken_with_other_settings_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    from hpo.studies.chain import open_chain, parse_chain
    from hpo.store.storage import open_storage

    storage = open_storage(url)
    open_chain(storage, "mine", parse_chain("stage6_batchnorm..stage8_schedule"),
               {"epochs": 3, "dataset": "cifar10-sample"})
    storage.dispose()
    for args, flag in ((("--chain", "stage6_batchnorm..stage8_schedule", "--epochs", "2"),
                        "--epochs"),
                       (("--chain", "stage7_optimizer..stage8_schedule"), "--chain")):
        result = run_cli("hpo-worker", *args, "--chain-name", "mine", "--storage", url,
                         "--devices", "cpu", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        line = result.stderr.strip()
        assert "\n" not in line and "chain 'mine' was created with" in line and flag in line
    assert [s.study_name for s in optuna.storages.RDBStorage(url).get_all_studies()] == ["mine"]


def test_chain_default_pruner_is_median_and_an_older_chain_keeps_its_own(tmp_path):
    """A changed default must not refuse, or silently re-prune, a chain created before it: a
    worker started without --pruner joins with the chain's stored pruner."""
    from hpo.studies.chain import open_chain, parse_chain
    from hpo.store.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    stages = parse_chain("stage6_batchnorm..stage8_schedule")
    try:
        assert open_chain(storage, "new", stages, {})["pruner"] == "median"
        open_chain(storage, "old", stages, {"pruner": "hyperband"})
        joined = open_chain(storage, "old", stages, {"pruner": None})
        assert joined["pruner"] == "hyperband"
        assert chains.stage_flags(joined)["pruner"] == "hyperband"
    finally:
        storage.dispose()


@pytest.mark.parametrize("native", [True, False])
def test_chain_decides_auto_precision_once_and_its_stages_inherit_it(tmp_path, monkeypatch,
                                                                     native):
    from hpo.training import precision
    from hpo.studies.chain import open_chain, parse_chain
    from hpo.store.storage import open_storage

    monkeypatch.setattr(precision, "native_bf16", lambda device: (native, "stand-in"))
    expected = "bf16" if native else "fp32"
    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    stages = parse_chain("stage6_batchnorm..stage8_schedule")
    try:
        assert open_chain(storage, "c", stages, {"precision": "auto"})["precision"] == expected
        # a joiner whose device decides otherwise keeps the chain's choice
        monkeypatch.setattr(precision, "native_bf16", lambda device: (not native, "other"))
        joined = open_chain(storage, "c", stages, {"precision": None})
        assert chains.stage_flags(joined)["precision"] == expected
        other = "fp32" if native else "bf16"
        with pytest.raises(HpoError, match=f"--precision '{expected}'; got '{other}'"):
            open_chain(storage, "c", stages, {"precision": other})
    finally:
        storage.dispose()


def test_an_older_chain_keeps_its_bf16_flag(tmp_path):
    from hpo.studies.chain import open_chain, parse_chain
    from hpo.store.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    stages = parse_chain("stage6_batchnorm..stage8_schedule")
    try:
        record = open_chain(storage, "old", stages, {"precision": "fp32"})
        record = {k: v for k, v in record.items() if k not in ("precision", "deterministic")}
        study_records.write(storage, "old", "chain", {**record, "bf16": True})
        joined = open_chain(storage, "old", stages, {})
        assert chains.stage_flags(joined)["precision"] == "bf16"
    finally:
        storage.dispose()


def test_chain_and_study_together_is_refused(tmp_path):
    result = run_cli("hpo-worker", "--chain", "--study", "stage1_layers", cwd=tmp_path)
    assert result.returncode == 2 and "--study NAME" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_users_stage_extends_the_chain_through_builds_on(tmp_path, monkeypatch):
    monkeypatch.setenv("HPO_STAGES", "tests.chain_extension")
    from hpo.studies.chain import parse_chain

    names = [s.name for s in parse_chain("stage7_optimizer..stage9_decay")]
    assert names == ["stage7_optimizer", "stage8_schedule", "stage9_decay"]
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    result = run_cli("hpo-worker", "--chain", "stage8_schedule..stage9_decay", "--n-trials", "2",
                     *TINY, "--storage", url, "--devices", "cpu",
                     "--artifacts", str(tmp_path / "art"), cwd=REPO,
                     env={"HPO_STAGES": "tests.chain_extension", "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    last = trials(url, "chain.stage9_decay")
    best8 = _best(_studies(url)["chain.stage8_schedule"])
    assert last[0].user_attrs["config"] == best8.user_attrs["config"]  # its warm start


def test_chain_on_postgresql_with_two_workers(pg_url, tmp_path):
    worker = _chain(pg_url, "--chain", "stage6_batchnorm..stage7_optimizer", "--n-trials", "3",
                    "--jobs-per-device", "2", *TINY, artifacts=str(tmp_path / "art"),
                    log_path=tmp_path / "log")
    assert worker.wait(timeout=400) == 0, (tmp_path / "log").read_text()[-3000:]
    studies = _studies(pg_url)
    stage6, stage7 = studies["chain.stage6_batchnorm"], studies["chain.stage7_optimizer"]
    assert len([t for t in stage6.trials if t.state in FINISHED]) == 3
    assert len([t for t in stage7.trials if t.state in FINISHED]) == 3
    first = stage7.trials[0]
    assert first.user_attrs["config"] == _best(stage6).user_attrs["config"]
    assert min(t.datetime_start for t in stage7.trials) >= \
        max(t.datetime_complete for t in stage6.trials)
