"""Torch stays inside the training layer and the trial runner: `hpo status`, `hpo export` and
the storage package run without importing it (importing torch takes seconds; a status query
should not).

Each check runs in a fresh interpreter against a sqlite study and looks at ``sys.modules``
after the command has run, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import optuna
import pytest

import hpo.store

PROBE = """
import json, sys
from hpo.cli import main
code = main({argv!r})
print(json.dumps({{"code": code, "torch": sorted(m for m in sys.modules
                                              if m == "torch" or m.startswith("torch."))[:5]}}))
"""


def _probe(source: str) -> dict:
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def finished_study(sqlite_url):
    """A sqlite study with one complete trial carrying the config `hpo export` reads."""
    study = optuna.create_study(study_name="stage1_layers", storage=sqlite_url,
                                direction="maximize")
    trial = study.ask()
    trial.suggest_int("num_conv_layers", 1, 4)
    trial.set_user_attr("config", {"num_conv_layers": 2})
    study.tell(trial, 0.5)
    return sqlite_url


def test_hpo_status_does_not_import_torch(finished_study):
    out = _probe(PROBE.format(argv=["status", "--storage", finished_study]))
    assert out == {"code": 0, "torch": []}


def test_hpo_export_does_not_import_torch(finished_study, tmp_path):
    path = tmp_path / "best.json"
    out = _probe(PROBE.format(argv=["export", "--storage", finished_study,
                                    "--study", "stage1_layers", "-o", str(path)]))
    assert out == {"code": 0, "torch": []}
    assert json.loads(path.read_text())["config"] == {"num_conv_layers": 2}


def test_storage_package_does_not_import_torch():
    modules = sorted(f"hpo.store.{m.name}" for m in pkgutil.iter_modules(hpo.store.__path__))
    assert "hpo.store.storage" in modules
    source = ("import importlib, json, sys\n"
              f"for name in {modules!r}:\n"
              "    importlib.import_module(name)\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:5]))")
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_only_the_training_layer_and_the_trial_runner_import_torch():
    # Anywhere else, even inside a function, torch would reach `hpo status` or the storage
    # layer through one innocent call; those layers call into hpo.training instead.
    import ast
    from pathlib import Path

    root = Path(hpo.store.__file__).parents[1]
    allowed = {root / "runtime" / "runner.py"}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.is_relative_to(root / "training") or path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "torch" or n.startswith("torch.") for n in names):
                offenders.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert offenders == []


def test_hpo_holds_only_the_layer_packages_and_the_command_line():
    # A new module goes into the layer it belongs to; the top of hpo/ is the command line.
    from pathlib import Path

    root = Path(hpo.store.__file__).parents[1]
    top = {p.name for p in root.iterdir() if not p.name.startswith((".", "__pycache__"))}
    assert top == {"__init__.py", "cli.py", "flags.py", "errors.py", "training", "studies",
                   "runtime", "store", "views"}
