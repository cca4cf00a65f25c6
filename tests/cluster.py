"""A real one-node SLURM cluster and a real PgBouncer for the cluster tests, started once per
session as private daemons (own config, ports, state and munge socket in a temp folder) and
stopped by pid afterwards; nothing of the machine's own configuration is touched.

Debian's slurm-wlm, munge and pgbouncer are installed by scripts/provision-cluster when missing
(root and apt-get needed); where that is impossible the tests using these fixtures are skipped
with the reason. Once the packages are there, a daemon that does not come up is a failure.

Import the fixtures into a test module: ``from tests.cluster import slurm  # noqa: F401``.
The PgBouncer starter itself lives in ``benchmarks/_pgbouncer.py``, shared with the benchmarks.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks._pgbouncer import PgBouncer, PgBouncerError, free_port  # noqa: F401  (re-exported)
from benchmarks._pgbouncer import stop_process as _stop
from benchmarks._pgbouncer import tail as _tail
from benchmarks._pgbouncer import which as _which
from tests.conftest import REPO

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "munged")
PGBOUNCER_BINARIES = ("pgbouncer",)
SBATCH_SCRIPT = REPO / "deploy" / "slurm" / "hpo-worker.sbatch"


def ensure_installed(binaries: tuple[str, ...]) -> None:
    """Install the cluster packages with the project's own script, or skip saying why not."""
    if all(_which(b) for b in binaries):
        return
    missing = ", ".join(b for b in binaries if not _which(b))
    if os.geteuid() != 0:
        pytest.skip(f"{missing} not installed and not root: run scripts/provision-cluster as root")
    if not shutil.which("apt-get"):
        pytest.skip(f"{missing} not installed and no apt-get to install them with")
    result = subprocess.run([str(REPO / "scripts" / "provision-cluster")], capture_output=True,
                            text=True, timeout=900)
    if result.returncode != 0 or not all(_which(b) for b in binaries):
        pytest.skip(f"could not install {missing} (scripts/provision-cluster exited "
                    f"{result.returncode}): {(result.stderr or result.stdout).strip()[-500:]}")


class SlurmCluster:
    """munged, slurmctld and slurmd as private foreground processes; one node, this machine.

    Node ``$(hostname -s)`` with all CPUs, one default partition that lets up to 4 jobs share a
    core; process tracking by parent pid and no cgroups (works in containers); no accounting, so
    no sacct: a finished job's state and exit code stay in ``scontrol show job`` for 10 minutes.
    Job credentials live 20 s instead of 120, which is also how long a requeued job waits
    before it may start again.
    """

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="hpo-slurm-"))
        self.dir.chmod(0o755)  # munged (the munge user) must reach its socket folder
        self.conf = self.dir / "slurm.conf"
        self.processes: dict[str, subprocess.Popen] = {}
        self.files: list = []  # the daemons' stderr
        self.node = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # munge: its own key and socket, so a machine's munged (if any) is neither used nor disturbed
    def _start_munge(self) -> Path:
        public = self.dir / "munge"
        private = public / "private"
        private.mkdir(parents=True)
        public.chmod(0o755)  # munged insists: socket folder executable by all,
        private.chmod(0o700)  # key, seed and log private to the munge user
        key = private / "munge.key"
        if _which("mungekey"):
            subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True,
                           capture_output=True, timeout=30)
        else:
            key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        subprocess.run(["chown", "-R", "munge:munge", str(public)], check=True, timeout=30)
        socket_path = public / "munge.socket"
        self.processes["munged"] = subprocess.Popen(
            [_which("munged"), "--foreground", f"--socket={socket_path}", f"--key-file={key}",
             f"--pid-file={public / 'munged.pid'}", f"--log-file={private / 'munged.log'}",
             f"--seed-file={private / 'munged.seed'}"],
            user="munge", group="munge", stdout=subprocess.DEVNULL,
            stderr=self._output("munged"))
        self._wait(lambda: socket_path.exists(), 20, "munged", self.dir / "munged.out")
        return socket_path

    def _output(self, daemon: str):
        self.files.append(open(self.dir / f"{daemon}.out", "w"))
        return self.files[-1]

    def _write_conf(self, munge_socket: Path) -> None:
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir()
        cpus = os.cpu_count() or 1
        self.conf.write_text(f"""\
ClusterName=hpotest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=20
CredType=cred/munge
StateSaveLocation={self.dir / 'state'}
SlurmdSpoolDir={self.dir / 'spool'}
SlurmctldPidFile={self.dir / 'slurmctld.pid'}
SlurmdPidFile={self.dir / 'slurmd.pid'}
SlurmctldLogFile={self.dir / 'slurmctld.log'}
SlurmdLogFile={self.dir / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
""")
        (self.dir / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n")

    def _wait(self, ready, timeout: float, what: str, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [name for name, p in self.processes.items() if p.poll() is not None]
            if dead:
                break
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"{what} did not come up within {timeout:.0f}s; its log ends:\n{_tail(log)}")

    def start(self) -> SlurmCluster:
        self._write_conf(self._start_munge())
        daemons = {"slurmctld": ["-D", "-c", "-i"], "slurmd": ["-D", "-N", self.node]}
        for daemon, args in daemons.items():
            self.processes[daemon] = subprocess.Popen(
                [_which(daemon), *args], env=self.env, stdout=subprocess.DEVNULL,
                stderr=self._output(daemon))
        self._wait(lambda: self.node_state() == "idle", 60, "slurmctld/slurmd",
                   self.dir / "slurmctld.log")
        return self

    def node_state(self) -> str:
        result = self.run("sinfo", "-h", "-n", self.node, "-o", "%t", check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    def run(self, *args: str, env: dict | None = None, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        result = subprocess.run([_which(args[0]), *args[1:]], env={**self.env, **(env or {})},
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr.strip()}")
        return result

    def sbatch(self, *args: str, env: dict | None = None) -> str:
        """Submit; returns the job id (an array's job id for --array)."""
        return self.run("sbatch", "--parsable", *args, env=env).stdout.strip().split(";")[0]

    def queued(self, job_id: str) -> list[str]:
        """Jobs of job_id (all tasks of an array) still pending or running."""
        result = self.run("squeue", "-h", "-j", job_id, "-o", "%i %T", check=False)
        return result.stdout.split("\n") if result.stdout.strip() else []

    def job_fields(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, ...), kept MinJobAge after the end."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout.split("\n")[0]
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def stop(self) -> None:
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            subprocess.run([_which("scancel"), "--full", "--user", "root"], env=self.env,
                           capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            _stop(self.processes.get(name))
        for f in self.files:
            f.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm():
    """A running one-node SLURM cluster for this session (skipped where it cannot be had)."""
    if os.geteuid() != 0:
        pytest.skip("SLURM tests start slurmctld/slurmd/munged and need root")
    ensure_installed(SLURM_BINARIES)
    cluster = SlurmCluster().start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def pgbouncer(pg_server):
    """PgBouncer (transaction pooling, 10 server connections per database) for this session."""
    ensure_installed(PGBOUNCER_BINARIES)
    bouncer = PgBouncer(pg_server.url)
    try:
        bouncer.start()
    except PgBouncerError as e:
        bouncer.close()
        pytest.fail(str(e))
    yield bouncer
    bouncer.close()
