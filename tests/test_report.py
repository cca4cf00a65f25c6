"""Report figures and the offline HTML page, over small studies built directly in SQLite."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from hpo.errors import HpoError
from hpo.views.plots import pareto_front, plot_learning_curve
from hpo.views.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DISTRIBUTIONS = {
    "conv_layers": IntDistribution(0, 4),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "batch_size": CategoricalDistribution([16, 32, 64, 128]),
}
STUDY_FIGURES = ["history", "importances", "parallel", "curves", "gap", "accuracy_time"]


def _history(epochs: int, rng: random.Random) -> list[dict]:
    rows, val, overfit = [], 0.2, rng.uniform(0.0, 0.04)
    for epoch in range(epochs):
        val = min(0.9, val + rng.uniform(0.0, 0.08))
        train = min(1.0, val + overfit * epoch)
        rows.append({"epoch": epoch, "train_loss": 2.0 - train, "train_acc": train,
                     "val_loss": 2.1 - val, "val_acc": val, "seconds": rng.uniform(1, 3),
                     "lr": 0.01})
    return rows


def _trial(state: TrialState, rng: random.Random, epochs: int, objectives: int = 1):
    params = {"conv_layers": rng.randint(0, 4), "lr": 10 ** rng.uniform(-4, -1),
              "batch_size": rng.choice([16, 32, 64, 128])}
    history = _history(epochs, rng) if epochs else []
    attrs = {"config": dict(params, epochs=epochs), "history": history,
             "params": 20_000 * (params["conv_layers"] + 1),
             "seconds": sum(row["seconds"] for row in history)}
    if history:
        attrs["gap"] = history[-1]["train_acc"] - history[-1]["val_acc"]
    if state != TrialState.COMPLETE:
        attrs["end_reason"] = state.name.lower()
    values = None
    if state == TrialState.COMPLETE:
        best = max(row["val_acc"] for row in history)
        values = [best, attrs["seconds"]][:objectives]
    return create_trial(
        state=state, values=values, params=params, distributions=DISTRIBUTIONS, user_attrs=attrs,
        intermediate_values={row["epoch"]: row["val_acc"] for row in history},
    )


def _study(
    storage: str | optuna.storages.BaseStorage, name: str, states: list[TrialState], *,
    builds_on: str | None = None, frozen: dict | None = None, objectives: int = 1, seed: int = 0,
) -> optuna.Study:
    directions = ["maximize", "minimize"][:objectives]
    study = optuna.create_study(storage=storage, study_name=name, directions=directions)
    study.set_user_attr("stage", name)
    study.set_user_attr("builds_on", builds_on)
    study.set_user_attr("frozen_from", frozen or {"defaults": True})
    rng = random.Random(seed)
    for state in states:
        epochs = {TrialState.COMPLETE: rng.randint(3, 8), TrialState.PRUNED: 2,
                  TrialState.FAIL: 0}[state]
        study.add_trial(_trial(state, rng, epochs, objectives))
    return study


MIXED = [TrialState.COMPLETE] * 8 + [TrialState.PRUNED] * 3 + [TrialState.FAIL] * 2


@pytest.fixture
def storage(tmp_path: Path) -> str:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture
def memory() -> optuna.storages.InMemoryStorage:
    """For tests about the figures rather than the database: SQLite commits cost ~0.1 s a trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.storages.InMemoryStorage()


def _assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    pixels = matplotlib.image.imread(path)
    assert np.std(pixels) > 0, f"{path} is a single flat color"


def test_write_report_writes_every_figure_and_embeds_them(storage: str, tmp_path: Path) -> None:
    _study(storage, "stage1_layers", MIXED)
    written = write_report(storage, ["stage1_layers"], tmp_path / "out")

    out = tmp_path / "out"
    expected = {out / "stage1_layers" / f"{name}.png" for name in STUDY_FIGURES}
    assert set(written) == expected | {out / "index.html"}
    for path in expected:
        _assert_png(path)
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(expected)
    assert "stage1_layers" in page
    assert "<script" not in page and "http" not in page  # offline: nothing external
    assert "Stage chain" not in page


def test_write_report_chain_draws_chain_figure(storage: str, tmp_path: Path) -> None:
    first = _study(storage, "stage1_layers", MIXED, seed=1)
    best = first.best_trial
    _study(storage, "stage2_fc", MIXED, builds_on="stage1_layers", seed=2,
           frozen={"study": "stage1_layers", "trial": best.number, "value": best.value})
    written = write_report(optuna.storages.RDBStorage(storage), ["stage2_fc", "stage1_layers"],
                           tmp_path)

    assert tmp_path / "chain.png" in written
    _assert_png(tmp_path / "chain.png")
    page = (tmp_path / "index.html").read_text()
    assert "Stage chain" in page
    assert "stage1_layers &rarr; stage2_fc" in page  # chain order, not argument order


def test_write_report_survives_study_without_complete_trials(
    memory: optuna.storages.InMemoryStorage, tmp_path: Path
) -> None:
    _study(memory, "stage3_filters", [TrialState.PRUNED, TrialState.FAIL, TrialState.PRUNED])
    _study(memory, "empty", [])
    written = write_report(memory, ["stage3_filters", "empty"], tmp_path)

    assert tmp_path / "index.html" in written
    for path in written[:-1]:
        _assert_png(path)
    assert tmp_path / "stage3_filters" / "gap.png" in written  # pruned trials still have a gap
    assert not (tmp_path / "stage3_filters" / "history.png").exists()
    page = (tmp_path / "index.html").read_text()
    assert "no complete trial yet" in page and "empty" in page


def test_write_report_multi_objective_draws_pareto(
    memory: optuna.storages.InMemoryStorage, tmp_path: Path
) -> None:
    _study(memory, "stage7_optimizer", MIXED, objectives=2)
    written = write_report(memory, ["stage7_optimizer"], tmp_path)

    pareto = tmp_path / "stage7_optimizer" / "pareto.png"
    assert pareto in written
    for path in written[:-1]:
        _assert_png(path)
    assert "Pareto-optimal trials" in (tmp_path / "index.html").read_text()


def test_write_report_single_trial_notes_missing_importances(
    memory: optuna.storages.InMemoryStorage, tmp_path: Path
) -> None:
    _study(memory, "stage4_geometry", [TrialState.COMPLETE])
    written = write_report(memory, ["stage4_geometry"], tmp_path)

    assert tmp_path / "stage4_geometry" / "importances.png" not in written
    assert "needs at least 2 complete trials" in (tmp_path / "index.html").read_text()


def test_write_report_unknown_study_names_known_ones(
    memory: optuna.storages.InMemoryStorage, tmp_path: Path
) -> None:
    _study(memory, "stage1_layers", [])
    with pytest.raises(HpoError, match="unknown study 'stage1_layer'; known: stage1_layers"):
        write_report(memory, ["stage1_layer"], tmp_path)
    assert not (tmp_path / "index.html").exists()


def test_plot_learning_curve_writes_png(tmp_path: Path) -> None:
    history = _history(10, random.Random(0))
    history[3]["train_loss"] = float("nan")  # a diverged epoch is skipped, not fatal
    path = plot_learning_curve(history, tmp_path / "curve.png", title="trial 3")

    assert path == tmp_path / "curve.png"
    _assert_png(path)


def test_plot_learning_curve_accepts_empty_history(tmp_path: Path) -> None:
    _assert_png(plot_learning_curve([], tmp_path / "empty.png"))


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(10.0, 0.5), (5.0, 0.6), (20.0, 0.7), (30.0, 0.65), (5.0, 0.4)]
    assert pareto_front(points) == [(5.0, 0.6), (20.0, 0.7)]
