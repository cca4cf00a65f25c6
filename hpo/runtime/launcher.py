"""Several worker slots on one machine: one child process per slot, each pinned to its GPU
through CUDA_VISIBLE_DEVICES, supervised here with SIGINT/SIGTERM forwarded.

GPU indices are those this process sees: where CUDA_VISIBLE_DEVICES is already set (SLURM, a
container, by hand), a child gets the entry at that index (a number, a UUID or a MIG id), never
the index itself, which would name another user's GPU."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys

from hpo.errors import HpoError

log = logging.getLogger("hpo.runtime.launcher")
STEP_S = 0.5  # Popen.wait polls in sleeps of at most 50 ms within each step


@dataclasses.dataclass
class Slot:
    index: int
    device: str  # as the child sees it
    visible_devices: str | None  # CUDA_VISIBLE_DEVICES for the child, None for the CPU


def _cuda_count() -> int:
    from hpo.training.cuda_check import cuda_device_count

    return cuda_device_count()


def visible_device(index: str, inherited: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for a child pinned to the GPU this process sees as ``index``."""
    entries = [e.strip() for e in (inherited or "").split(",") if e.strip()]
    if not entries:
        return index
    if int(index) >= len(entries):
        raise HpoError(f"GPU {index} is not among CUDA_VISIBLE_DEVICES={inherited!r}")
    return entries[int(index)]


def cpu_threads(slots: int, env: dict[str, str] | None = None) -> int:
    """Each slot's share of the CPU threads this launcher has: OMP_NUM_THREADS where set (the
    sbatch script sets it to the task's cores), else the cores it may run on (its affinity:
    what SLURM or a container allows, not the machine's count)."""
    given = (os.environ if env is None else env).get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        cores = int(given)
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    return max(1, cores // slots)


def plan_slots(devices: str, jobs_per_device: int) -> list[Slot]:
    """Turn ``--devices`` and ``--jobs-per-device`` into slots, checking every device exists.
    ``auto`` where NVIDIA GPUs are present but torch cannot use them is an error, not a quiet
    fall-back to the CPU (hpo.training.cuda_check); ``cpu`` asks for the CPU and is never refused."""
    if jobs_per_device < 1:
        raise HpoError(f"--jobs-per-device {jobs_per_device} is invalid; allowed: 1 or more")
    names = [d.strip() for d in devices.split(",") if d.strip()]
    if not names:
        raise HpoError(f"--devices {devices!r} is invalid; allowed: auto, cpu, cuda:N "
                       "(comma-separated)")
    if any(name != "cpu" for name in names):
        from hpo.training.cuda_check import check_gpus_usable

        check_gpus_usable()
    if names == ["auto"]:
        count = _cuda_count()
        names = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    gpus: list[str | None] = []
    for name in names:
        if name == "cpu":
            gpus.append(None)
        elif name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
            index = int(name[5:]) if name != "cuda" else 0
            count = _cuda_count()
            if index >= count:
                raise HpoError(f"device {name!r} is not available here "
                               f"({count} CUDA device(s)); valid: auto, cpu, cuda:0..")
            gpus.append(str(index))
        else:
            raise HpoError(f"unknown device {name!r}; valid: auto, cpu, cuda:N (comma-separated)")
    if len(gpus) == 1 and jobs_per_device == 1:
        return [Slot(0, names[0], None)]
    slots = []
    for gpu in gpus:
        for _ in range(jobs_per_device):
            slots.append(Slot(len(slots), "cpu" if gpu is None else "cuda:0", gpu))
    return slots


def _wait_responsive(child: subprocess.Popen) -> int:
    """Wait for a child in short steps, never in one blocking waitpid.

    torch leaves a helper thread in this process, and the kernel may hand a stop signal to it
    (it does while the main thread blocks signals, as subprocess does around each fork). The
    Python handler then runs only when the main thread next takes the GIL back, which one
    blocking waitpid on a worker with hours of training left does only when that worker exits.
    """
    while True:
        try:
            return child.wait(timeout=STEP_S)
        except subprocess.TimeoutExpired:
            pass


def supervise(slots: list[Slot], argv: list[str]) -> int:
    """Run one child per slot; forward stop signals; non-zero if any child failed.

    A stop signal that arrives while children are being started stops the start-up: no more
    children are spawned, and every child already started receives it.
    """
    children: list[subprocess.Popen] = []
    stopping: list[int] = []  # the signal received, if any
    threads = str(cpu_threads(len(slots)))
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")

    def forward(signum, frame):
        log.warning("%s received: stopping %d workers", signal.Signals(signum).name, len(children))
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in slots:
        env = dict(os.environ)
        if slot.visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible_device(slot.visible_devices, inherited)
        # Every slot gets its share of the cores, a GPU slot too: its training loop, data
        # work and checkpoint copies run on them (torch reads OMP_NUM_THREADS at start-up).
        env["OMP_NUM_THREADS"] = threads
        # The last --devices/--jobs-per-device on the command line wins in argparse.
        cmd = [sys.executable, "-m", "hpo.runtime.worker", *argv, "--devices", slot.device,
               "--jobs-per-device", "1"]
        if stopping:
            break
        # Own session: a terminal's Ctrl-C reaches only us, and we forward it exactly once.
        child = subprocess.Popen(cmd, env=env, start_new_session=True)
        children.append(child)
        if stopping:  # the signal came while this child was starting: it was not in the list
            child.send_signal(stopping[0])
        log.info("slot %d: pid %d on %s%s", slot.index, children[-1].pid, slot.device,
                 f" (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})"
                 if slot.visible_devices else "")
    if stopping and len(children) < len(slots):
        log.warning("start-up stopped after %d of %d workers", len(children), len(slots))
    codes = [_wait_responsive(child) for child in children]
    # A child killed by the very signal we forwarded (before its own handler was installed)
    # stopped as asked: it held no trial yet, so it did not fail.
    failed = [(i, c) for i, c in enumerate(codes) if c != 0 and -c not in stopping]
    for i, code in failed:
        log.error("slot %d (pid %d) exited with %d", i, children[i].pid, code)
    return 1 if failed else 0
