"""Resumable training state kept in an Optuna artifact store, always read back into host memory.

A checkpoint is written by one worker and may be read by another on a different device (a retried
trial can land on a CPU-only machine or on another GPU index), so loading never honours the
device the tensors were saved from: everything comes back on the CPU, and the trainer
(``hpo.training.train.fit(resume=...)``) moves model and optimizer state to its own device. The RNG states
must stay CPU ByteTensors anyway: ``torch.set_rng_state`` and ``torch.cuda.set_rng_state`` accept
nothing else.

Checkpoints are read with ``torch.load(weights_only=True)``: the artifact folder is often shared
and group-writable, and a full unpickle would run whatever code a planted file names. What a
checkpoint holds (tensors, RNG states as ByteTensors, numbers, strings and plain containers)
loads that way; anything else is refused with one line and the trial starts from epoch 0.

Knows nothing of trials: the caller names the artifact.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import warnings
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
READY_KEY = "_copied"  # hpo.training.snapshots.READY_KEY (not imported: this module loads without torch)


class CheckpointStore:
    """save/load/remove of a state dict under an artifact id, over an Optuna artifact store.

    ``artifact_store`` is anything with ``write(artifact_id, BytesIO)``,
    ``open_reader(artifact_id)`` and ``remove(artifact_id)``, e.g.
    ``optuna.artifacts.FileSystemArtifactStore``.
    """

    def __init__(self, artifact_store) -> None:
        self.artifact_store = artifact_store
        self._writer = None  # one background thread, created on first use
        self._pending: list = []

    def busy(self) -> bool:
        """A save is still being written: the caller skips this checkpoint (and the copy that
        would feed it) rather than queue it, so there is never more than one pending."""
        return any(not f.done() for f in self._pending)

    def save_in_background(self, artifact_id: str, state: dict[str, Any],
                           then: Callable[[], None] | None = None) -> bool:
        """``save`` on a writer thread, then ``then()`` (e.g. record where the checkpoint is):
        serialising and writing stay off the training path. ``state`` must not change
        afterwards (hpo.training.snapshots makes host copies). At most one save is pending: while
        one is, this one is dropped (returns False)."""
        from concurrent.futures import ThreadPoolExecutor

        if self.busy():
            log.debug("checkpoint %s skipped: the previous one is still being written",
                      artifact_id)
            return False
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpo-checkpoint")

        def write() -> None:
            try:
                self.save(artifact_id, state)
                if then is not None:
                    then()
            except Exception as e:  # a missed checkpoint costs a longer re-run, never the trial
                log.warning("checkpoint %s not saved (%s: %s)", artifact_id, type(e).__name__,
                            _first_line(e))

        self._pending = [self._writer.submit(write)]
        return True

    def wait(self) -> None:
        """Block until the background save has finished (before a trial ends or is queued
        again, so that its pointer names a complete checkpoint)."""
        for future in self._pending:
            future.result()
        self._pending = []

    def save(self, artifact_id: str, state: dict[str, Any]) -> None:
        """Serialise ``state`` (tensors anywhere, best already on the CPU) under ``artifact_id``.
        A state whose copies are still in flight carries an event under READY_KEY
        (hpo.training.snapshots.snapshot): waited for here, off the training thread, and not stored."""
        import torch

        ready = state.get(READY_KEY) if isinstance(state, dict) else None
        if ready is not None:
            ready.synchronize()
            state = {k: v for k, v in state.items() if k != READY_KEY}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        self.artifact_store.write(artifact_id, buffer)

    def load(self, artifact_id: str) -> dict[str, Any] | None:
        """The state saved under ``artifact_id`` with every tensor on the CPU, or None (and one
        warning) when it is missing or unreadable."""
        import torch

        try:
            with self.artifact_store.open_reader(artifact_id) as reader:
                blob = reader.read()
            # Never the training device: RNG states must stay CPU ByteTensors, and a checkpoint
            # written on CUDA must load on a machine without it.
            with warnings.catch_warnings():  # e.g. "pickle protocol 4": the line below says it
                warnings.simplefilter("ignore")
                state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            log.warning("checkpoint %s refused: it holds more than tensors and plain data (%s); "
                        "not unpickled, starting from epoch 0", artifact_id, _refused_global(e))
            return None
        except Exception as e:
            log.warning("checkpoint %s unreadable (%s: %s); starting from epoch 0",
                        artifact_id, type(e).__name__, _first_line(e))
            return None
        if not isinstance(state, dict):
            log.warning("checkpoint %s unreadable (holds a %s, not a dict); starting from epoch 0",
                        artifact_id, type(state).__name__)
            return None
        return state

    def remove(self, artifact_id: str) -> None:
        """Delete the checkpoint; a missing one is not an error."""
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            self.artifact_store.remove(artifact_id)
        except ArtifactNotFound:
            pass
        except Exception as e:  # a leftover checkpoint is only disk space; never fail a trial
            log.warning("checkpoint %s not removed (%s: %s)", artifact_id, type(e).__name__,
                        _first_line(e))


def _refused_global(e: BaseException) -> str:
    """What torch's weights-only unpickler refused, from its (many-line) message."""
    text = str(e)
    found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) (\S+)", text)
    if found:
        return f"it names {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return found.group(1)[:200] if found else "not a weights-only file"


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def save_model(path, model, config: dict[str, Any], **extra: Any) -> None:
    """A trained network's weights and its configuration, as ``hpo train -o`` and the best
    trial's artifact store them (``extra``: more plain entries, e.g. its history)."""
    import torch

    torch.save({"config": config, "model": model.state_dict(), **extra}, path)
