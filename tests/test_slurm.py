"""deploy/slurm/hpo-worker.sbatch on a real (one-node) SLURM cluster: an array of CPU workers
finishes a study, and another runs a chain of stages to its end; scancel and the walltime signal
stop a task gracefully, in any stage, and its trial is re-run from its checkpoint before the next
stage starts; a task submitted later joins the chain at its active stage; bad input is one
line."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.cluster import SBATCH_SCRIPT, SlurmCluster, slurm  # noqa: F401  (fixture)
from tests.conftest import BIN
from tests.workers import trials, wait_for, worker_env

pytestmark = pytest.mark.slow
FAST = ("--heartbeat", "1", "--grace", "6")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def job_env(storage: str, study: str, artifacts: Path, *worker_args: str) -> dict[str, str]:
    """What a user exports before sbatch; the storage URL only ever travels in the environment."""
    return worker_env(HPO_STUDY=study, HPO_STORAGE=storage, HPO_ARTIFACTS=str(artifacts),
                      HPO_DEVICES="cpu", HPO_WORKER=str(BIN / "hpo-worker"),
                      HPO_WORKER_ARGS=" ".join((*FAST, "--space", "tiny", *worker_args)))


def chain_env(storage: str, chain: str, name: str, artifacts: Path,
              *worker_args: str) -> dict[str, str]:
    """The same for a chain of the built-in stages, on the embedded sample."""
    env = job_env(storage, "", artifacts)
    del env["HPO_STUDY"]
    env.update(HPO_CHAIN=chain, HPO_CHAIN_NAME=name,
               HPO_WORKER_ARGS=" ".join((*FAST, "--dataset", "cifar10-sample", *worker_args)))
    return env


def submit(cluster: SlurmCluster, tmp_path: Path, env: dict, *sbatch_args: str) -> str:
    # The script asks for 4 cores per task (GPU tasks need them); this test node may have 2.
    return cluster.sbatch(f"--output={tmp_path}/task-%A_%a.out", f"--chdir={tmp_path}",
                          "--cpus-per-task=1", *sbatch_args, str(SBATCH_SCRIPT), env=env)


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


def _victim(storage: str, study: str):
    """A RUNNING trial checkpointed at epoch >= 1 while another task runs a trial of its own."""
    running = [t for t in trials(storage, study) if t.state == TrialState.RUNNING]
    for t in running:
        pid = t.user_attrs.get("pid")
        others = [o for o in running if o.user_attrs.get("pid") not in (None, pid)]
        if (t.user_attrs.get("checkpoint") or {}).get("epoch", 0) >= 1 and others:
            return t
    return None


# Stages whose trials all train the chain's base network (no wide layers): similar, short trials.
STAGES = ("stage6_batchnorm", "stage7_optimizer", "stage8_schedule")


def test_array_runs_the_chain_and_a_task_cancelled_in_stage_2_has_its_trial_rerun_first(
        slurm, pg_url, tmp_path):
    """sbatch --array=0-2 with HPO_CHAIN runs three stages to the end; scancel of one task in
    stage 2 queues its trial again, another task resumes it from its checkpoint, and stage 3
    starts only after that; a task submitted later joins at the active stage."""
    started = time.monotonic()
    env = chain_env(pg_url, f"{STAGES[0]}..{STAGES[-1]}", "c3", tmp_path / "artifacts",
                    "--n-trials", "3", "--train-size", "600", "--epochs", "5", "--seed", "0")
    job = submit(slurm, tmp_path, env, "--array=0-2")
    doomed = wait_for(lambda: _victim(pg_url, f"c3.{STAGES[1]}"), 420,
                      "a task to checkpoint a stage-2 trial while another runs its own")
    pid = doomed.user_attrs["pid"]
    task_job = array_task_of(pid)
    assert "--storage" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    slurm.run("scancel", task_job)  # plain scancel: SIGTERM to the script and the worker
    late = submit(slurm, tmp_path, env, "--array=0")  # joins whatever stage is active
    wait_gone(slurm, task_job, 60, tmp_path)
    assert slurm.job_fields(task_job)["JobState"] == "CANCELLED"
    wait_gone(slurm, job, 420, tmp_path)
    wait_gone(slurm, late, 120, tmp_path)
    took = time.monotonic() - started

    logs, late_log = outputs(tmp_path, job), outputs(tmp_path, late)["0"]
    task = task_job.rsplit("_", 1)[1]
    assert "SIGTERM received" in logs[task], logs[task]
    assert "hpo-worker exited with status 0" in logs[task], logs[task]  # not killed after KillWait
    for other, text in {**{k: v for k, v in logs.items() if k != task}, "late": late_log}.items():
        assert "chain 'c3' finished" in text and "exited with status 0" in text, (other, text)
        assert "Traceback" not in text, text
    by_stage = {stage: trials(pg_url, f"c3.{stage}") for stage in STAGES}
    for stage, ts in by_stage.items():
        assert len([t for t in ts if t.state in FINISHED]) == 3, (stage, [t.state for t in ts])
        assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    stage2 = by_stage[STAGES[1]]
    assert [t.state for t in stage2 if t.number == doomed.number] == [TrialState.FAIL]
    [retry] = [t for t in stage2 if t.system_attrs.get("failed_trial") == doomed.number]
    assert retry.state in FINISHED and retry.params == doomed.params
    assert retry.user_attrs["pid"] != pid and retry.user_attrs["resumed_from_epoch"] >= 1
    assert retry.datetime_complete <= min(t.datetime_start for t in by_stage[STAGES[2]])
    # The late task skipped the finished stage 1 and worked on a later one (or found it done).
    late_pids = {int(p) for p in re.findall(r"hpo\.runtime\.worker\[(\d+)\]", late_log)}
    assert late_pids and f"c3.{STAGES[0]}: finished" in late_log, late_log
    assert not late_pids & {t.user_attrs.get("pid") for t in by_stage[STAGES[0]]}
    print(f"\nslurm chain: 3 tasks + 1 late task ran 3 stages x 3 trials in {took:.0f}s; task "
          f"{task} cancelled in stage 2, its trial {doomed.number} re-run as {retry.number} from "
          f"epoch {retry.user_attrs['resumed_from_epoch']} before stage 3 began")


def test_walltime_signal_in_a_chain_requeues_the_trial_and_a_requeued_task_resumes_it(
        slurm, pg_url, tmp_path):
    # SLURM counts time limits in minutes and sends --signal from its periodic time-limit check
    # (every 30 s), up to 30 s early: with --time=2 and B:TERM@60 the script gets SIGTERM 30-60 s
    # into the job, well before the limit. The trial has a checkpoint then and is still running.
    env = chain_env(pg_url, "stage1_layers..stage2_fc", "w", tmp_path / "artifacts",
                    "--n-trials", "1", "--epochs", "300", "--train-size", "600")
    job = submit(slurm, tmp_path, env, "--array=0", "--time=2", "--signal=B:TERM@60")
    started = time.monotonic()
    wait_gone(slurm, job, 150, tmp_path)
    took = time.monotonic() - started
    log = outputs(tmp_path, job)["0"]
    assert "SIGTERM received" in log, log
    assert "hpo-worker exited with status 0" in log, log
    assert "chain 'w': stopped in w.stage1_layers" in log, log
    [record] = task_records(slurm, job)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), record  # not TIMEOUT
    ts = trials(pg_url, "w.stage1_layers")
    failed = [t for t in ts if t.state == TrialState.FAIL]
    waiting = [t for t in ts if t.state == TrialState.WAITING]
    assert len(failed) == 1 and len(waiting) == 1, [(t.number, t.state) for t in ts]
    assert waiting[0].system_attrs["failed_trial"] == failed[0].number
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    epoch = (waiting[0].user_attrs.get("checkpoint") or {}).get("epoch")
    assert epoch is not None and epoch >= 1, waiting[0].user_attrs

    # `scontrol requeue` (as after a pre-emption): the task starts again, joins the chain at its
    # active stage and resumes the queued trial from its checkpoint.
    slurm.run("scontrol", "requeue", f"{job}_0")
    resumed = wait_for(lambda: [t for t in trials(pg_url, "w.stage1_layers")
                                if t.number == waiting[0].number
                                and t.state == TrialState.RUNNING
                                and t.user_attrs.get("resumed_from_epoch")], 150,
                       "the requeued task to resume the queued trial")[0]
    assert resumed.user_attrs["resumed_from_epoch"] == epoch
    slurm.run("scancel", job)
    wait_gone(slurm, job, 90, tmp_path)
    assert not trials(pg_url, "w.stage2_fc")  # stage 2 waits for stage 1's budget
    print(f"\nwalltime: SIGTERM before the 2-minute limit; job ended after {took:.0f}s, exit 0, "
          f"trial {failed[0].number} queued again (checkpoint epoch {epoch}); the requeued task "
          f"resumed it from epoch {epoch}")


def test_script_asks_for_enough_cores_for_a_gpu_task():
    """A GPU task's training loop, checkpoint writer, heartbeat and stale-trial check need more
    than one core (defect 8 of issue 23)."""
    asked = re.findall(r"^#SBATCH --cpus-per-task=(\d+)$", SBATCH_SCRIPT.read_text(), re.M)
    assert asked and int(asked[0]) >= 4, asked


@pytest.mark.parametrize("given", [("HPO_STUDY", "HPO_CHAIN"), ()], ids=["both", "neither"])
def test_study_and_chain_both_or_neither_is_one_line_and_exit_2(tmp_path, given):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    env.update({"HPO_STORAGE": f"sqlite:///{tmp_path / 'x.db'}",
                "HPO_WORKER": str(BIN / "hpo-worker")})
    env.update({"HPO_STUDY": "stage1_layers", "HPO_CHAIN": "all"} if given else {})
    result = subprocess.run(["bash", str(SBATCH_SCRIPT)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HPO_STUDY" in lines[0] and "HPO_CHAIN" in lines[0], result.stderr
    assert ("both" in lines[0]) == bool(given), lines[0]
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "hpo-artifacts").exists()


@pytest.mark.parametrize("missing", ["HPO_STORAGE"])
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
