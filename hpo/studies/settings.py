"""A study's settings, declared once: the dataclass below is where ``hpo-worker``, ``hpo
create-study``, ``hpo create-chain`` and ``hpo train`` get their settings flags (name, help,
range), what a study stores, what a chain's or protocol's workers must agree on, and what is
range-checked before anything is stored. No torch here."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any, Callable

from hpo.errors import HpoError
from hpo.flags import at_least, between, one_of
from hpo.studies.objectives import KNOWN as OBJECTIVES, parse_objectives
from hpo.training.precision import PRECISIONS
from search_spaces import Stage

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid", "gp", "cmaes")
PRUNERS = ("median", "hyperband", "none")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision


def setting(default: Any, help: str, parse: Callable[[str], Any] | None = None,
            search: bool = False) -> Any:
    """A Settings field that is also a command-line flag. ``parse`` checks a value's range (for
    the parser, and for values that come another way); ``search``: how a study searches
    (budget, sampler, pruner), which a protocol decides for itself."""
    return dataclasses.field(default=default, metadata={"help": help, "parse": parse,
                                                        "search": search})


@dataclasses.dataclass
class Settings:
    """What every trial of one study shares. Stored in the study; flags must agree with it."""

    stage: str
    dataset: str = setting("cifar10-sample", "cifar10-sample | cifar10 | cifar100 | "
                           "imagefolder:PATH (default cifar10-sample)")
    epochs: int = setting(10, "epochs per trial (default: the stage's; with a chain: 10, every "
                              "stage)", at_least(1))
    train_size: int | None = setting(None, "train on a subset of this many images", at_least(1))
    val_fraction: float = setting(0.1, "share of the training images held out for validation "
                                       "(default 0.1)", between(0, 1, float, open_ends=True))
    split_seed: int = 0  # not a flag: every study splits the same way
    seed: int = setting(0, "training seed; the sampler draws each trial's seed from it and the "
                           "trial's number", at_least(0))
    # The study-wide budget; raised with hpo create-study --update.
    n_trials: int = setting(30, "trial budget shared by all workers of the study (with a chain: "
                                "of every stage; default: the stage's, or the chain's per-stage "
                                "budgets)", at_least(0), search=True)
    sampler: str = setting("tpe", "tpe | random | grid | gp | cmaes (default tpe)",
                           one_of(*SAMPLERS), search=True)
    pruner: str = setting("median", "median | hyperband | none (default median)",
                          one_of(*PRUNERS), search=True)
    objectives: str = setting("accuracy", "accuracy | accuracy,time | accuracy,params (default "
                                          "accuracy)", one_of(*OBJECTIVES))
    # fp32 or bf16 (hpo.training.precision), decided when the study is created: a property of
    # the results, so of the study; "auto" never stays stored.
    precision: str = setting("fp32", "auto | fp32 | bf16, decided once when the study or chain "
                                     "is created (auto: bf16 where the device computes it "
                                     "natively, else fp32); every worker and hpo train use it "
                                     "(default auto)", one_of(*PRECISIONS))
    matmul_precision: str = setting("highest", "float32 matmul and convolution precision: "
                                               "highest | high (TF32) | medium (default highest)",
                                    one_of(*MATMUL_PRECISIONS))
    # cuDNN's deterministic algorithms: exact re-trains on a GPU.
    deterministic: bool = setting(False, "cuDNN's deterministic algorithms, so a re-train on a "
                                         "GPU is exact (slower convolutions; default off)")
    exhaustive: bool = False  # a finite space no larger than the budget: every point once


def flag_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Settings) if "help" in f.metadata]


SETTING_FLAGS = tuple(f.name for f in flag_fields())
# A protocol runs every point of its sweeps to the end: it decides the search flags itself.
SEARCH_FLAGS = tuple(f.name for f in flag_fields() if f.metadata["search"])
RESULT_FLAGS = tuple(name for name in SETTING_FLAGS if name not in SEARCH_FLAGS)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] = SETTING_FLAGS,
              help: dict[str, str] | None = None) -> None:
    """The settings flags ``names`` on ``parser``, each with its declared help and range;
    ``help`` replaces a flag's help where a command means something else by it."""
    help = help or {}
    for field in flag_fields():
        if field.name not in names:
            continue
        text = help.get(field.name, field.metadata["help"])
        if field.type in ("bool", bool):
            parser.add_argument(flag(field.name), action="store_true", help=text)
        else:
            parser.add_argument(flag(field.name), type=field.metadata["parse"], help=text)
        if field.name == "precision":
            parser.add_argument("--bf16", action="store_true", help="the same as --precision bf16")


def flags_from(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields a command line gave (None where it did not). --precision auto is
    kept as "auto": a new study resolves it, an existing one keeps what it stored."""
    from hpo.training.precision import flag_value

    flags = {name: getattr(args, name, None) for name in SETTING_FLAGS}
    flags["precision"] = flag_value(args)
    if flags["deterministic"] is False:  # a store_true flag not given
        flags["deterministic"] = None
    return flags


def check_flags(flags: dict[str, Any]) -> None:
    """Values that are wrong whatever the study, checked by the same ranges the parsers use
    (values reach here from files and records too), before anything is stored."""
    for field in flag_fields():
        value, parse = flags.get(field.name), field.metadata["parse"]
        if value is not None and parse is not None:
            try:
                parse(str(value))
            except argparse.ArgumentTypeError as e:
                raise HpoError(f"{flag(field.name)} {e}") from None
    if flags.get("objectives") is not None:
        objectives = parse_objectives(flags["objectives"])
        if not objectives.single and flags.get("pruner") not in (None, "none"):
            raise HpoError(f"--pruner {flags['pruner']} is invalid with --objectives "
                           f"{objectives.name}; allowed: none (Optuna's pruners are "
                           "single-objective)")
    if flags.get("dataset") is not None:
        from hpo.training.data import check_dataset_name  # imports torch: only with a dataset

        check_dataset_name(flags["dataset"])


def new_settings(stage: Stage, flags: dict[str, Any], frozen: dict[str, Any],
                 default_n_trials: int | None = None, device=None, image_size: int | None = None
                 ) -> tuple[Settings, list[dict[str, Any]] | None]:
    """A new study's settings (flags over the stage's defaults), and the points to enqueue when
    its space is finite and no larger than the budget (then the budget is the space's size).
    ``--precision auto`` is decided here, once, for ``device`` (None: this machine's first
    GPU, else its CPU). ``image_size`` given (``hpo stages``): the dataset is not read."""
    from hpo.studies.space import grid_size, possible_points
    from hpo.training.precision import resolve

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
