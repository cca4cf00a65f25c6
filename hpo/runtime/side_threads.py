"""Threads for a trial's bookkeeping beside its training: storage round trips stay off its path.

The threads are kept across trials; whatever a trial submitted is waited for before it is told.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

ATTRS, ASIDE = "hpo-attrs", "hpo-aside"


class SideThreads:
    def __init__(self):
        self._threads: dict[str, ThreadPoolExecutor] = {}
        self._pending: list[Future] = []

    def thread(self, name: str) -> ThreadPoolExecutor:
        """One thread per name, started on first use: the attribute writer, the aside thread
        and, on an accelerator, the reporting thread. With the trial's own thread, the
        heartbeat, the reaper and the checkpoint writer they rarely all need a database
        connection at once; hpo.store.storage's pool has five, and a sixth caller waits."""
        if name not in self._threads:
            self._threads[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        return self._threads[name]

    def submit(self, work: Callable[[], object], aside: bool = False) -> Future:
        """Attribute writes go in order on one thread; ``aside``: on a second one (reads and
        artifacts, which need not wait behind the attribute writes)."""
        future = self.thread(ASIDE if aside else ATTRS).submit(work)
        self._pending.append(future)
        return future

    def wait(self, raising: bool = True) -> None:
        """Wait for everything submitted (before the trial is told, or queued again); then,
        with ``raising``, the first error surfaces here, on the trial's own path."""
        pending, self._pending = self._pending, []
        errors = [e for e in (future.exception() for future in pending) if e is not None]
        if raising and errors:
            raise errors[0]
