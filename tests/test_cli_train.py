"""`hpo train CONFIG.json`: end to end in a subprocess, usage errors as one line and exit 2."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.conftest import run_cli
from hpo.cli import main

CONFIG = {"conv_layers": 2, "filters": [8, 16], "fc_widths": [32], "batch_size": 32,
          "optimizer": "adam", "lr": 0.001, "epochs": 5}


def write(path, content) -> str:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_cli_train_end_to_end(tmp_path):
    cfg = write(tmp_path / "cfg.json", CONFIG)
    out = tmp_path / "model.pt"
    r = run_cli("hpo", "train", cfg, "--epochs", "1", "--train-size", "300", "--device", "cpu",
                "-o", str(out), timeout=240)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert re.search(r"^epoch 1/1 ", r.stdout, re.M)  # --epochs overrides the config's 5
    assert "epoch 2/" not in r.stdout
    val = re.search(r"^validation accuracy (\d\.\d{4}) \(last epoch: these weights; best epoch (\d\.\d{4})\)$",
                    r.stdout, re.M)
    test = re.search(r"^test accuracy (\d\.\d{4})$", r.stdout, re.M)
    assert val and test, r.stdout
    assert all(0 <= float(v) <= 1 for v in (*val.groups(), test.group(1)))
    assert re.search(r"^parameters [\d,]+;.* on cpu$", r.stdout, re.M)

    saved = torch.load(out, weights_only=False)
    assert saved["config"]["epochs"] == 1 and saved["config"]["filters"] == [8, 16]
    assert len(saved["history"]) == 1 and len(saved["classes"]) == 10
    from hpo.training.config import from_dict
    from hpo.training.model import build_model

    model = build_model(from_dict(saved["config"]))
    model.load_state_dict(saved["model"])  # the checkpoint rebuilds the exact network


def assert_usage_error(r_code: int, stderr: str, *words: str) -> None:
    assert r_code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hpo: error: ")
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0]


def test_cli_train_bad_json_in_subprocess(tmp_path):
    cfg = write(tmp_path / "cfg.json", '{"conv_layers": 2,')
    r = run_cli("hpo", "train", cfg, "--device", "cpu", timeout=120)
    assert_usage_error(r.returncode, r.stderr, "cfg.json", "not valid JSON")
    assert r.stdout == ""


@pytest.mark.parametrize("content,args,words", [
    ({**CONFIG, "filterz": [8]}, [], ["'filterz'", "known fields", "kernel_size"]),
    ({**CONFIG, "pool": "min"}, [], ["'pool'", "max, avg, none"]),
    ({**CONFIG, "kernel_size": 7, "stride": 2, "padding": 0, "conv_layers": 4,
      "filters": [4, 4, 4, 4]}, ["--train-size", "50"], ["impossible geometry"]),
    (CONFIG, ["--device", "tpu9"], ["'tpu9'", "cpu"]),
    (CONFIG, ["--dataset", "cifar11"], ["'cifar11'", "cifar10-sample"]),
    (CONFIG, ["--train-size", "0"], ["--train-size '0'", "1 or more"]),
    (CONFIG, ["--threads", "0"], ["--threads '0'", "1 or more"]),
    ("[1, 2]", [], ["expected a JSON object"]),
], ids=["unknown-key", "bad-value", "geometry", "bad-device", "bad-dataset", "bad-train-size",
        "bad-threads", "not-object"])
def test_cli_train_usage_errors(tmp_path, capsys, content, args, words):
    cfg = write(tmp_path / "cfg.json", content)
    try:
        code = main(["train", cfg, "--device", "cpu", *args])  # a later --device wins
    except SystemExit as e:  # argparse's own range checks exit from parse_args
        code = e.code
    captured = capsys.readouterr()
    assert_usage_error(code, captured.err, *words)


def test_cli_train_missing_file(tmp_path, capsys):
    code = main(["train", str(tmp_path / "nope.json"), "--device", "cpu"])
    assert_usage_error(code, capsys.readouterr().err, "nope.json", "cannot read")


def test_cli_train_debug_shows_traceback(tmp_path):
    from hpo.errors import HpoError

    cfg = write(tmp_path / "cfg.json", {**CONFIG, "filterz": [8]})
    with pytest.raises(HpoError, match="filterz"):
        main(["--debug", "train", cfg, "--device", "cpu"])


def test_cli_train_export_document_and_quiet(tmp_path, capsys):
    doc = {"config": CONFIG, "dataset": "cifar10-sample", "train_size": 100, "value": 0.5,
           "history": []}
    cfg = write(tmp_path / "best.json", doc)
    code = main(["train", cfg, "--epochs", "1", "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "epoch 1/1" not in out  # --quiet
    assert re.search(r"^test accuracy \d\.\d{4}$", out, re.M)
    assert "exported validation accuracy 0.5000" in out


def test_cli_train_divergence_exits_2(tmp_path, capsys):
    cfg = write(tmp_path / "cfg.json", {**CONFIG, "optimizer": "sgd", "lr": 1e4})
    code = main(["train", cfg, "--epochs", "2", "--train-size", "128", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 2
    assert re.search(r"^diverged: .*loss", out, re.M)
    assert "test accuracy" not in out


@pytest.fixture
def recorded_fit(monkeypatch):
    """hpo train with fit and the backend recorded, training one tiny epoch for real."""
    import hpo.training.train

    seen = {}
    real_fit, real_backend = hpo.training.train.fit, hpo.training.train.configure_backend

    def fit(config, data, on_epoch=None, bf16=False, **kwargs):
        seen["bf16"] = bf16
        return real_fit(config, data, on_epoch=on_epoch, bf16=bf16, **kwargs)

    def configure_backend(device, matmul_precision="highest", deterministic=False):
        seen["backend"] = (matmul_precision, deterministic)
        real_backend(device, matmul_precision)

    monkeypatch.setattr(hpo.training.train, "fit", fit)
    monkeypatch.setattr(hpo.training.train, "configure_backend", configure_backend)
    return seen


@pytest.mark.parametrize("doc, flags, bf16, said", [
    ({"precision": "bf16"}, [], True, "precision bf16 (as the trial ran)"),
    ({"bf16": True}, [], True, "precision bf16 (as the trial ran)"),  # an export before 'precision'
    ({"bf16": False}, [], False, "precision fp32 (as the trial ran)"),
    ({"precision": "fp32"}, ["--precision", "bf16"], True, "precision bf16 (as asked)"),
    ({"precision": "fp32"}, ["--bf16"], True, "precision bf16 (as asked)"),
    ({"precision": "bf16"}, ["--precision", "fp32"], False, "precision fp32 (as asked)"),
])
def test_cli_train_precision_is_the_trials_unless_asked(tmp_path, capsys, recorded_fit, doc, flags,
                                                        bf16, said):
    cfg = write(tmp_path / "best.json", {"config": CONFIG, "train_size": 64, **doc})
    assert main(["train", cfg, "--epochs", "1", "--device", "cpu", "--quiet", *flags]) == 0
    assert recorded_fit["bf16"] is bf16
    assert said in capsys.readouterr().out


@pytest.mark.parametrize("native", [True, False])
def test_cli_train_bare_config_decides_auto_for_its_device(tmp_path, capsys, recorded_fit,
                                                           monkeypatch, native):
    from hpo.training import precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: (native, "stand-in CPU"))
    cfg = write(tmp_path / "cfg.json", CONFIG)
    assert main(["train", cfg, "--epochs", "1", "--train-size", "64", "--device", "cpu",
                 "--quiet"]) == 0
    assert recorded_fit["bf16"] is native
    assert f"precision {'bf16' if native else 'fp32'} (auto: stand-in CPU)" in \
        capsys.readouterr().out


def test_cli_train_reuses_the_trials_deterministic_setting(tmp_path, capsys, recorded_fit):
    cfg = write(tmp_path / "best.json", {"config": CONFIG, "train_size": 64, "precision": "fp32",
                                         "deterministic": True, "matmul_precision": "high"})
    assert main(["train", cfg, "--epochs", "1", "--device", "cpu", "--quiet"]) == 0
    assert recorded_fit["backend"] == ("high", True)
    assert "precision fp32 (as the trial ran), deterministic" in capsys.readouterr().out


def test_cli_train_bf16_contradicting_precision_is_one_line(tmp_path, capsys):
    cfg = write(tmp_path / "cfg.json", CONFIG)
    code = main(["train", cfg, "--bf16", "--precision", "fp32", "--device", "cpu"])
    assert_usage_error(code, capsys.readouterr().err, "--bf16", "--precision fp32")
