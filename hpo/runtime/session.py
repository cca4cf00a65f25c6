"""What one worker process keeps across the studies it runs (a chain runs several): the storage,
the device, the data (loaded once), the artifact store and the stop signal; and running one
study's trials in it."""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time

import optuna

from hpo.studies.study import StudyRequest

# The worker's name: its users read "hpo.runtime.worker[pid]" lines (scripts/demo, the SLURM test).
log = logging.getLogger("hpo.runtime.worker")
GPU_CHECKPOINT_SECONDS = 30.0  # a GPU epoch can take a second, its checkpoint gigabytes
FALLBACK_POINTS = 20_000  # a finite space up to this size gets untried points after a refusal


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How this process runs trials (not study settings: workers of one study may differ)."""

    artifacts: str | None = None
    heartbeat: float = 10
    checkpoint_every: int = 1
    checkpoint_seconds: float | None = None  # None: GPU_CHECKPOINT_SECONDS on a GPU, else 0
    timeout: float | None = None
    lr_window: float | None = None  # a chain's learning-rate window (hpo.studies.lr_window)
    announce_done: bool = True  # say so on stdout when a study's budget is already used

    @classmethod
    def from_args(cls, args) -> "RunOptions":
        return cls(args.artifacts, args.heartbeat, args.checkpoint_every,
                   args.checkpoint_seconds, args.timeout, args.lr_window,
                   announce_done=args.chain is None and args.protocol is None)


class Session:
    def __init__(self, options: RunOptions, device, url: str, storage, stop: threading.Event):
        self.options, self.device, self.url, self.storage, self.stop = (options, device, url,
                                                                        storage, stop)
        self.deadline = None if options.timeout is None else time.monotonic() + options.timeout
        self._data, self._store, self._ready = {}, None, False

    def data(self, settings):
        from hpo.store.storage import open_artifact_store
        from hpo.training import data as data_module
        from hpo.training.train import configure_backend

        # Before the data reaches the device: cuBLAS reads its deterministic workspace setting
        # when CUDA work first needs it.
        configure_backend(self.device, settings.matmul_precision, settings.deterministic)
        key = (settings.dataset, settings.val_fraction, settings.split_seed, settings.train_size)
        if key not in self._data:
            self._data[key] = data_module.load(settings.dataset, self.device,
                                               settings.val_fraction, settings.split_seed,
                                               settings.train_size)
        if not self._ready:
            _warm_up()
            self._store = open_artifact_store(self.options.artifacts, self.url)
            self._ready = True
        return self._data[key], self._store

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def run_study(self, request: StudyRequest) -> None:
        """Join (or create) one study and run its trials until its budget is spent (nothing
        running elsewhere either), the deadline passes or a stop signal."""
        from hpo.runtime.wiring import WiredWorker
        from hpo.studies.samplers import make_pruner, make_sampler
        from hpo.studies.study import open_study

        study, stage, settings, frozen = open_study(self.storage, request, device=self.device)
        # Every worker gets the study's seed: samplers draw per trial from it (hpo.studies.seeding).
        study = optuna.load_study(study_name=request.name, storage=self.storage,
                                  sampler=make_sampler(settings, stage, frozen, settings.seed),
                                  pruner=make_pruner(settings))
        # Polling while others finish the budget is two small queries: often enough that a
        # chain's workers move on together.
        worker = WiredWorker(self.storage, study, self.stop, settings.epochs,
                             wait_interval=min(self.options.heartbeat, 2), deadline=self.deadline)
        if worker.finished():
            if self.options.announce_done:
                print(f"study {request.name!r}: budget of {worker.budget()} trials already used; "
                      "nothing to do")
            else:
                log.info("%s: finished (budget of %d trials used)", request.name, worker.budget())
            return
        data, store = self.data(settings)
        if self.stop.is_set():
            log.warning("stopped during start-up; no trial started")
            return
        log.info("worker on %s joins study %r (stage %s, %s sampler, %s pruner, budget %d trials%s, "
                 "%d epochs, dataset %s, %s%s)", self.device, request.name, stage.name,
                 settings.sampler, settings.pruner, worker.budget(),
                 " (every point of the space once)" if settings.exhaustive else "",
                 settings.epochs, settings.dataset, settings.precision,
                 ", deterministic" if settings.deterministic else "")
        _warn_if_emulated(settings.precision, self.device)
        worker.run(lambda on_epoch: self._runner(study, stage, settings, frozen, data, store,
                                                 on_epoch),
                   fallback_sampler=self._fallback(study, stage, settings, frozen, data))

    def _runner(self, study, stage, settings, frozen, data, store, on_epoch):
        from hpo.runtime.runner import TrialRunner
        from hpo.runtime.trial_spec import TrialSpec
        from hpo.store.artifacts import ArtifactPublisher
        from hpo.studies.counts import count_trials
        from hpo.studies.objectives import parse_objectives
        from hpo.training.checkpoints import CheckpointStore

        objectives = parse_objectives(settings.objectives)
        seconds = self.options.checkpoint_seconds
        if seconds is None:
            seconds = GPU_CHECKPOINT_SECONDS if self.device.type == "cuda" else 0.0
        spec = TrialSpec(stage, frozen, settings.epochs, settings.seed, objectives,
                         prunable=objectives.single and settings.pruner != "none",
                         bf16=settings.precision == "bf16",
                         checkpoint_every=self.options.checkpoint_every,
                         checkpoint_seconds=seconds)
        study_id = self.storage.get_study_id_from_name(study.study_name)
        publisher = ArtifactPublisher(
            store, best_value=lambda: count_trials(self.storage, study_id).best)
        return TrialRunner(spec, data, CheckpointStore(store), publisher, self.stop,
                           on_epoch=on_epoch)

    @staticmethod
    def _fallback(study, stage, settings, frozen, data):
        """Where a proposed point was refused: the grid's next unvisited point, or an untried
        point of a finite space."""
        from hpo.studies.seeding import TrialSeeded
        from hpo.studies.space import possible_points
        from hpo.studies.untried import UntriedPoints

        if settings.sampler == "grid":
            return study.sampler
        points = None if settings.exhaustive else possible_points(
            stage, frozen, FALLBACK_POINTS, data.image_size)
        return TrialSeeded(lambda seed: UntriedPoints(points, seed), settings.seed) \
            if points else None


def _warm_up() -> None:
    from hpo.training.warmup import preload_torch

    preload_torch()
    # Everything loaded so far lives as long as the process: exempt it from the garbage
    # collector's full passes, which otherwise walk torch's millions of objects between trials.
    gc.collect()
    gc.freeze()


def _warn_if_emulated(precision: str, device) -> None:
    """A bf16 study joined from a device without bf16 units runs, but slower than float32."""
    from hpo.training.precision import native_bf16

    if precision == "bf16":
        native, why = native_bf16(device)
        if not native:
            log.warning("this study trains in bf16 but %s: its trials run emulated, slower than "
                        "fp32 would", why)
