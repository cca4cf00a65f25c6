"""The stage note optuna-dashboard shows: written once when a study is set up, through the
dashboard's note API, saying what the stage searches, what it froze (from where) and what the
course reports chose."""

from __future__ import annotations

import dataclasses

import optuna
from optuna.trial import TrialState, create_trial
from optuna_dashboard import get_note

from hpo.views.notes import REPORTS_CHOSE, searched_keys, stage_note
from hpo.store.storage import open_storage
from hpo.studies.study import StudyRequest, open_study
from search_spaces import DEFAULTS, all_stages, get_stage


def _open(url: str, name: str, space: str | None = None) -> optuna.Study:
    # freeze_best_so_far: the predecessor here keeps its queued warm start, never run
    return open_study(open_storage(url), StudyRequest(name, space, {}, freeze_best_so_far=True))[0]


def test_note_stage1_says_grid_defaults_and_reports_choice(sqlite_url):
    note = get_note(_open(sqlite_url, "stage1_layers"))
    assert "## Stage `stage1_layers`" in note
    assert get_stage("stage1_layers").description in note
    assert "- `lr`: 0.1, 0.01, 0.001" in note and "- `batch_size`: 16, 32, 64, 128" in note
    assert "documented defaults" in note and "stage1_layers builds on no stage" in note
    assert "**The course reports chose:** 3 conv + 2 FC, lr 0.01, batch 32" in note
    # Knobs the stage searches are not listed as frozen; the others are.
    assert "| `kernel_size` | 3 |" in note and "| `lr` |" not in note


def test_note_names_the_predecessor_trial_it_froze_from(sqlite_url):
    stage1 = _open(sqlite_url, "stage1_layers")
    config = {**DEFAULTS, "filters": [64, 128, 512], "lr": 0.02}
    stage1.add_trial(create_trial(state=TrialState.COMPLETE, value=0.61,
                                  user_attrs={"config": config}))
    note = get_note(_open(sqlite_url, "stage2_fc"))
    # trial 0 is stage1's queued warm start; the added trial is 1
    assert "the best trial of study `stage1_layers`: trial 1, validation accuracy 0.6100" in note
    assert "| `filters` | 64-128-512 |" in note and "| `lr` | 0.02 |" in note
    assert "- `fc_layers`: 1, 2, 3" in note
    assert "**The course reports chose:** 2 FC layers." in note


def test_note_of_a_user_stage_has_no_reports_line(sqlite_url, tiny_stage_env):
    note = get_note(_open(sqlite_url, "mine", space="tiny"))
    assert "## Stage `tiny`" in note and "one conv layer; for tests" in note
    assert "reports chose" not in note


def test_note_written_once_per_study(sqlite_url):
    study = _open(sqlite_url, "stage6_batchnorm")
    _open(sqlite_url, "stage6_batchnorm")  # a second worker joins
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs["dashboard:note_ver"] == 1


def test_note_survives_a_stage_whose_grid_fails():
    stage = dataclasses.replace(get_stage("stage6_batchnorm"), name="broken",
                                grid=lambda frozen: 1 / 0)
    note = stage_note(stage, {"defaults": True, "reason": "test"}, dict(DEFAULTS))
    assert "## Stage `broken`" in note and "Grid" not in note


def test_searched_keys_of_every_stage_are_config_keys():
    for name, stage in all_stages().items():
        keys = searched_keys(stage, dict(DEFAULTS))
        assert keys and keys <= set(DEFAULTS), name
    assert set(REPORTS_CHOSE) <= set(all_stages())


def test_chain_record_shows_the_chain_in_the_dashboard(sqlite_url):
    # Defect: the chain's record study showed in optuna-dashboard as an empty MINIMIZE study.
    from hpo.studies import chain as chains
    from hpo.views.chain_view import write_chain_note

    storage = open_storage(sqlite_url)
    stages = chains.parse_chain("stage1_layers..stage2_fc")
    record = chains.open_chain(storage, "c", stages, {})
    first = stages[0]
    open_study(storage, StudyRequest(chains.study_name("c", first), first.name, chains.stage_flags(record), default_n_trials=chains.stage_budget(first, record), chain_base=True))
    write_chain_note(storage, "c")
    studies = storage.get_all_studies()  # the dashboard lists them in this order (by id)
    names = [s.study_name for s in studies]
    assert names.index("c") + 1 == names.index("c.stage1_layers")
    assert studies[names.index("c")].directions == studies[names.index("c.stage1_layers")].directions
    assert studies[names.index("c")].direction == optuna.study.StudyDirection.MAXIMIZE
    note = get_note(optuna.load_study(study_name="c", storage=storage))
    assert "## Chain `c`" in note
    assert "| `stage1_layers` | `c.stage1_layers` | active | 0/20 |" in note
    assert "| `stage2_fc` | `c.stage2_fc` | not started |" in note
