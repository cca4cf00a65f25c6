"""``hpo create-chain``: the set-up step of docker-compose.yml (and optionally of a SLURM job)
stores a chain's record once, before its workers start; they join it with nothing but its range
and name. Re-running it is harmless; other settings, or bad input, are one line and store
nothing."""

from __future__ import annotations

import optuna
import pytest

from hpo.store import study_records
from tests.conftest import run_cli

CHAIN = ("--chain", "stage6_batchnorm..stage8_schedule", "--chain-name", "night")


def _record(url: str, name: str = "night") -> dict:
    storage = optuna.storages.RDBStorage(url)
    try:
        return study_records.read(storage, name)["chain"]
    finally:
        storage.engine.dispose()


def test_create_chain_stores_the_record_once_and_a_worker_joins_with_its_name(sqlite_url):
    created = run_cli("hpo", "create-chain", *CHAIN, "--epochs", "2", "--n-trials", "3",
                      "--dataset", "cifar10-sample", "--storage", sqlite_url, check=True)
    assert created.stdout.startswith("chain 'night' created: stage6_batchnorm..stage8_schedule "
                                     "(3 stages; trials per stage: stage6_batchnorm 3"), created.stdout
    record = _record(sqlite_url)
    assert record["stages"] == ["stage6_batchnorm", "stage7_optimizer", "stage8_schedule"]
    assert (record["epochs"], record["n_trials"], record["dataset"]) == (2, 3, "cifar10-sample")

    again = run_cli("hpo", "create-chain", *CHAIN, "--epochs", "2", "--storage", sqlite_url,
                    check=True)  # a compose `up` run again: same settings, nothing changes
    assert "exists with these settings; kept" in again.stdout
    assert _record(sqlite_url) == record

    # What a compose or SLURM worker does: only the range and the name on its command line.
    from hpo.studies.chain import open_chain, parse_chain
    from hpo.store.storage import open_storage
    from hpo.studies.settings import flags_from
    from hpo.runtime.worker import build_parser

    args = build_parser().parse_args([*CHAIN])
    storage = open_storage(sqlite_url)
    try:
        joined = open_chain(storage, args.chain_name, parse_chain(args.chain), flags_from(args))
    finally:
        storage.dispose()
    assert joined == record


def test_create_chain_with_other_settings_for_an_existing_name_is_refused(sqlite_url):
    run_cli("hpo", "create-chain", *CHAIN, "--epochs", "2", "--storage", sqlite_url, check=True)
    before = _record(sqlite_url)
    result = run_cli("hpo", "create-chain", *CHAIN, "--epochs", "5", "--storage", sqlite_url)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "chain 'night' was created with --epochs 2; got 5" in result.stderr
    assert _record(sqlite_url) == before


@pytest.mark.parametrize("args, message", [
    (("--chain", "stage8_schedule..stage1_layers"), "stage1_layers comes before stage8_schedule"),
    (("--chain", "nonsense"), "--chain 'nonsense' is invalid"),
    (("--chain-name", "a b"), "--chain-name 'a b' is invalid"),
    (("--space", "stage1_layers"), "--space names one study's stage"),
    (("--dataset", "nope"), "unknown dataset 'nope'"),
    (("--epochs", "0"), "--epochs"),
])
def test_create_chain_bad_input_is_one_line_and_creates_no_database(tmp_path, args, message):
    result = run_cli("hpo", "create-chain", *args, "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "x.db").exists()
