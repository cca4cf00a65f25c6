"""What a worker shows while it runs: a live '\\r' line on a terminal, plain log lines otherwise."""

from __future__ import annotations

import io
import logging
import re
import subprocess

import optuna
import pytest

from hpo.runtime.progress import Progress, _duration
from hpo.training.metrics import EpochMetrics
from tests.conftest import BIN, REPO
from tests.workers import worker_env

LINE = re.compile(r"trial (\d+) \((\d+) of (\d+)\) epoch (\d+)/(\d+) val_acc (\d\.\d{4}) "
                  r"best (-|\d\.\d{4}) ~\S+ left")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _metrics(epoch: int, val_acc: float) -> EpochMetrics:
    return EpochMetrics(epoch=epoch, train_loss=1.0, train_acc=val_acc + 0.05, val_loss=1.1,
                        val_acc=val_acc, seconds=0.1, lr=0.01)


def _run_two_trials(progress: Progress, study: optuna.Study) -> None:
    """Trial 0 completes at 0.6; trial 1 reports one epoch and is pruned."""
    trial = study.ask()
    progress.epoch(trial, _metrics(1, 0.5))
    progress.epoch(trial, _metrics(2, 0.6))
    study.tell(trial, 0.6)
    progress.trial_done(study.trials[-1])
    trial = study.ask()
    progress.epoch(trial, _metrics(1, 0.3))
    trial.set_user_attr("end_reason", "below the median")
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    progress.trial_done(study.trials[-1])
    progress.close()


@pytest.fixture
def study():
    return optuna.create_study(direction="maximize")


def test_progress_on_a_terminal_rewrites_one_line(study, caplog):
    stream = FakeTTY()
    with caplog.at_level(logging.INFO, logger="hpo.runtime.progress"):
        _run_two_trials(Progress(study, n_trials=3, epochs=2, stream=stream), study)
    out = stream.getvalue()
    assert "\r" in out and out.endswith("\r\033[K")
    parts = [p for p in out.split("\r\033[K") if p]
    live = [p for p in parts if LINE.fullmatch(p)]
    assert len(live) == 3, parts
    for word in ("trial", "epoch", "val_acc", "best", "left"):
        assert all(word in p for p in live)
    assert LINE.fullmatch(live[0]).groups()[:7] == ("0", "1", "3", "1", "2", "0.5000", "-")
    assert LINE.fullmatch(live[2]).groups()[:7] == ("1", "2", "3", "1", "2", "0.3000", "0.6000")
    assert "trial 0 complete value 0.6000\n" in parts
    assert "trial 1 pruned (below the median)\n" in parts
    assert not [r for r in caplog.records if r.name == "hpo.runtime.progress"]  # the line, not logs


def test_progress_without_a_terminal_logs_plain_lines(study, caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="hpo.runtime.progress"):
        _run_two_trials(Progress(study, n_trials=3, epochs=2, stream=stream), study)
    assert stream.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records if r.name == "hpo.runtime.progress"]
    assert all("\r" not in m and "\033" not in m for m in messages)
    epochs = [m for m in messages if LINE.fullmatch(m)]
    assert [LINE.fullmatch(m).group(4) for m in epochs] == ["1", "2", "1"]
    assert "trial 0 complete value 0.6000" in messages
    assert "trial 1 pruned (below the median)" in messages


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59, "59s"), (61, "1m01s"),
                                           (3599, "59m59s"), (3660, "1h01m")])
def test_duration_formats_time_left(seconds, text):
    assert _duration(seconds) == text


def test_worker_without_a_terminal_writes_plain_progress_lines(tmp_path):
    result = subprocess.run(
        [str(BIN / "hpo-worker"), "--study", "progress", "--space", "tiny",
         "--storage", f"sqlite:///{tmp_path / 'hpo.db'}", "--artifacts", str(tmp_path / "art"),
         "--n-trials", "2", "--epochs", "2", "--train-size", "200", "--devices", "cpu",
         "--pruner", "none", "--seed", "0"],
        env=worker_env(), cwd=REPO, capture_output=True, text=True, timeout=180)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "\r" not in out and "\033" not in out, out
    lines = [LINE.search(line) for line in out.splitlines()]
    seen = [(m.group(1), m.group(2), m.group(3), m.group(4), m.group(5))
            for m in lines if m]
    assert seen == [("0", "1", "2", "1", "2"), ("0", "1", "2", "2", "2"),
                    ("1", "2", "2", "1", "2"), ("1", "2", "2", "2", "2")], out
    assert re.search(r"trial 0 complete value \d\.\d{4}", out), out


def test_progress_best_is_study_wide_when_the_caller_passes_it(study, caplog):
    # Another worker's trial (0.8) beats this worker's own (0.6): "best" shows the study's best.
    progress = Progress(study, n_trials=3, epochs=1, stream=io.StringIO())
    trial = study.ask()
    study.tell(trial, 0.6)
    progress.trial_done(study.trials[-1], finished=2, study_best=0.8)
    with caplog.at_level(logging.INFO, logger="hpo.runtime.progress"):
        progress.epoch(study.ask(), _metrics(1, 0.5))
    assert LINE.search(caplog.text).group(7) == "0.8000"
