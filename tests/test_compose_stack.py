"""docker-compose.yml brought up for real, on the CPU (deploy/compose/cpu.yml), with a private
dockerd and stand-in base images built from Debian's packages (tests/containers.py): the set-up
step creates a two-stage chain, two worker replicas run it on the embedded sample, one replica
killed mid-trial has its trial re-run by the other from its checkpoint, the dashboard and
`hpo status` show the chain, and `down -v` leaves nothing behind.

What it cannot check: the upstream python:3.11-slim and postgres:15 images themselves (stand-ins
take their names), and the NVIDIA reservation (no GPU here). First run on a fresh machine: about
5 minutes of set-up (downloads, debootstrap, a 6 GB project image) and 8 GB under the cache dir;
later runs reuse it.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from pathlib import Path

import pytest
from optuna.trial import TrialState

from benchmarks._pgbouncer import free_port
from tests.containers import PROJECT_IMAGE, Docker, provision
from tests.workers import trials, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROJECT = "hpo-compose-test"
CHAIN = "ct"
# Two stages whose trials all train the chain's base network (no wide layers): short trials.
STAGES = ("stage7_optimizer", "stage8_schedule")
BUDGET = 3
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def docker():
    started = time.monotonic()
    cache = provision()
    provisioned = time.monotonic() - started
    daemon = Docker(cache).start()
    try:
        took = daemon.build_images()
        took = {"provision": provisioned, **took}
        print("\ncompose test set-up: " + ", ".join(f"{k} {v:.0f}s" for k, v in took.items()))
        yield daemon
    finally:
        daemon.stop()


class Stack:
    """`docker compose` on the repository's file plus the CPU override, as the README says."""

    def __init__(self, daemon: Docker, env_file: Path):
        self.daemon, self.env_file = daemon, env_file

    def compose(self, *args: str, check: bool = True, timeout: float = 300):
        return self.daemon.docker(
            "compose", "-p", PROJECT, "--project-directory", str(REPO), "--env-file",
            str(self.env_file), "-f", str(REPO / "docker-compose.yml"),
            "-f", str(REPO / "deploy/compose/cpu.yml"), *args, check=check, timeout=timeout)

    def containers(self, service: str) -> list[dict]:
        ids = self.compose("ps", "-a", "-q", service).stdout.split()
        return json.loads(self.daemon.docker("inspect", *ids).stdout) if ids else []

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={PROJECT}"
        return {kind: self.daemon.docker(*cmd, "--filter", label, "-q").stdout.split()
                for kind, cmd in (("containers", ("ps", "-a")), ("volumes", ("volume", "ls")),
                                  ("networks", ("network", "ls")))}


def _victim(url: str):
    """A RUNNING stage-1 trial checkpointed at epoch >= 1 while another replica runs its own."""
    running = [t for t in trials(url, f"{CHAIN}.{STAGES[0]}") if t.state == TrialState.RUNNING]
    for t in running:
        others = [o for o in running if o.user_attrs.get("host") not in (None, t.user_attrs.get("host"))]
        if (t.user_attrs.get("checkpoint") or {}).get("epoch", 0) >= 1 and others:
            return t
    return None


def test_compose_runs_the_chain_on_two_cpu_workers_and_survives_a_killed_one(docker, tmp_path):
    password = secrets.token_hex(16)
    pg_port, dashboard_port = free_port(), free_port()
    (tmp_path / "data").mkdir()
    env_file = tmp_path / ".env"
    # What a user puts in .env (from .env.example), small enough for two CPU workers here.
    env_file.write_text(f"""\
POSTGRES_PASSWORD={password}
POSTGRES_PORT={pg_port}
DASHBOARD_PORT={dashboard_port}
HPO_CHAIN={STAGES[0]}..{STAGES[-1]}
HPO_CHAIN_NAME={CHAIN}
HPO_N_TRIALS={BUDGET}
HPO_DATASET=cifar10-sample
HPO_EPOCHS=3
HPO_TRAIN_SIZE=300
HPO_SEED=0
HPO_WORKER_ARGS=--heartbeat 1 --grace 6
HPO_DATA_HOST_DIR={tmp_path / 'data'}
""")
    stack = Stack(docker, env_file)
    url = f"postgresql+psycopg2://hpo:{password}@127.0.0.1:{pg_port}/hpo"
    started = time.monotonic()
    try:
        stack.compose("up", "-d", "--no-build", "--scale", "worker=2", timeout=300)
        up_in = time.monotonic() - started
        [setup] = stack.containers("setup")
        assert setup["State"]["ExitCode"] == 0
        setup_log = stack.compose("logs", "--no-log-prefix", "setup").stdout
        assert f"chain '{CHAIN}' created: {STAGES[0]}..{STAGES[-1]}" in setup_log, setup_log

        # Kill one replica (SIGKILL, as a lost machine) one epoch into a stage-1 trial.
        # `docker compose kill` addresses a whole service, so the replica goes by its container.
        doomed = wait_for(lambda: _victim(url), 420,
                          "a replica to checkpoint a stage-1 trial while the other runs its own")
        workers = {c["Config"]["Hostname"]: c for c in stack.containers("worker")}
        assert len(workers) == 2, sorted(workers)
        victim = workers[doomed.user_attrs["host"]]
        [survivor] = [c for h, c in workers.items() if h != doomed.user_attrs["host"]]
        docker.docker("kill", victim["Id"])
        killed_at = time.monotonic() - started

        # The survivor fails the orphaned trial after the heartbeat grace, re-runs it from its
        # checkpoint, finishes stage 1, then stage 2, and exits 0.
        def survivor_exited():
            [state] = [c["State"] for c in stack.containers("worker") if c["Id"] == survivor["Id"]]
            return state if state["Status"] == "exited" else None

        state = wait_for(survivor_exited, 600, "the surviving worker to finish the chain", 2)
        finished_in = time.monotonic() - started
        worker_logs = stack.compose("logs", "--no-log-prefix", "worker").stdout
        assert state["ExitCode"] == 0, worker_logs[-4000:]
        assert f"chain '{CHAIN}' finished" in worker_logs, worker_logs[-4000:]
        [killed] = [c["State"] for c in stack.containers("worker") if c["Id"] == victim["Id"]]
        assert killed["Status"] == "exited" and killed["ExitCode"] == 137, killed

        by_stage = {stage: trials(url, f"{CHAIN}.{stage}") for stage in STAGES}
        for stage, ts in by_stage.items():
            assert len([t for t in ts if t.state in FINISHED]) == BUDGET, (stage, ts)
            assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        stage1 = by_stage[STAGES[0]]
        assert [t.state for t in stage1 if t.number == doomed.number] == [TrialState.FAIL]
        [retry] = [t for t in stage1 if t.system_attrs.get("failed_trial") == doomed.number]
        assert retry.state in FINISHED and retry.params == doomed.params
        assert retry.user_attrs["host"] == survivor["Config"]["Hostname"]
        assert retry.user_attrs["resumed_from_epoch"] >= 1  # from the shared artifacts volume
        assert retry.datetime_complete <= min(t.datetime_start for t in by_stage[STAGES[1]])

        # The dashboard, over HTTP from the host, lists the chain's studies.
        base = f"http://127.0.0.1:{dashboard_port}"
        with urllib.request.urlopen(f"{base}/", timeout=30) as page:
            assert page.status == 200 and "<html" in page.read().decode().lower()
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as answer:
            names = {s["study_name"] for s in json.load(answer)["study_summaries"]}
        assert {CHAIN, *(f"{CHAIN}.{s}" for s in STAGES)} <= names, names

        # `hpo status` in a container of the stack, and in the same image on the host's network
        # with HPO_STORAGE pointing at the published PostgreSQL (as a worker on another machine).
        status = stack.compose("run", "--rm", "--no-deps", "dashboard", "hpo", "status").stdout
        assert f"chain '{CHAIN}': {STAGES[0]}..{STAGES[-1]}" in status and "finished" in status, \
            status
        (tmp_path / "worker.env").write_text(f"HPO_STORAGE={url}\n")
        elsewhere = docker.docker("run", "--rm", "--network", "host", "--env-file",
                                  str(tmp_path / "worker.env"), PROJECT_IMAGE,
                                  "hpo", "status").stdout
        assert f"chain '{CHAIN}': {STAGES[0]}..{STAGES[-1]}" in elsewhere, elsewhere
        assert password not in status + elsewhere
    finally:
        down_started = time.monotonic()
        stack.compose("down", "-v", "--remove-orphans", check=False, timeout=300)
        down_in = time.monotonic() - down_started
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
    print(f"\ncompose stack: up {up_in:.0f}s; replica killed at {killed_at:.0f}s; chain of 2 "
          f"stages x {BUDGET} trials finished at {finished_in:.0f}s; down -v {down_in:.0f}s; "
          f"trial {doomed.number} re-run as {retry.number} from epoch "
          f"{retry.user_attrs['resumed_from_epoch']}")
