"""CPU time from /proc (Linux): of single processes, of a PostgreSQL server's whole process tree,
and of the machine, so that a benchmark can say who used the cores during a time window.

A server's CPU is counted exactly, backends that came and went included: the postmaster's own
time plus the time its exited children left it (``cutime``/``cstime``, added when it reaps them)
plus the time of its live children (backends, walwriter, checkpointer, autovacuum ...).
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, ...]; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def process_cpu(pid: int, children: bool = False) -> float | None:
    """User + system seconds of a process (all its threads); with ``children``, plus what its
    reaped children left it. None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / TICK


def children_of(ppid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == ppid:
                found.append(int(entry))
    return found


def server_cpu(postmaster: int, exclude: tuple[int, ...] = ()) -> float | None:
    """CPU seconds of a PostgreSQL server so far: postmaster, reaped and live children, less the
    live children in ``exclude`` (a monitoring connection's backend)."""
    total = process_cpu(postmaster, children=True)
    if total is None:
        return None
    for pid in children_of(postmaster):
        if pid not in exclude:
            total += process_cpu(pid) or 0.0
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, capacity) CPU seconds of the whole machine since boot, from /proc/stat; capacity is
    wall time times the number of CPUs (busy excludes idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    capacity = sum(values)
    return (capacity - idle - iowait) / TICK, capacity / TICK


def postmaster_pid(data_directory: str | Path) -> int | None:
    """The server's pid from its data directory's postmaster.pid (None if unreadable)."""
    try:
        return int((Path(data_directory) / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
