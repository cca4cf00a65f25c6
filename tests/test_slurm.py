"""deploy/slurm/hpo-worker.sbatch on a real (one-node) SLURM cluster: an array of CPU workers
finishes a study, scancel and the walltime signal stop a task gracefully and its trial is
re-run from its checkpoint, and bad input is one line."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.cluster import SBATCH_SCRIPT, SlurmCluster, slurm  # noqa: F401  (fixture)
from tests.conftest import BIN
from tests.workers import trials, wait_for, worker_env

pytestmark = pytest.mark.slow
FAST = ("--space", "tiny", "--heartbeat", "1", "--grace", "6")


def job_env(storage: str, study: str, artifacts: Path, *worker_args: str) -> dict[str, str]:
    """What a user exports before sbatch; the storage URL only ever travels in the environment."""
    return worker_env(HPO_STUDY=study, HPO_STORAGE=storage, HPO_ARTIFACTS=str(artifacts),
                      HPO_DEVICES="cpu", HPO_WORKER=str(BIN / "hpo-worker"),
                      HPO_WORKER_ARGS=" ".join((*FAST, *worker_args)))


def submit(cluster: SlurmCluster, tmp_path: Path, env: dict, *sbatch_args: str) -> str:
    return cluster.sbatch(f"--output={tmp_path}/task-%A_%a.out", f"--chdir={tmp_path}",
                          *sbatch_args, str(SBATCH_SCRIPT), env=env)


def outputs(tmp_path: Path, job: str) -> dict[str, str]:
    """Each task's output file (task id -> text)."""
    return {p.stem.rsplit("_", 1)[1]: p.read_text(errors="replace")
            for p in sorted(tmp_path.glob(f"task-{job}_*.out"))}


def wait_gone(cluster: SlurmCluster, job: str, timeout: float, tmp_path: Path) -> None:
    try:
        wait_for(lambda: not cluster.queued(job), timeout, f"job {job} to leave the queue", 1)
    except AssertionError:
        logs = "\n".join(f"--- task {k}\n{v[-2000:]}" for k, v in outputs(tmp_path, job).items())
        raise AssertionError(f"job {job} still queued after {timeout}s: {cluster.queued(job)}\n"
                             f"{logs}") from None


def task_records(cluster: SlurmCluster, job: str) -> list[dict[str, str]]:
    out = cluster.run("scontrol", "-o", "show", "job", job).stdout.strip().split("\n")
    return [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in out]


def array_task_of(pid: int) -> str:
    """ARRAYJOB_TASK of the SLURM array task a (local) worker process runs in, from its
    environment. Not SLURM_JOB_ID: one task's own job id is the array's id, and `scancel` of
    that id cancels the whole array."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(e.decode(errors="replace").split("=", 1) for e in environ if b"=" in e)
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


def test_array_of_cpu_workers_finishes_the_budget(slurm, pg_url, tmp_path):
    started = time.monotonic()
    env = job_env(pg_url, "array", tmp_path / "artifacts", "--n-trials", "8")
    job = submit(slurm, tmp_path, env, "--array=0-3")
    wait_gone(slurm, job, 240, tmp_path)
    took = time.monotonic() - started

    ts = trials(pg_url, "array")
    states = [t.state for t in ts]
    logs = outputs(tmp_path, job)
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 8, (states, logs)
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert sorted(logs) == ["0", "1", "2", "3"]
    ran_by = {t.user_attrs.get("pid") for t in ts if t.state == TrialState.COMPLETE}
    for task, text in logs.items():
        assert "hpo-worker.sbatch: hpo-worker exited with status 0" in text, text
        assert "Traceback" not in text, text
    records = task_records(slurm, job)
    assert {(r["JobState"], r["ExitCode"]) for r in records} == {("COMPLETED", "0:0")}, records
    assert all(r["Requeue"] == "1" for r in records)  # #SBATCH --requeue
    print(f"\nslurm array: 4 tasks finished 8 trials in {took:.0f}s (submit to empty queue); "
          f"{len(ran_by)} worker processes completed trials")


def _victim(storage: str):
    """A RUNNING trial checkpointed at epoch >= 1 while another task runs a trial of its own."""
    running = [t for t in trials(storage, "cancel") if t.state == TrialState.RUNNING]
    for t in running:
        pid = t.user_attrs.get("pid")
        others = [o for o in running if o.user_attrs.get("pid") not in (None, pid)]
        if (t.user_attrs.get("checkpoint") or {}).get("epoch", 0) >= 1 and others:
            return t
    return None


def test_scancel_of_a_task_requeues_its_trial_and_another_task_resumes_it(slurm, pg_url, tmp_path):
    env = job_env(pg_url, "cancel", tmp_path / "artifacts", "--n-trials", "2", "--epochs", "12",
                  "--train-size", "1500", "--seed", "0")
    job = submit(slurm, tmp_path, env, "--array=0-1")
    doomed = wait_for(lambda: _victim(pg_url), 180,
                      "a task to checkpoint a trial while the other runs its own")
    pid = doomed.user_attrs["pid"]
    task_job = array_task_of(pid)
    # The storage URL reached the worker through the environment, not its command line.
    assert "--storage" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    slurm.run("scancel", task_job)  # plain scancel: SIGTERM to the script and the worker
    cancelled_at = time.monotonic()
    wait_gone(slurm, task_job, 60, tmp_path)
    stopped_in = time.monotonic() - cancelled_at
    cancelled = slurm.job_fields(task_job)
    assert cancelled["JobState"] == "CANCELLED"
    wait_gone(slurm, job, 240, tmp_path)

    logs = outputs(tmp_path, job)
    task = cancelled["ArrayTaskId"]
    assert "SIGTERM received" in logs[task], logs[task]
    assert "hpo-worker exited with status 0" in logs[task], logs[task]  # not killed after KillWait
    ts = trials(pg_url, "cancel")
    assert [t.state for t in ts if t.number == doomed.number] == [TrialState.FAIL]
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == doomed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE, \
        [(t.number, t.state) for t in ts]
    assert retry[0].user_attrs["pid"] != pid  # re-run by the other task
    assert retry[0].params == doomed.params
    assert retry[0].user_attrs["resumed_from_epoch"] >= 1
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    print(f"\nscancel: task {task} stopped {stopped_in:.1f}s after scancel (worker exit 0); trial "
          f"{doomed.number} re-run as {retry[0].number} by the other task from epoch "
          f"{retry[0].user_attrs['resumed_from_epoch']}")


def test_walltime_signal_fails_and_requeues_the_trial_and_exits_zero(slurm, pg_url, tmp_path):
    # SLURM counts time limits in minutes and sends --signal from its periodic time-limit check
    # (every 30 s), up to 30 s early: with --time=1 and B:TERM@10 the script gets SIGTERM 20-50 s
    # into the job, well before the limit. The trial is long enough to be running then.
    env = job_env(pg_url, "walltime", tmp_path / "artifacts", "--n-trials", "1", "--epochs", "300",
                  "--train-size", "4500")
    job = submit(slurm, tmp_path, env, "--array=0", "--time=1", "--signal=B:TERM@10")
    started = time.monotonic()
    wait_gone(slurm, job, 150, tmp_path)
    took = time.monotonic() - started
    log = outputs(tmp_path, job)["0"]
    assert "SIGTERM received" in log, log
    assert "hpo-worker exited with status 0" in log, log
    [record] = task_records(slurm, job)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), record  # not TIMEOUT
    ts = trials(pg_url, "walltime")
    failed = [t for t in ts if t.state == TrialState.FAIL]
    waiting = [t for t in ts if t.state == TrialState.WAITING]
    assert len(failed) == 1 and len(waiting) == 1, [(t.number, t.state) for t in ts]
    assert waiting[0].system_attrs["failed_trial"] == failed[0].number
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    epoch = (waiting[0].user_attrs.get("checkpoint") or {}).get("epoch")
    print(f"\nwalltime: SIGTERM before the 1-minute limit; job ended after {took:.0f}s, exit 0, "
          f"trial {failed[0].number} queued again (checkpoint epoch {epoch})")


@pytest.mark.parametrize("missing", ["HPO_STUDY", "HPO_STORAGE"])
def test_missing_variable_is_one_line_and_exit_2(tmp_path, missing):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update({"HPO_STUDY": "s", "HPO_STORAGE": f"sqlite:///{tmp_path / 'x.db'}",
                "HPO_WORKER": str(BIN / "hpo-worker")})
    del env[missing]
    result = subprocess.run(["bash", str(SBATCH_SCRIPT)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "hpo-artifacts").exists()
