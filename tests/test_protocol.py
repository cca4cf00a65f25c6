"""``hpo-worker --protocol``: tuning by hand replayed as coordinate descent through the real
workers and storage. Each sweep starts from the best so far, no configuration is trained twice,
a killed worker's run is re-done before the next sweep, and the winner exports and re-trains."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from hpo.studies import protocol, protocol_file
from hpo.store import study_records
from hpo.errors import HpoError
from tests.conftest import BIN, REPO, run_cli
from tests.workers import trials, wait_for

SWEEPS = {
    "epochs": 3,  # runs long enough for the test to catch one inside a run
    "start": {"conv_layers": 2, "filters": [16, 32], "fc_widths": [32], "batch_size": 32},
    "sweeps": [{"name": "lr", "knobs": {"lr": [0.01, 0.05]}},  # 0.01 is the start: unmeasured
               # 0.0 is the best so far's (already measured): only 0.5 is new
               {"name": "dropout", "knobs": {"fc_dropout": [0.0, 0.5]}}]}
DATA = ("--dataset", "cifar10-sample", "--train-size", "1000", "--seed", "0")


def _worker(url: str, path, *args: str, artifacts: str, log_path) -> subprocess.Popen:
    command = [str(BIN / "hpo-worker"), "--protocol", str(path), "--storage", url,
               "--artifacts", artifacts, "--devices", "cpu", "--heartbeat", "1", "--grace", "6",
               *DATA, *args]
    return subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def _without_run_settings(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in ("epochs", "seed")},
                      sort_keys=True)


def test_protocol_sweeps_from_the_best_so_far_rerun_a_killed_run_and_train_nothing_twice(
        tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(SWEEPS))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    art = str(tmp_path / "art")
    workers = {p.pid: p for p in (
        _worker(url, path, artifacts=art, log_path=tmp_path / f"worker{i}.log") for i in (0, 1))}
    try:
        def a_worker_inside_a_run():
            for i, p in enumerate(workers.values()):
                assert p.poll() is None, (tmp_path / f"worker{i}.log").read_text()[-3000:]
            found = [t for t in trials(url, "mine.01_lr") if t.state == TrialState.RUNNING
                     and t.user_attrs.get("pid") in workers]
            if not found:
                return None
            # Whichever worker holds a run (the other may not have started one yet) is frozen,
            # then checked again: the kill lands inside this run, not after it.
            victim = workers[found[0].user_attrs["pid"]]
            victim.send_signal(signal.SIGSTOP)
            still = [t for t in trials(url, "mine.01_lr") if t.number == found[0].number
                     and t.state == TrialState.RUNNING]
            if not still:
                victim.send_signal(signal.SIGCONT)
                return None
            return victim, still[0]
        victim, killed = wait_for(a_worker_inside_a_run, 300, "a worker to be inside a run",
                                  interval=0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        survivor = next(p for p in workers.values() if p is not victim)
        assert survivor.wait(timeout=600) == 0, "the survivor failed"
    finally:
        for p in workers.values():
            if p.poll() is None:
                p.kill()
    sweep1, sweep2 = trials(url, "mine.01_lr"), trials(url, "mine.02_dropout")
    # The killed run failed and was re-done (same run) before the next sweep began.
    assert next(t for t in sweep1 if t.number == killed.number).state == TrialState.FAIL
    redone = [t for t in sweep1 if t.state == TrialState.COMPLETE
              and t.params == killed.params and t.number != killed.number]
    assert redone and redone[0].datetime_complete <= min(t.datetime_start for t in sweep2)
    done1 = [t for t in sweep1 if t.state == TrialState.COMPLETE]
    assert sorted(t.params["run"] for t in done1) == ["lr=0.01", "lr=0.05"]
    # Sweep 2 froze sweep 1's best and trained only what was new.
    best = max(done1, key=lambda t: (t.value, -t.number))
    storage = optuna.storages.RDBStorage(url)
    assert study_records.read_one(storage, "mine.02_dropout", "frozen_config") == \
        best.user_attrs["config"]
    done2 = [t for t in sweep2 if t.state == TrialState.COMPLETE]
    assert [t.params["run"] for t in done2] == ["fc_dropout=0.5"]
    assert done2[0].user_attrs["config"] == {**best.user_attrs["config"], "fc_dropout": 0.5}
    every = [_without_run_settings(t.user_attrs["config"]) for t in done1 + done2]
    assert len(every) == len(set(every)) == 3  # no run trained twice
    # The winner exports and re-trains with hpo train.
    winner = max(done1 + done2, key=lambda t: t.value)
    study = "mine.01_lr" if winner in done1 else "mine.02_dropout"
    export = tmp_path / "best.json"
    run_cli("hpo", "export", "--storage", url, "--study", study, "-o", str(export), check=True)
    trained = run_cli("hpo", "train", str(export), "--device", "cpu", timeout=300)
    assert trained.returncode == 0, trained.stderr
    val = re.search(r"^validation accuracy ([0-9.]+) \(last epoch", trained.stdout, re.M)
    assert val and abs(float(val.group(1)) - winner.value) <= 0.005, trained.stdout
    # Started again, the finished protocol trains nothing more.
    again = _worker(url, path, artifacts=art, log_path=tmp_path / "again.log")
    assert again.wait(timeout=300) == 0
    assert len(trials(url, "mine.01_lr")) == len(sweep1)
    assert len(trials(url, "mine.02_dropout")) == len(sweep2)


@pytest.mark.parametrize("sweep, words", [
    ({"name": "x", "knobs": {"filtres": ["16-32-128"]}}, ["unknown knob 'filtres'", "known:"]),
    ({"name": "x", "knobs": {"batchnorm": ["everywhere"]}}, ["'batchnorm'", "'everywhere'"]),
    ({"name": "x", "knobs": {"lr": [0.01, -1]}}, ["'lr'", "-1"]),
    ({"name": "x", "knobs": {"set": [{"optimiser": "adam"}]}}, ["'optimiser'"]),
])
def test_a_users_sweep_list_with_an_unknown_knob_or_value_is_one_line(tmp_path, sweep, words):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"sweeps": [{"name": "ok", "knobs": {"lr": [0.1]}}, sweep]}))
    db = tmp_path / "hpo.db"
    r = run_cli("hpo-worker", "--protocol", str(path), "--storage", f"sqlite:///{db}",
                "--dataset", "cifar10-sample", timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("hpo-worker: error: protocol ") and "sweep 2 (x)" in lines[0]
    assert "Traceback" not in r.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not db.exists()  # refused before anything is stored


def test_the_shipped_reports_protocol_is_the_hand_protocols_98_runs():
    reports = protocol_file.load("reports")
    assert [s.name for s in reports.sweeps][:3] == ["layers_lr_batch", "fc_layers", "filters"]
    # Run counts from the start as if each sweep's best were the start itself: HAND_PROTOCOL.md
    # lists 60, 2, 2, 8, 1, 7, 4, 4, 3, 1, 4, 2 new runs (98); its filters sweep counts 2 new
    # although none of its three patterns is the start's 32-64-128, so all three are new here.
    counts, trained = [], []
    for i, sweep in enumerate(reports.sweeps):
        counts.append(len(protocol.runs(sweep, reports.start, True, trained, 32)) +
                      (1 if i == 0 else 0))  # sweep 1 also trains the start itself
    assert counts == [60, 2, 3, 8, 1, 7, 4, 4, 3, 1, 4, 2]


def test_a_run_already_trained_in_an_earlier_sweep_is_not_queued_again():
    parsed = protocol_file.parse({"sweeps": [{"name": "a", "knobs": {"lr": [0.01, 0.02]}}]}, "t")
    start = parsed.start
    trained = [{**start, "lr": 0.02}]
    chosen = protocol.runs(parsed.sweeps[0], start, False, trained, 32)
    assert [label for label, _ in chosen] == ["lr=0.01"]  # the start, never measured yet
    assert protocol.runs(parsed.sweeps[0], start, True, trained, 32) == []


def test_a_protocol_refuses_search_flags_and_a_missing_file(tmp_path):
    r = run_cli("hpo-worker", "--protocol", "reports", "--pruner", "median", timeout=60)
    assert r.returncode == 2 and "--pruner does not apply to --protocol" in r.stderr
    r = run_cli("hpo-worker", "--protocol", str(tmp_path / "none.json"), timeout=60)
    assert r.returncode == 2 and "no such file; shipped protocols: reports" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_parse_names_the_first_bad_value():
    with pytest.raises(HpoError, match=r"sweep 1 \(a\): knob 'fc_layers' value 4 is invalid"):
        protocol_file.parse({"sweeps": [{"name": "a", "knobs": {"fc_layers": [1, 4]}}]}, "t")
