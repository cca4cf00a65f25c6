"""The contract every stage keeps, over every registered stage; the registry; ``hpo stages``."""

from __future__ import annotations

import importlib
import itertools
import pkgutil
import re
import threading
import types
import warnings

import optuna
import pytest
import torch
from optuna.samplers import GridSampler, RandomSampler
from optuna.trial import FixedTrial

import search_spaces
from hpo.training.config import from_dict
from hpo.errors import HpoError
from hpo.runtime.session import RunOptions
from hpo.training.model import build_model, feature_map_sizes
from search_spaces import DEFAULTS, Stage, all_stages, get_stage
from tests.conftest import run_cli

STAGES = all_stages()
# Bases a stage may be frozen to: the documented defaults, a net without convolutions and a
# one-layer net with non-default knobs that no stage searches (they must pass through untouched).
BASES = {
    "defaults": dict(DEFAULTS),
    "no_conv": {**DEFAULTS, "conv_layers": 0, "filters": [], "fc_widths": [512, 256]},
    "one_conv": {**DEFAULTS, "conv_layers": 1, "filters": [16], "activation": "gelu",
                 "init": "xavier", "seed": 7, "epochs": 6, "early_stop_patience": 2},
}
UNTOUCHED = ("activation", "init", "seed", "epochs", "early_stop_patience", "gamma")


def _grid_points(space: dict) -> list[dict]:
    names = list(space)
    return [dict(zip(names, values)) for values in itertools.product(*space.values())]


def _check_config(config: dict, frozen: dict) -> None:
    assert isinstance(config, dict)
    parsed = from_dict(config)  # raises on unknown keys or bad values
    for key in UNTOUCHED:
        assert config[key] == frozen[key], f"{key} changed although no stage searches it"
    try:
        feature_map_sizes(parsed)
    except HpoError:
        return  # geometry the objective prunes; nothing to build
    # On the meta device: shapes are checked, no memory is spent on 8192-wide layers.
    with torch.no_grad(), torch.device("meta"):
        out = build_model(parsed).eval()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("name", list(STAGES))
def test_stage_random_trials_give_buildable_configs(name, base):
    stage, frozen = STAGES[name], BASES[base]
    before = {k: (list(v) if isinstance(v, list) else v) for k, v in frozen.items()}
    for seed in range(3):
        study = optuna.create_study(sampler=RandomSampler(seed=seed))
        for _ in range(4):
            trial = study.ask()
            _check_config(stage.suggest(trial, frozen), frozen)
            study.tell(trial, 0.5)
    assert frozen == before, "suggest mutated the frozen base"


def _grid_trial(point, space):
    """A fixed trial as GridSampler would run it: stage5 offers the reports' whole L1 list to
    the grid and only the trainable strengths to a search."""
    trial = FixedTrial(point)
    trial.study = types.SimpleNamespace(sampler=GridSampler(space))
    return trial


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("name", list(STAGES))
def test_stage_fixed_trial_from_first_grid_point(name, base):
    stage, frozen = STAGES[name], BASES[base]
    first = _grid_points(stage.grid(frozen))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a grid value outside suggest's distribution warns
        trial = _grid_trial(first, stage.grid(frozen))
        config = stage.suggest(trial, frozen)
    _check_config(config, frozen)
    assert set(trial.params) <= set(first) and (trial.params or not first)


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("name", list(STAGES))
def test_stage_grid_keys_are_exactly_the_suggested_parameters(name, base):
    stage, frozen = STAGES[name], BASES[base]
    space = stage.grid(frozen)
    # Empty only where the stage has nothing to search on this base (no conv layer to widen).
    assert space or (frozen["conv_layers"] == 0 and name in ("stage3_filters", "stage4_conv")) \
        or (frozen["conv_layers"] == 0 and not frozen["fc_widths"] and name == "stage6_batchnorm")
    assert all(isinstance(v, list) and v for v in space.values())
    asked: set[str] = set()
    for point in _grid_points(space):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trial = _grid_trial(point, space)  # raises if suggest asks for a name the grid lacks
            stage.suggest(trial, frozen)
        asked |= set(trial.params)
    assert asked == set(space), f"grid keys never asked for: {set(space) - asked}"


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_grid_sampler_walks_the_grid(name):
    stage, frozen = STAGES[name], BASES["defaults"]
    space = stage.grid(frozen)
    points = _grid_points(space)
    study = optuna.create_study(sampler=GridSampler(space, seed=0))
    study.optimize(lambda trial: stage.suggest(trial, frozen) and 0.5, n_trials=min(len(points), 6))
    seen = []
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.params and set(trial.params) <= set(space)
        assert any(all(point[k] == v for k, v in trial.params.items()) for point in points)
        seen.append(trial.system_attrs["grid_id"])
    assert len(seen) == min(len(points), 6)
    assert len(set(seen)) == len(seen), "a grid point was handed out twice"


def test_stage_names_match_module_names():
    modules = [m.name for m in pkgutil.iter_modules(search_spaces.__path__)
               if not m.name.startswith("_")]
    assert len(modules) >= 8
    for module in modules:
        stage = importlib.import_module(f"search_spaces.{module}").STAGE
        assert stage.name == module
    assert set(modules) <= set(STAGES)


def test_stage_builds_on_names_exist_and_form_a_chain():
    for stage in STAGES.values():
        assert stage.builds_on is None or stage.builds_on in STAGES, stage.name
        assert stage.n_trials >= 1 and stage.epochs >= 1
        assert stage.description
    # The reports' order: each stage k builds on stage k-1.
    numbered = sorted(n for n in STAGES if n.startswith("stage"))
    assert STAGES[numbered[0]].builds_on is None
    for before, after in zip(numbered, numbered[1:]):
        assert STAGES[after].builds_on == before


def test_stage_registry_lists_builtins_in_order_with_joint_last():
    names = list(STAGES)
    assert names[:8] == ["stage1_layers", "stage2_fc", "stage3_filters", "stage4_conv",
                         "stage5_regularization", "stage6_batchnorm", "stage7_optimizer",
                         "stage8_schedule"]
    assert names[-1] == "joint"


def test_get_stage_unknown_lists_known_stages():
    with pytest.raises(HpoError) as info:
        get_stage("stage3_filter")
    message = str(info.value)
    assert "'stage3_filter'" in message
    for name in STAGES:
        assert name in message
    assert "\n" not in message


def _write_user_stage(folder, module: str, name: str) -> None:
    (folder / f"{module}.py").write_text(
        "from search_spaces import Stage\n"
        "def suggest(trial, frozen):\n"
        "    return {**frozen, 'lr': trial.suggest_float('lr', 1e-3, 1e-1, log=True)}\n"
        "def grid(frozen):\n"
        "    return {'lr': [0.01, 0.001]}\n"
        f"STAGE = Stage(name={name!r}, builds_on='stage1_layers', description='user stage',\n"
        "              n_trials=3, epochs=2, suggest=suggest, grid=grid)\n")


def test_stage_registry_finds_user_stage_from_env(tmp_path, monkeypatch):
    _write_user_stage(tmp_path, "hpo_user_stage_env", "my_lr_stage")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HPO_STAGES", " hpo_user_stage_env ,")
    stages = all_stages()
    assert "my_lr_stage" in stages
    assert list(stages)[-1] == "joint"
    stage = get_stage("my_lr_stage")
    assert isinstance(stage, Stage) and stage.builds_on == "stage1_layers"


def test_stage_registry_finds_user_stage_by_module_path(tmp_path, monkeypatch):
    package = tmp_path / "hpo_user_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    _write_user_stage(package, "lr_only", "pkg_lr_stage")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("HPO_STAGES", raising=False)
    assert "pkg_lr_stage" not in all_stages()
    assert get_stage("hpo_user_pkg.lr_only").name == "pkg_lr_stage"


def test_stage_registry_bad_user_module_is_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "hpo_user_no_stage.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HPO_STAGES", "hpo_user_missing_module")
    with pytest.raises(HpoError, match="cannot import stage module 'hpo_user_missing_module'"):
        all_stages()
    monkeypatch.setenv("HPO_STAGES", "hpo_user_no_stage")
    with pytest.raises(HpoError, match="defines no STAGE"):
        all_stages()


def _stages_rows(stdout: str) -> dict[str, list[str]]:
    """``hpo stages``'s table rows by stage name: builds on, chain, --study (the footnote after
    the blank line is not a row)."""
    body = stdout.split("\n\n")[0].splitlines()[1:]
    cell = r"(-|same|\d+ x \d+\*?)"
    rows = {}
    for line in body:
        match = re.match(rf"(\S+)\s+(\S+)\s+{cell}\s+{cell}\s+\S", line)
        assert match, line
        rows[match[1]] = list(match.groups()[1:])
    return rows


def test_cli_stages_lists_every_stage_and_user_stages(tmp_path):
    _write_user_stage(tmp_path, "hpo_user_stage_cli", "cli_user_stage")
    result = run_cli("hpo", "stages", env={"HPO_STAGES": "hpo_user_stage_cli",
                                           "PYTHONPATH": str(tmp_path)}, check=True)
    rows = _stages_rows(result.stdout)
    assert set(STAGES) | {"cli_user_stage"} == set(rows)
    for name, stage in STAGES.items():
        assert rows[name][0] == (stage.builds_on or "-")
    assert rows["cli_user_stage"][0] == "stage1_layers"
    assert rows["joint"][1] == "-"  # not on the chain: only a single study runs it


class _RecordingSession:
    """Stands in for the worker's session (hpo.runtime.session.Session) under hpo.runtime.worker.run_chain: each stage study it is
    asked to run is set up with hpo.studies.settings.new_settings exactly as open_study would create it
    (from the chain's base, on 32-pixel images), and nothing is trained."""

    def __init__(self, storage):
        self.options = RunOptions()  # no learning-rate window: the chain's default
        self.storage, self.stop, self.ran = storage, threading.Event(), {}
        self.device = "cpu"  # where a chain decides --precision auto

    def out_of_time(self) -> bool:
        return False

    def run_study(self, request):
        from hpo.studies.chain import BASE
        from hpo.studies.settings import new_settings

        settings, _ = new_settings(get_stage(request.space), request.flags, BASE,
                                   request.default_n_trials, image_size=32)
        self.ran[request.space] = f"{settings.n_trials} x {settings.epochs}" + (
            "*" if settings.exhaustive else "")


def test_stages_table_shows_what_the_chain_runs_and_what_a_single_study_runs(tmp_path):
    # Defect: `hpo stages` printed each stage's own defaults (30/20/12/30/30/4/20/20 trials,
    # 10 or 15 epochs) while the chain ran 20/17/12/20/20/4/12/20 trials at 10 epochs.
    from hpo.studies.chain import parse_chain
    from hpo.store.storage import open_storage
    from hpo.studies.settings import new_settings
    from hpo.runtime.worker import run_chain

    rows = _stages_rows(run_cli("hpo", "stages", check=True).stdout)
    session = _RecordingSession(open_storage(f"sqlite:///{tmp_path / 'hpo.db'}"))
    run_chain(session, parse_chain("all"), "c", {})
    assert list(session.ran) == [n for n in STAGES if n != "joint"]
    assert {name: rows[name][1] for name in session.ran} == session.ran
    for name, stage in STAGES.items():  # a single --study run, as the worker creates it
        settings, _ = new_settings(stage, {}, dict(DEFAULTS), image_size=32)
        single = f"{settings.n_trials} x {settings.epochs}" + ("*" if settings.exhaustive else "")
        assert rows[name][2] == ("same" if single == rows[name][1] else single)
    session.storage.dispose()


def test_grid_workers_with_different_sampler_seeds_share_one_grid_order(tmp_path):
    # Each worker process seeds its sampler with the study seed plus its slot. Optuna's grid
    # sampler shuffles its grid by its seed and names points by index, so two workers read one
    # grid index as two different points: points trained twice, others never.
    from hpo.studies.samplers import make_sampler
    from hpo.studies.settings import Settings

    stage = get_stage("stage1_layers")
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    settings = Settings(stage=stage.name, sampler="grid", seed=0)
    optuna.create_study(study_name="g", storage=storage, direction="maximize")
    workers = [optuna.load_study(study_name="g", storage=storage,
                                 sampler=make_sampler(settings, stage, dict(DEFAULTS), slot))
               for slot in (0, 1)]
    grid = stage.grid(dict(DEFAULTS))
    size = len(list(itertools.product(*grid.values())))
    for number in range(size):
        study = workers[number % 2]
        trial = study.ask()
        stage.suggest(trial, dict(DEFAULTS))
        study.tell(trial, 0.5)
    trained = {tuple(sorted(t.params.items())) for t in workers[0].trials}
    assert len(trained) == size, f"{size - len(trained)} grid points trained twice"
