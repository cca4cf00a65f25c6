"""Usage errors of hpo-worker and hpo: exit 2 (1 for a database that cannot be reached), one
``error:`` line naming the bad value and the valid ones, no traceback, and the study database
left exactly as it was."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
import torch

from tests.conftest import run_cli
from tests.workers import populate_stage1_study

STAGES = "stage1_layers, stage2_fc, stage3_filters"
DB = "{db}"  # replaced by the populated database's URL
EXIT = {"storage_unreachable": 1}  # a failure at run time; every other case is a usage error (2)
# id: (argv, fragments the error line must contain, study name the command would create or touch)
CASES = {
    "unknown_stage": (["hpo-worker", "--study", "stage3_filter", "--storage", DB],
                      ["'stage3_filter'", STAGES], "stage3_filter"),
    "bad_sampler": (["hpo-worker", "--study", "fresh_sampler", "--space", "stage1_layers",
                     "--sampler", "annealing", "--storage", DB],
                    ["'annealing'", "tpe, random, grid, gp, cmaes"], "fresh_sampler"),
    "bad_pruner": (["hpo-worker", "--study", "stage1_layers", "--pruner", "sometimes",
                    "--storage", DB], ["'sometimes'", "median, hyperband, none"], "stage1_layers"),
    "device_name": (["hpo-worker", "--study", "stage1_layers", "--devices", "gpu7",
                     "--storage", DB], ["'gpu7'", "auto, cpu, cuda:N"], "stage1_layers"),
    "device_cuda_absent": (["hpo-worker", "--study", "stage1_layers", "--devices", "cuda:0",
                            "--storage", DB], ["'cuda:0'", "0 CUDA device(s)", "cpu"],
                           "stage1_layers"),
    "storage_bare_path": (["hpo-worker", "--study", "stage1_layers", "--storage", "{tmp}/hpo.db"],
                          ["'{tmp}/hpo.db'", "sqlite:///{tmp}/hpo.db"], None),
    "storage_scheme": (["hpo-worker", "--study", "stage1_layers", "--storage",
                        "mysql://hpo@127.0.0.1/hpo"],
                       ["'mysql'", "sqlite, postgresql, postgresql+psycopg2"], None),
    "storage_unreachable": (["hpo-worker", "--study", "stage1_layers", "--storage",
                             "postgresql+psycopg2://hpo:s3cret-pw@127.0.0.1:1/hpo"],
                            ["cannot open storage", "hpo:***@127.0.0.1:1/hpo", "refused"], None),
    "settings_mismatch": (["hpo-worker", "--study", "stage1_layers", "--epochs", "3",
                           "--storage", DB], ["epochs=1", "got 3"], "stage1_layers"),
    "missing_from_file": (["hpo-worker", "--study", "fresh_from", "--space", "stage2_fc",
                           "--from", "{tmp}/missing.json", "--storage", DB],
                          ["'{tmp}/missing.json'"], "fresh_from"),
    "bad_dataset": (["hpo-worker", "--study", "fresh_dataset", "--space", "stage1_layers",
                     "--dataset", "cifar11", "--storage", DB, "--devices", "cpu"],
                    ["'cifar11'", "cifar10-sample, cifar10, cifar100"], "fresh_dataset"),
    "export_bare_path": (["hpo", "export", "--study", "stage1_layers", "--storage", "hpo.db"],
                         ["'hpo.db'", "sqlite:///hpo.db"], None),
    "status_scheme": (["hpo", "status", "--storage", "redis://127.0.0.1/0"],
                      ["'redis'", "sqlite, postgresql"], None),
}


def _snapshot(url: str) -> dict:
    """Everything a failing command could have changed, per study."""
    storage = optuna.storages.RDBStorage(url)
    try:
        out = {}
        for summary in storage.get_all_studies():
            trials = storage.get_all_trials(summary._study_id)
            out[summary.study_name] = {
                "user_attrs": summary.user_attrs,
                "system_attrs": summary.system_attrs,
                "trials": [(t.number, t.state.name, t.params, t.values, t.user_attrs,
                            t.intermediate_values) for t in trials],
            }
        return out
    finally:
        storage.engine.dispose()


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Populate a database with a stage1_layers study, run every case against it (four at a time,
    the commands are independent), and return (results by case, snapshot before, after, tmp)."""
    tmp = tmp_path_factory.mktemp("cli_errors")
    url = f"sqlite:///{tmp / 'populated.db'}"
    populate_stage1_study(url, "stage1_layers")
    before = _snapshot(url)

    def run(case: str):
        argv = [a.replace(DB, url).replace("{tmp}", str(tmp)) for a in CASES[case][0]]
        return case, run_cli(*argv, cwd=tmp, env={"OMP_NUM_THREADS": "1"}, timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(run, CASES))
    return results, before, _snapshot(url), tmp


@pytest.mark.parametrize("case", list(CASES))
def test_cli_error_is_one_line_naming_bad_and_valid_values(ran, case):
    if case == "device_cuda_absent" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    results, _, _, tmp = ran
    argv, fragments, _ = CASES[case]
    result = results[case]
    assert result.returncode == EXIT.get(case, 2), (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0] == result.stderr.strip().splitlines()[-1]
    assert errors[0].startswith(f"{argv[0]}: error: ")
    for fragment in fragments:
        assert fragment.replace("{tmp}", str(tmp)) in errors[0], errors[0]
    assert "s3cret-pw" not in result.stderr + result.stdout


@pytest.mark.parametrize("case", [c for c, (_, _, study) in CASES.items() if study])
def test_cli_error_leaves_database_intact(ran, case):
    results, before, after, _ = ran
    assert results[case].returncode == EXIT.get(case, 2)
    study = CASES[case][2]
    assert after.get(study) == before.get(study), \
        f"a failing `{' '.join(CASES[case][0][:2])}` changed study {study!r}"


def test_cli_errors_leave_whole_database_intact_with_its_trials(ran):
    _, before, after, _ = ran
    assert len(before["stage1_layers"]["trials"]) == 3  # the queued warm start and two complete
    assert after["stage1_layers"] == before["stage1_layers"]



def _help_texts() -> dict[str, str]:
    """Every --help both programs print, by command line."""
    from hpo import cli
    from hpo.runtime import worker

    texts = {"hpo-worker": worker.build_parser().format_help()}
    parser = cli.build_parser()
    texts["hpo"] = parser.format_help()
    commands = next(a for a in parser._actions if a.dest == "command").choices  # argparse's own
    for name, sub in commands.items():
        texts[f"hpo {name}"] = sub.format_help()
    return texts


def test_help_texts_are_plain_words():
    # Defect: `hpo --help` printed the module docstring, RST backticks included.
    texts = _help_texts()
    assert {"hpo", "hpo-worker", "hpo stages", "hpo train"} <= set(texts)
    for command, text in texts.items():
        assert "`" not in text, command
        assert ":class:" not in text and "\n.. " not in text, command
