"""A stop signal during the launcher's start-up stops every worker, started or not (defect 7:
it reached only the children already spawned, and the launcher went on spawning)."""

from __future__ import annotations

import re
import signal
import subprocess

import pytest

from tests.conftest import BIN, REPO
from tests.workers import wait_for, worker_env

pytestmark = pytest.mark.slow
SLOTS = 4


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("after_slots", [1, 2, 3])
def test_sigterm_during_start_up_leaves_no_worker_running(sqlite_url, tmp_path, after_slots):
    log = tmp_path / "launcher.log"
    command = [str(BIN / "hpo-worker"), "--study", f"launch{after_slots}", "--space", "tiny",
               "--storage", sqlite_url, "--artifacts", str(tmp_path / "a"), "--devices", "cpu",
               "--jobs-per-device", str(SLOTS), "--n-trials", "200", "--epochs", "50",
               "--train-size", "300"]
    with open(log, "w") as out:
        launcher = subprocess.Popen(command, env=worker_env(), stdout=out,
                                    stderr=subprocess.STDOUT, cwd=REPO)
    # The moment: once the launcher has its handlers and has started `after_slots` children.
    wait_for(lambda: len(re.findall(r"slot \d+: pid", log.read_text())) >= after_slots,
             60, f"{after_slots} worker(s) started", interval=0.01)
    launcher.send_signal(signal.SIGTERM)
    code = launcher.wait(timeout=180)
    text = log.read_text()
    pids = [int(p) for p in re.findall(r"slot \d+: pid (\d+)", text)]
    assert code == 0, text
    assert len(pids) <= SLOTS
    wait_for(lambda: not any(_alive(p) for p in pids), 30, "every worker to be gone")
    # Nothing went on training after the signal: no trial completed at all (50-epoch trials).
    assert "complete value" not in text, text
