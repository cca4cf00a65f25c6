"""The study note optuna-dashboard shows on a study's page: what the stage searches, what it
froze and from where, and what the course reports settled on for the same stage.

Written once, when the first worker sets the study up (``hpo.studies.study.open_study``), through
optuna-dashboard's own note API, so the dashboard can still edit it like any note.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna

from hpo.studies.chain import BASE as CHAIN_BASE
from search_spaces import DEFAULTS, Stage

log = logging.getLogger(__name__)

# What the course reports settled on, per built-in stage (see the mission's table). A stage of
# the user's own has no entry and gets no "reports chose" line.
REPORTS_CHOSE: dict[str, str] = {
    "stage1_layers": "3 conv + 2 FC, lr 0.01, batch 32 (lr 0.1 often failed to converge, "
                     "0.001 was too slow; smaller batches were more accurate but much slower)",
    "stage2_fc": "2 FC layers",
    "stage3_filters": "filters 64-128-512",
    "stage4_conv": "kernel 4, stride 1, padding 1, max-pool 2",
    "stage5_regularization": "L2 (weight decay) 1e-3 + dropout 0.3; the train/validation gap "
                             "fell from 0.12 to 0.03",
    "stage6_batchnorm": "batch norm on: the same accuracy in far fewer epochs",
    "stage7_optimizer": "Adam lr 0.001, batch 64: converges faster than SGD lr 0.01, "
                        "which needs finer tuning",
    "stage8_schedule": "the reports used random flip + random crop and step / cosine schedules",
    "joint": "the staged winners: 3 conv 64-128-512, kernel 4 stride 1 padding 1, max-pool 2, "
             "2 FC, L2 1e-3 + dropout 0.3, batch norm, Adam lr 0.001",
}

# The frozen knobs worth a glance, in the order the stages tune them.
KEY_VALUES = ("conv_layers", "filters", "fc_widths", "kernel_size", "stride", "padding", "pool",
              "pool_size", "l1", "weight_decay", "conv_dropout", "fc_dropout", "conv_batchnorm",
              "fc_batchnorm", "optimizer", "lr", "batch_size", "scheduler", "flip",
              "crop_padding")


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(map(str, value)) or "none"
    return str(value)


def defaults_source(origin: dict[str, Any]) -> str:
    """Which defaults a study froze, for its log line and note."""
    if origin.get("base") == "protocol":  # hpo.studies.protocol: its file's start
        return f"the start of protocol `{origin.get('source')}`"
    if origin.get("base") == "chain":
        changed = ", ".join(f"{k} {v}" for k, v in CHAIN_BASE.items() if DEFAULTS.get(k) != v)
        return (f"the chain's starting point (`hpo/studies/chain.py` BASE: the documented defaults with "
                f"{changed})")
    return "the documented defaults (`search_spaces/_stage.py` DEFAULTS)"


def _origin(frozen_from: dict[str, Any]) -> str:
    if frozen_from.get("defaults"):
        reason = frozen_from.get("reason", "no predecessor")
        return f"{defaults_source(frozen_from)}; reason: {reason}"
    if frozen_from.get("file"):
        source = f"the export file `{frozen_from['file']}`"
        if frozen_from.get("study") is not None:
            source += f" (study `{frozen_from['study']}`, trial {frozen_from.get('trial')})"
        return source
    value = frozen_from.get("value")
    value = f", validation accuracy {value:.4f}" if isinstance(value, (int, float)) else ""
    return (f"the best trial of study `{frozen_from.get('study')}`: "
            f"trial {frozen_from.get('trial')}{value}")


def searched_keys(stage: Stage, frozen_config: dict[str, Any], probes: int = 16) -> set[str]:
    """Config keys the stage sets itself: those that differ from the frozen base in any of a few
    seeded random suggestions (an empty set if the stage cannot be probed)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory"
    keys: set[str] = set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
            for _ in range(probes):
                config = stage.suggest(probe.ask(), dict(frozen_config))
                keys |= {k for k, v in config.items() if frozen_config.get(k, v) != v}
    except Exception:
        return set()
    finally:
        optuna.logging.set_verbosity(verbosity)
    return keys


def _grid_line(name: str, values: list) -> str:
    """A grid parameter as the reports wrote it: a power-of-two exponent as the power."""
    if name.startswith("log2_"):
        name, values = name[len("log2_"):], [2 ** v for v in values]
    return f"- `{name}`: {', '.join(_value(v) for v in values)}"


def stage_note(stage: Stage, frozen_from: dict[str, Any], frozen_config: dict[str, Any]) -> str:
    """The note's Markdown body."""
    lines = [f"## Stage `{stage.name}`", "", f"**Searches:** {stage.description}.", ""]
    try:
        grid = stage.grid(frozen_config)
    except Exception as e:  # a user's stage; the note must not stop the study
        grid = {}
        log.warning("stage %s: grid(frozen) failed (%s); the note lists no grid", stage.name, e)
    if grid:
        lines += ["**Grid the course reports tried** (`--sampler grid` replays it):", ""]
        lines += [_grid_line(name, values) for name, values in grid.items()]
        lines.append("")
    lines += [f"**Frozen** (everything this stage does not search) **from** "
              f"{_origin(frozen_from)}.", ""]
    searched = searched_keys(stage, frozen_config)
    shown = [k for k in KEY_VALUES if k in frozen_config and k not in searched]
    if shown:
        lines += ["| frozen knob | value |", "|---|---|"]
        lines += [f"| `{k}` | {_value(frozen_config[k])} |" for k in shown]
        lines.append("")
    if stage.name in REPORTS_CHOSE:
        lines += [f"**The course reports chose:** {REPORTS_CHOSE[stage.name]}.", ""]
    return "\n".join(lines)


def write_stage_note(study: optuna.Study, stage: Stage, frozen_from: dict[str, Any],
                     frozen_config: dict[str, Any]) -> None:
    """Save the stage note on the study; a failure is logged, never raised (it is only a view)."""
    try:
        from optuna_dashboard import save_note

        save_note(study, stage_note(stage, frozen_from, frozen_config))
    except Exception as e:
        log.warning("study %r: could not write the dashboard note (%s)", study.study_name, e)
