"""Creating and joining a stage study: its fixed settings, the frozen base config, its first
trials.

The first worker to reach a study writes its settings and the frozen config into the study's
user attributes; every later worker, from any machine, reads them back, so all trials of a study
share one base and one budget. Creation is race-free: Optuna's create_study relies on the
database's unique study name.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import Any

import optuna

from hpo.errors import HpoError
from hpo.store import study_records
from hpo.studies.freezing import frozen_from_predecessor
from hpo.studies.objectives import parse_objectives
from hpo.studies.settings import Settings, check_flags, joined_settings, new_settings
from hpo.training.config import config_from_document, load_json
from hpo.views.notes import defaults_source, write_stage_note
from search_spaces import Stage, get_stage

log = logging.getLogger(__name__)

SETUP_WAIT = 60.0  # seconds a joining worker waits for the creating worker to finish set-up
FOREIGN_WAIT = 3.0  # with no sign of an hpo creator by then, the study was made outside hpo
CREATED_BY = "created_by"  # user attribute written first when hpo sets a study up


@dataclasses.dataclass(frozen=True)
class StudyRequest:
    """What a worker (or hpo create-study) asks of one study: its name and how to make it."""

    name: str
    space: str | Stage | None = None  # the stage to search, if not named by ``name``; a
    # protocol's sweep passes its Stage itself
    flags: dict[str, Any] = dataclasses.field(default_factory=dict)  # settings flags, None: not given
    after: str | None = None  # the study to freeze from (default: the stage's builds_on)
    from_file: str | None = None  # an exported JSON to freeze from instead
    freeze_best_so_far: bool = False  # do not wait for the predecessor to finish
    default_n_trials: int | None = None  # the budget when --n-trials is not given (a chain's)
    chain_base: bool = False  # with nothing to freeze: the chain's base, not the defaults
    base: tuple[dict, dict] | None = None  # (frozen config, origin) given outright


def preflight(url: str, request: StudyRequest) -> None:
    """Everything about a worker's or create-study's request that can be checked without the
    database, checked before it is opened (opening an embedded one creates its file)."""
    from hpo.store.urls import parse_url, sqlite_file

    study_name, space, flags = request.name, request.space, request.flags
    after, from_file = request.after, request.from_file
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


def open_study(storage, request: StudyRequest, device=None
               ) -> tuple[optuna.Study, Stage, Settings, dict[str, Any]]:
    """Create or join a study; return it with its stage, settings and frozen base config.

    Exactly one worker creates the study (Optuna's unique study name decides which); it writes
    the settings and the frozen base, and the marker ``stage`` last. Every other worker waits for
    that marker, then must agree with the stored settings. ``device`` decides ``--precision
    auto`` for a new study.
    """
    study_name, space, flags, after = request.name, request.space, request.flags, request.after
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
        frozen, origin = _base(storage, stage, request)
        settings, points = new_settings(stage, flags, frozen, request.default_n_trials, device)
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
        frozen, origin = _base(storage, stage, request)
        settings, points = new_settings(stage, flags, frozen, request.default_n_trials, device)
        _set_up(storage, study, stage, settings, frozen, origin, after, points)
        return study, stage, settings, frozen
    records = study_records.read(storage, study_name)
    settings = joined_settings(study_name, records["settings"], flags)
    if request.from_file or (after and after != (stored.get("frozen_from") or {}).get("study")):
        log.warning("study %r already has its frozen base (from %s); --from/--after ignored",
                    study_name, stored.get("frozen_from"))
    return study, stage, settings, records["frozen_config"]


def _base(storage, stage: Stage, request: StudyRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    return request.base or frozen_from_predecessor(
        storage, stage, request.after, request.from_file, request.freeze_best_so_far,
        request.chain_base)


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
