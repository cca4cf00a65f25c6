"""Tuning by hand, replayed: ``hpo-worker --protocol FILE`` runs a list of sweeps as coordinate
descent, the way the course reports tuned (``../shared/HAND_PROTOCOL.md``).

A protocol is data: a JSON file with a starting configuration and an ordered list of sweeps,
each a small grid of knobs (``hpo.studies.protocol_knobs``). Sweep ``i`` of protocol ``P`` is the study
``P.<ii>_<sweep>``: every point of its grid applied to the best so far (the best validation
accuracy of every earlier sweep, ties to the earlier run), minus any configuration already
trained by an earlier sweep (the best so far among them: a person re-uses a result they have).
All its runs are queued when the study is set up and trained to their full epochs, no pruning,
by the ordinary worker loop, so any number of workers share a sweep, a killed worker's run is
re-queued by the reaper, and starting the same command again goes on where it stopped. A sweep
starts once the one before has finished (nothing running or queued). No torch here.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import optuna

from hpo.studies import protocol_knobs
from hpo.studies.protocol_file import Protocol, Sweep, load
from hpo.studies.settings import RESULT_FLAGS, SEARCH_FLAGS, flag
from hpo.store import study_records
from hpo.training.config import from_dict, load_json
from hpo.errors import HpoError
from search_spaces import Stage

log = logging.getLogger("hpo.studies.protocol")

# What every worker of one protocol must agree on: the settings that shape results; it decides
# the search settings (budget, sampler, pruner) itself.
SHARED = RESULT_FLAGS

def study_name(name: str, index: int, sweep: Sweep) -> str:
    return f"{name}.{index + 1:02d}_{sweep.name}"


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ignore = ("epochs", "seed")  # the run's settings: one value for every run of a protocol
    return {k: v for k, v in a.items() if k not in ignore} == \
        {k: v for k, v in b.items() if k not in ignore}


def runs(sweep: Sweep, incumbent: dict[str, Any], measured: bool,
         trained: list[dict[str, Any]], image_size: int) -> list[tuple[str, dict[str, Any]]]:
    """The sweep's new runs from the best so far, as (label, knob values): every point of its
    grid, less those that train a configuration already trained (the best so far included,
    once ``measured``), twins within the sweep, and networks the images cannot carry."""
    from hpo.training.geometry import is_possible

    known = list(trained) + ([incumbent] if measured else [])
    chosen = []
    for values in itertools.product(*sweep.knobs.values()):
        knobs = dict(zip(sweep.knobs, values))
        config = turn(incumbent, knobs)
        try:
            from_dict(config)
        except HpoError as e:
            log.warning("%s: %s is left out: %s", sweep.name, protocol_knobs.label(knobs), e)
            continue
        if not is_possible(config, image_size):
            log.warning("%s: %s is left out: its feature maps shrink below 1x1 on %dx%d images",
                        sweep.name, protocol_knobs.label(knobs), image_size, image_size)
            continue
        if any(_same(config, other) for other in known):
            continue
        known.append(config)
        chosen.append((protocol_knobs.label(knobs), knobs))
    return chosen


def turn(config: dict[str, Any], knobs: dict[str, Any]) -> dict[str, Any]:
    for knob, value in knobs.items():
        config = protocol_knobs.apply(config, knob, value)
    return config


def sweep_stage(name: str, sweep: Sweep, chosen: list[tuple[str, dict[str, Any]]],
                epochs: int) -> Stage:
    """The sweep as a stage: one categorical parameter ``run`` naming each new run."""
    by_label = dict(chosen)

    def suggest(trial, frozen):
        return turn(frozen, by_label[trial.suggest_categorical("run", list(by_label))])

    return Stage(name=name, builds_on=None,
                 description=f"protocol sweep {sweep.name}: " + ", ".join(sweep.knobs),
                 n_trials=len(chosen), epochs=epochs, suggest=suggest,
                 grid=lambda frozen: {"run": list(by_label)})


def best_so_far(storage, names: list[str]) -> tuple[str, optuna.trial.FrozenTrial] | None:
    """(study, trial): the best finished run of these studies (on ties the earlier study, then
    the earlier trial), or None."""
    from hpo.studies.freezing import best_complete_trial

    best = None
    for name in names:
        trial = best_complete_trial(optuna.load_study(study_name=name, storage=storage))
        if trial is not None and (best is None or trial.values[0] > best[1].values[0]):
            best = (name, trial)
    return best


def trained_configs(storage, names: list[str]) -> list[dict[str, Any]]:
    S = optuna.trial.TrialState
    return [t.user_attrs["config"] for name in names
            for t in optuna.load_study(study_name=name, storage=storage).get_trials(
                deepcopy=False, states=(S.COMPLETE, S.PRUNED)) if "config" in t.user_attrs]


def wait_until_finished(storage, name: str) -> None:
    """A sweep freezes the final best of those before it: wait for the last one's set-up, then
    for its runs (running or queued, a killed worker's retry included)."""
    import time

    from hpo.studies.freezing import wait_for_predecessor
    from hpo.studies.study import SETUP_WAIT

    study = optuna.load_study(study_name=name, storage=storage)
    start = time.monotonic()
    while "stage" not in study.user_attrs:
        if time.monotonic() - start > SETUP_WAIT:
            raise HpoError(f"study {name!r} exists but its set-up never finished")
        time.sleep(0.5)
    wait_for_predecessor(study, name, freeze_best_so_far=False)


def open_record(storage, name: str, protocol: Protocol, flags: dict[str, Any],
                device=None) -> dict[str, Any]:
    """Create the protocol's record (the study ``name``, no trials) or join it; a worker whose
    sweeps or settings differ is refused by name. The creator decides ``--precision auto`` for
    its ``device``, once, for every sweep."""
    from hpo.training.precision import resolve

    wanted = {"protocol": protocol.record(),
              **{k: flags.get(k) for k in SHARED}}
    if wanted["epochs"] is None:
        wanted["epochs"] = protocol.epochs
    try:
        record = optuna.create_study(study_name=name, storage=storage)
    except optuna.exceptions.DuplicatedStudyError:
        record = optuna.load_study(study_name=name, storage=storage)
    else:
        wanted["precision"] = resolve(wanted["precision"], device)[0]
        record.set_user_attr("description", f"protocol {protocol.source}: its sweeps; each is "
                                            f"the study {name}.<nn>_<sweep>")
        study_records.write(storage, name, "protocol", wanted)
        record.set_user_attr("protocol_marker", protocol.source)  # last: joiners wait for it
        return wanted
    stored = _wait_for_record(storage, name)
    if stored["protocol"] != wanted["protocol"]:
        raise HpoError(f"protocol {name!r} was created from other sweeps than {protocol.source} "
                       "(use the same file, or another --chain-name)")
    for key in SHARED:
        if wanted[key] not in (None, "auto") and key in flags and flags[key] is not None \
                and stored.get(key) != wanted[key]:
            raise HpoError(f"protocol {name!r} was created with {flag(key)} "
                           f"{stored.get(key)!r}; got {wanted[key]!r} (use the same flags, or "
                           "another --chain-name)")
    return stored


def _wait_for_record(storage, name: str) -> dict[str, Any]:
    import time

    start = time.monotonic()
    while True:
        attrs = study_records.read(storage, name)
        if isinstance(attrs.get("protocol"), dict):
            return attrs["protocol"]
        if "stage" in attrs or "chain" in attrs or time.monotonic() - start > 60:
            raise HpoError(f"study {name!r} exists and is not a protocol; choose another "
                           "--chain-name")
        time.sleep(0.5)


def run_protocol(session, protocol: Protocol, name: str, flags: dict[str, Any],
                 from_file: str | None = None) -> None:
    """Each sweep in turn, from the best so far, through the ordinary worker loop."""
    from hpo.training.config import config_from_document
    from hpo.training.data import image_size
    from hpo.studies.study import StudyRequest

    storage = session.storage
    record = open_record(storage, name, protocol, flags, session.device)
    flags = {k: record[k] for k in SHARED}
    flags.update(pruner="none", sampler="tpe", n_trials=None)  # every run to its full epochs
    start = dict(protocol.start)
    if from_file:  # --from: the file's network instead of the protocol's start
        start = config_from_document(load_json(from_file), from_file).to_dict()
    start["epochs"] = flags["epochs"]
    size = image_size(flags["dataset"] or "cifar10-sample")
    before: list[str] = []
    for i, sweep in enumerate(protocol.sweeps):
        study = study_name(name, i, sweep)
        if before:
            wait_until_finished(storage, before[-1])
        best = best_so_far(storage, before)
        incumbent = dict(best[1].user_attrs["config"]) if best is not None else dict(start)
        chosen = runs(sweep, incumbent, best is not None, trained_configs(storage, before), size)
        if not chosen:
            log.info("protocol %r: sweep %d (%s) has no new run: every point was trained "
                     "already", name, i + 1, sweep.name)
            continue
        origin = ({"study": best[0], "trial": best[1].number,
                   "value": best[1].values[0]} if best is not None else
                  {"defaults": True, "base": "protocol", "source": protocol.source,
                   "reason": "its first sweep"})
        log.info("protocol %r: sweep %d of %d, %s (%d runs)", name, i + 1, len(protocol.sweeps),
                 study, len(chosen))
        stage = sweep_stage(f"{name}.{sweep.name}", sweep, chosen, flags["epochs"])
        session.run_study(StudyRequest(study, stage, dict(flags), default_n_trials=len(chosen),
                                       base=(incumbent, origin)))
        if session.stop.is_set() or session.out_of_time():
            log.info("protocol %r: stopped in %s; start the same command again to go on", name,
                     study)
            return
        before.append(study)
    best = best_so_far(storage, before)
    if best is not None:
        log.info("protocol %r finished: best %.4f (%s trial %d); export it with: hpo export "
                 "--study %s", name, best[1].values[0], best[0], best[1].number, best[0])


def check_flags(args, parser) -> None:
    """``hpo-worker --protocol``: flags that do not apply are refused, and the file is read and
    checked before any worker starts (one line naming the first bad knob or value, exit 2)."""
    for option in [flag(name) for name in SEARCH_FLAGS] + ["--space", "--after",
                                                           "--freeze-best-so-far"]:
        if getattr(args, option[2:].replace("-", "_")) not in (None, False):
            parser.error(f"{option} does not apply to --protocol: every run of its sweeps is "
                         "queued and trained to its full epochs, no pruning")
    try:
        load(args.protocol)
    except HpoError as e:
        parser.error(str(e))
