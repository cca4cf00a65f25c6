"""Creating and joining a stage study: its fixed settings, the frozen base config, sampler, pruner.

The first worker to reach a study writes its settings and the frozen config into the study's
user attributes; every later worker, from any machine, reads them back, so all trials of a study
share one base and one budget. Creation is race-free: Optuna's create_study(load_if_exists=True)
relies on the database's unique study name.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import Any

import optuna

from hpo.training.config import config_from_document, load_json
from hpo.store import study_records
from hpo.studies.chain import BASE as CHAIN_BASE
from hpo.errors import HpoError
from hpo.views.notes import defaults_source, write_stage_note
from hpo.studies.objectives import parse_objectives
from hpo.studies.seeding import TrialSeeded
from search_spaces import DEFAULTS, Stage, get_stage

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid", "gp", "cmaes")
PRUNERS = ("median", "hyperband", "none")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision
SETUP_WAIT = 60.0  # seconds a joining worker waits for the creating worker to finish set-up
FOREIGN_WAIT = 3.0  # with no sign of an hpo creator by then, the study was made outside hpo


@dataclasses.dataclass
class Settings:
    """What every trial of one study shares. Stored in the study; flags must agree with it."""

    stage: str
    dataset: str = "cifar10-sample"
    epochs: int = 10
    train_size: int | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    n_trials: int = 30  # the study-wide budget; raised with hpo create-study --update
    sampler: str = "tpe"
    pruner: str = "median"
    objectives: str = "accuracy"
    # fp32 or bf16 (hpo.training.precision), decided when the study is created: a property of the
    # results, so of the study; "auto" never stays stored.
    precision: str = "fp32"
    matmul_precision: str = "highest"
    deterministic: bool = False  # cuDNN's deterministic algorithms: exact re-trains on a GPU
    exhaustive: bool = False  # a finite space no larger than the budget: every point once


CREATED_BY = "created_by"  # user attribute written first when hpo sets a study up
SETTING_FLAGS = ("dataset", "epochs", "train_size", "val_fraction", "seed", "n_trials", "sampler",
                 "pruner", "objectives", "precision", "matmul_precision", "deterministic")


def settings_flags(args) -> dict[str, Any]:
    """The Settings fields a command line gave (None where it did not). --precision auto is
    kept as "auto": a new study resolves it, an existing one keeps what it stored."""
    from hpo.training.precision import flag_value

    flags = {name: getattr(args, name, None) for name in SETTING_FLAGS}
    flags["precision"] = flag_value(args)
    if flags["deterministic"] is False:  # a store_true flag not given
        flags["deterministic"] = None
    return flags


def check_choice(kind: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise HpoError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
    return value


def check_flags(flags: dict[str, Any]) -> None:
    """Values that are wrong whatever the study: checked before anything is stored."""
    from hpo.training.precision import PRECISIONS

    for kind, valid in (("sampler", SAMPLERS), ("pruner", PRUNERS),
                        ("matmul_precision", MATMUL_PRECISIONS), ("precision", PRECISIONS)):
        if flags.get(kind) is not None:
            check_choice(kind.replace("_", "-"), flags[kind], valid)
    if flags.get("objectives") is not None:
        objectives = parse_objectives(flags["objectives"])
        if not objectives.single and flags.get("pruner") not in (None, "none"):
            raise HpoError(f"--pruner {flags['pruner']} is invalid with --objectives "
                           f"{objectives.name}; allowed: none (Optuna's pruners are "
                           "single-objective)")
    for name, least in (("n_trials", 0), ("epochs", 1), ("train_size", 1)):
        if flags.get(name) is not None and flags[name] < least:
            raise HpoError(f"--{name.replace('_', '-')} {flags[name]} is invalid; allowed: "
                           f"{least} or more")
    if flags.get("val_fraction") is not None and not 0 < flags["val_fraction"] < 1:
        raise HpoError(f"--val-fraction {flags['val_fraction']} is invalid; allowed: 0 < f < 1")
    if flags.get("dataset") is not None:
        from hpo.training.data import check_dataset_name  # imports torch: only when there is a dataset

        check_dataset_name(flags["dataset"])


def preflight(url: str, study_name: str, space: str | None, flags: dict[str, Any],
              after: str | None, from_file: str | None) -> None:
    """Everything about a worker's or create-study's request that can be checked without the
    database, checked before it is opened (opening an embedded one creates its file)."""
    from hpo.store.storage import parse_url, sqlite_file

    check_flags(flags)
    parse_url(url)
    if any(flags.get(k) is not None for k in ("dataset", "val_fraction", "train_size")):
        from hpo.training.data import check_split

        check_split(flags.get("dataset") or Settings.dataset,
                    flags.get("val_fraction") or Settings.val_fraction, flags.get("train_size"))
    if space is not None:
        get_stage(space)
    if from_file:
        config_from_document(load_json(from_file), from_file)
    path = sqlite_file(url)
    if path is not None and not path.exists():  # a new embedded database: no study in it yet
        if space is None:
            get_stage(study_name)
        if after:
            raise HpoError(f"--after {after!r}: no such study; {path} does not exist yet")


def new_settings(stage: Stage, flags: dict[str, Any], frozen: dict[str, Any],
                 default_n_trials: int | None = None, device=None, image_size: int | None = None
                 ) -> tuple[Settings, list[dict[str, Any]] | None]:
    """A new study's settings (flags over the stage's defaults), and the points to enqueue when
    its space is finite and no larger than the budget (then the budget is the space's size).
    ``--precision auto`` is decided here, once, for ``device`` (None: this machine's first
    GPU, else its CPU). ``image_size`` given (``hpo stages``): the dataset is not read."""
    from hpo.training.precision import resolve
    from hpo.studies.space import possible_points

    given = {k: v for k, v in flags.items() if v is not None}
    given["precision"], why = resolve(given.get("precision"), device)
    log.info("%s trains in %s (%s)", stage.name, given["precision"], why)
    size = lambda: image_size or _image_size(settings.dataset)  # noqa: E731
    settings = Settings(**{"stage": stage.name, "epochs": stage.epochs,
                           "n_trials": default_n_trials or stage.n_trials, **given})
    if not parse_objectives(settings.objectives).single:
        settings.pruner = "none"
    if settings.sampler == "grid":
        if flags.get("n_trials") is None:  # every distinct, possible point once
            settings.n_trials = grid_size(stage, frozen, size())
        return settings, None
    points = possible_points(stage, frozen, settings.n_trials, size())
    if points is not None:
        if len(points) < settings.n_trials:
            log.info("%s: its space has %d possible points, fewer than the budget of %d: each is "
                     "trained once", stage.name, len(points), settings.n_trials)
        settings.n_trials, settings.exhaustive = len(points), True
    return settings, points


def _image_size(dataset: str) -> int:
    from hpo.training.data import image_size

    return image_size(dataset)


def joined_settings(study_name: str, stored: dict[str, Any], flags: dict[str, Any]) -> Settings:
    """An existing study's settings; a flag that contradicts them is refused, naming both.
    A study from before a setting existed ran with what is now its default."""
    from hpo.training.precision import from_record

    stored = {"deterministic": False, **stored, "precision": from_record(stored)}
    for key, value in flags.items():
        if value is None or key not in stored or stored[key] == value:
            continue
        if key == "precision" and value == "auto":
            continue  # whatever the study decided when it was created
        if key == "n_trials":
            raise HpoError(f"study {study_name!r} has a budget of {stored[key]} trials; got "
                           f"--n-trials {value} (change it for every worker with: hpo "
                           f"create-study --study {study_name} --n-trials {value} --update)")
        raise HpoError(f"study {study_name!r} was created with {key.replace('_', '-')}="
                       f"{stored[key]!r}; got {value!r} (start a new study to change it)")
    known = {f.name for f in dataclasses.fields(Settings)}
    return Settings(**{k: v for k, v in stored.items() if k in known})


def frozen_from_predecessor(storage, stage: Stage, after: str | None, from_file: str | None,
                            freeze_best_so_far: bool = False, chain_base: bool = False
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(base config, where it came from): an export file, the predecessor's best trial, or
    defaults (a chain's own starting point, ``hpo.studies.chain.BASE``, where ``chain_base``)."""
    def defaults(reason: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if chain_base:
            return dict(CHAIN_BASE), {"defaults": True, "base": "chain", "reason": reason}
        return dict(DEFAULTS), {"defaults": True, "reason": reason}

    if from_file:
        doc = load_json(from_file)
        config = config_from_document(doc, from_file).to_dict()
        return config, {"file": from_file, "study": doc.get("study"), "trial": doc.get("trial")}
    predecessor = after or stage.builds_on
    if predecessor is None:
        return defaults(f"{stage.name} builds on no stage")
    names = {s.study_name for s in storage.get_all_studies()}
    if predecessor not in names:
        if after:
            raise HpoError(f"--after {after!r}: no such study; studies here: "
                           f"{', '.join(sorted(names)) or 'none'}")
        return defaults(f"no study {predecessor!r}")
    prev = optuna.load_study(study_name=predecessor, storage=storage)
    wait_for_predecessor(prev, stage.name, freeze_best_so_far)
    best = best_complete_trial(prev)
    if best is None:
        return defaults(f"{predecessor!r} has no finished trial")
    log.info("freezing everything %s does not search to %s trial %d (value %.4f)",
             stage.name, predecessor, best.number, best.values[0])
    return dict(best.user_attrs["config"]), {"study": predecessor, "trial": best.number,
                                             "value": best.values[0]}


PREDECESSOR_POLL = 5.0  # seconds between looks at a predecessor that still runs


def wait_for_predecessor(prev: optuna.Study, stage_name: str, freeze_best_so_far: bool) -> None:
    """A stage freezes its predecessor's final best: while the predecessor still has trials
    running or queued, wait for them (saying so), unless told to freeze its best so far."""
    active = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    said = False
    while True:
        unfinished = prev.get_trials(deepcopy=False, states=active)
        if not unfinished:
            return
        if freeze_best_so_far:
            log.warning("%s: freezing the best so far of %r although %d of its trials are still "
                        "running or queued (--freeze-best-so-far)", stage_name, prev.study_name,
                        len(unfinished))
            return
        if not said:
            log.warning("%s: waiting for %r to finish (%d trial(s) running or queued) so as to "
                        "freeze its final best; --freeze-best-so-far freezes its best now",
                        stage_name, prev.study_name, len(unfinished))
            said = True
        time.sleep(PREDECESSOR_POLL)


def best_complete_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The COMPLETE trial with a stored config and the highest first objective (ties: the
    earlier trial), or None."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.values and "config" in t.user_attrs]
    return max(done, key=lambda t: (t.values[0], -t.number)) if done else None


def _wait_for_setup(study: optuna.Study) -> dict[str, Any] | None:
    """A joining worker waits for the marker the creating worker writes last; None for a study
    created outside hpo (plain Optuna, e.g. to enqueue known configurations), to be set up."""
    start = time.monotonic()
    while True:
        stored = study.user_attrs
        if "stage" in stored:
            return stored
        # "setting_up": the same marker as written before it was renamed.
        ours = CREATED_BY in stored or "setting_up" in stored
        if not ours and time.monotonic() - start > FOREIGN_WAIT:
            return None
        if time.monotonic() - start > SETUP_WAIT:
            raise HpoError(f"study {study.study_name!r} exists but its set-up never finished "
                           f"(the creating worker died?); delete it or use another study name")
        time.sleep(0.5)


def open_study(storage, study_name: str, space: str | None, flags: dict[str, Any],
               after: str | None = None, from_file: str | None = None,
               freeze_best_so_far: bool = False, default_n_trials: int | None = None,
               chain_base: bool = False, device=None,
               base: tuple[dict, dict] | None = None
               ) -> tuple[optuna.Study, Stage, Settings, dict[str, Any]]:
    """Create or join a study; return it with its stage, settings and frozen base config.

    Exactly one worker creates the study (Optuna's unique study name decides which); it writes
    the settings and the frozen base, and the marker ``stage`` last. Every other worker waits for
    that marker, then must agree with the stored settings. ``space`` may be a Stage itself (a
    protocol's sweep, hpo.studies.protocol) and ``base`` the (frozen config, origin) a new study takes.
    """
    check_flags(flags)
    existing = {s.study_name: s for s in storage.get_all_studies()}
    if after is not None and after not in existing:
        raise HpoError(f"--after {after!r}: no such study; studies here: "
                       f"{', '.join(sorted(existing)) or 'none'}")
    stored_stage = existing[study_name].user_attrs.get("stage") if study_name in existing else None
    given = space if isinstance(space, Stage) else None
    space = given.name if given else space
    if stored_stage and space and space != stored_stage:
        raise HpoError(f"study {study_name!r} searches stage {stored_stage!r}, not {space!r}")
    stage = given or get_stage(space or stored_stage or study_name)
    if study_name not in existing:
        # Checked before create_study, so that a failing command leaves no study behind.
        frozen, origin = base or frozen_from_predecessor(storage, stage, after, from_file,
                                                         freeze_best_so_far, chain_base)
        settings, points = new_settings(stage, flags, frozen, default_n_trials, device)
        objectives = parse_objectives(settings.objectives)
        try:
            study = optuna.create_study(study_name=study_name, storage=storage,
                                        directions=list(objectives.directions))
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another worker created it a moment ago: join it below
        else:
            _set_up(storage, study, stage, settings, frozen, origin, after, points)
            return study, stage, settings, frozen
    study = optuna.load_study(study_name=study_name, storage=storage)
    stored = _wait_for_setup(study)
    if stored is None:
        log.info("study %r was created outside hpo; setting it up as stage %s", study_name,
                 stage.name)
        frozen, origin = base or frozen_from_predecessor(storage, stage, after, from_file,
                                                         freeze_best_so_far, chain_base)
        settings, points = new_settings(stage, flags, frozen, default_n_trials, device)
        _set_up(storage, study, stage, settings, frozen, origin, after, points)
        return study, stage, settings, frozen
    records = study_records.read(storage, study_name)
    settings = joined_settings(study_name, records["settings"], flags)
    if from_file or (after and after != (stored.get("frozen_from") or {}).get("study")):
        log.warning("study %r already has its frozen base (from %s); --from/--after ignored",
                    study_name, stored.get("frozen_from"))
    return study, stage, settings, records["frozen_config"]


def _set_up(storage, study: optuna.Study, stage: Stage, settings: Settings, frozen: dict[str, Any],
            origin: dict[str, Any], after: str | None,
            points: list[dict[str, Any]] | None = None) -> None:
    # Says who made the study; to a joiner that sees no "stage" yet: wait, do not adopt it.
    study.set_user_attr(CREATED_BY, "hpo")
    study_records.write(storage, study.study_name, "frozen_config", frozen)
    study_records.write(storage, study.study_name, "settings", dataclasses.asdict(settings))
    study.set_user_attr("frozen_from", origin)
    study.set_user_attr("builds_on", after or stage.builds_on)
    study.set_user_attr("description", stage.description)
    study.set_user_attr("objectives", settings.objectives)
    with warnings.catch_warnings():  # experimental in Optuna, stable enough for labels
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(parse_objectives(settings.objectives).metric_names))
    write_stage_note(study, stage, origin, frozen)
    _enqueue_start(study, stage, settings, frozen, origin, points)
    study.set_user_attr("stage", stage.name)  # the marker, last: joiners wait for it
    if origin.get("defaults"):
        # Expected for a first stage; worth a warning when a predecessor was meant to exist.
        level = logging.INFO if (after or stage.builds_on) is None else logging.WARNING
        log.log(level, "%s: %s; using %s", study.study_name, origin["reason"],
                defaults_source(origin))


def _enqueue_start(study: optuna.Study, stage: Stage, settings: Settings, frozen: dict[str, Any],
                   origin: dict[str, Any], points: list[dict[str, Any]] | None) -> None:
    """Queue the study's first trials, once, before joiners may ask: the inherited configuration
    (the warm start: the stage's best can then never fall below what it inherited), then, for
    an exhaustive stage, every other point of its space."""
    from hpo.studies.space import inherited_params

    if settings.sampler == "grid":
        return  # the reports' grid, as they ran it
    # A study made outside hpo may hold trials already (e.g. queued by hand): not twice.
    present = [t.params or t.system_attrs.get("fixed_params") or {}
               for t in study.get_trials(deepcopy=False)]
    warm = inherited_params(stage, frozen)
    if warm is not None and not present:
        source = {k: origin[k] for k in ("study", "trial", "file", "defaults", "base")
                  if k in origin}
        study.enqueue_trial(warm, user_attrs={"warm_start": source})
        present.append(warm)
    for params in points or []:
        if params not in present:
            study.enqueue_trial(params)


def update_budget(storage, study_name: str, n_trials: int) -> tuple[int, int]:
    """Set an existing study's budget (running workers pick it up); (old, new)."""
    settings = dict(study_records.read_one(storage, study_name, "settings") or {})
    if not settings:
        raise HpoError(f"study {study_name!r} was not created by hpo; it has no budget to update")
    old = settings["n_trials"]
    settings["n_trials"] = n_trials
    study_records.write(storage, study_name, "settings", settings)
    return old, n_trials


class GridUntilBudget(optuna.samplers.GridSampler):
    """Optuna's grid sampler minus its stop at the grid's end: study.stop works only inside
    study.optimize, and the worker loop stops on the budget, which is the grid's size."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(settings: Settings, stage: Stage, frozen: dict[str, Any], seed: int | None):
    """``settings.sampler`` for one worker; a seeded one is seeded per trial (hpo.studies.seeding)."""
    name = settings.sampler
    if name == "grid" and not settings.exhaustive:
        # Not seeded per trial: Optuna's grid sampler shuffles the grid by its seed and
        # workers name points by their index in it, so every worker needs the same order.
        return GridUntilBudget(stage.grid(frozen), seed=settings.seed or 0)
    return TrialSeeded(lambda trial_seed: _sampler(name, settings.exhaustive, trial_seed), seed)


def _sampler(name: str, exhaustive: bool, seed: int | None) -> optuna.samplers.BaseSampler:
    if exhaustive:
        # Every point is queued at set-up; the sampler is only asked if the budget is raised.
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        # constant_liar: running trials count as bad, so concurrent workers spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def make_pruner(settings: Settings) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=settings.epochs)
    return optuna.pruners.NopPruner()


def grid_size(stage: Stage, frozen: dict[str, Any], image_size: int = 32) -> int:
    """How many trials the stage's grid trains: its distinct configs that can be built."""
    from hpo.studies.space import grid_configs

    return len(grid_configs(stage, frozen, image_size))
