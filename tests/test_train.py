"""The trainer: learning, divergence, determinism, resume, interruption, regularisation, early stop."""

from __future__ import annotations

import dataclasses
import io
import threading

import pytest
import torch

import hpo.train
from hpo.config import OPTIMIZERS, SCHEDULERS, from_dict
from hpo.data import DeviceData
from hpo.errors import HpoError
from hpo.model import build_model, count_parameters, penalised_weights
from hpo.train import Interrupted, evaluate, fit, make_optimizer, make_scheduler, resolve_device

TINY = {"conv_layers": 2, "filters": [8, 16], "fc_widths": [32], "batch_size": 32, "epochs": 1}


def tiny(**changes):
    return from_dict({**TINY, **changes})


@pytest.fixture(scope="module")
def tiny_data(sample_images):
    """128 training and 100 validation images: for tests about control flow, not learning."""
    return DeviceData(sample_images, "cpu", val_fraction=0.02, split_seed=0, train_size=128)


def metrics(history):
    """Everything but wall time, which never repeats."""
    return [{k: v for k, v in dataclasses.asdict(m).items() if k != "seconds"} for m in history]


def test_train_loss_falls_on_sample(small_data):
    result = fit(tiny(epochs=2, optimizer="adam", lr=1e-3), small_data)
    assert result.status == "completed" and result.reason == ""
    assert [m.epoch for m in result.history] == [1, 2]
    assert result.history[-1].train_loss < result.history[0].train_loss
    for m in result.history:
        assert 0 <= m.train_acc <= 1 and 0 <= m.val_acc <= 1 and m.seconds > 0
    assert result.best_val_acc == max(m.val_acc for m in result.history)
    assert result.params == count_parameters(result.model)
    assert result.seconds > 0
    assert len(result.history_dicts()) == 2


def test_train_evaluate_matches_manual_accuracy(tiny_data):
    torch.manual_seed(0)
    model = build_model(tiny())
    loss, acc = evaluate(model, tiny_data, tiny_data.val)
    with torch.no_grad():
        out = model(tiny_data.normalize(tiny_data.val.x))
    assert acc == pytest.approx((out.argmax(1) == tiny_data.val.y).float().mean().item())
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(out, tiny_data.val.y).item(),
                                 rel=1e-5)


def test_train_divergence_is_recorded(tiny_data):
    result = fit(tiny(epochs=3, lr=1e4, momentum=0.9), tiny_data)
    assert result.status == "diverged"
    assert "loss" in result.reason
    assert len(result.history) < 3
    assert all(torch.isfinite(torch.tensor(m.train_loss)) for m in result.history)


def test_train_is_deterministic_on_cpu(tiny_data):
    config = tiny(epochs=2, conv_dropout=0.2, fc_dropout=0.3, flip=True, crop_padding=2,
                  conv_batchnorm=True)
    a, b = fit(config, tiny_data), fit(config, tiny_data)
    assert metrics(a.history) == metrics(b.history)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    c = fit(config.replace(seed=1), tiny_data)
    assert metrics(c.history) != metrics(a.history)


def test_train_resume_matches_uninterrupted_run(tiny_data):
    config = tiny(epochs=2, fc_dropout=0.3, conv_batchnorm=True, flip=True, crop_padding=2,
                  scheduler="step", step_size=1, gamma=0.5)
    saved: dict = {}

    def keep(m, checkpoint):
        if m.epoch == 1:
            saved["live"] = checkpoint()  # kept as given, the way a caller would hold it
            buffer = io.BytesIO()
            torch.save(checkpoint(), buffer)
            saved["bytes"] = buffer.getvalue()

    full = fit(config, tiny_data, on_epoch=keep)
    assert [m.lr for m in full.history] == [0.01, 0.005]
    for kind in ("live", "bytes"):
        ckpt = saved["live"] if kind == "live" else torch.load(io.BytesIO(saved["bytes"]),
                                                               weights_only=False)
        seen = []
        resumed = fit(config, tiny_data, on_epoch=lambda m, _c: seen.append(m.epoch), resume=ckpt)
        assert seen == [2], kind
        assert metrics(resumed.history) == metrics(full.history), kind
        assert all(torch.equal(p, q) for p, q in
                   zip(resumed.model.state_dict().values(), full.model.state_dict().values())), kind


def test_train_impossible_geometry_fails_before_training(tiny_data, monkeypatch):
    def no_batches(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(tiny_data, "train_batches", no_batches)
    config = from_dict({**TINY, "conv_layers": 4, "filters": [4] * 4, "kernel_size": 7,
                        "stride": 2, "padding": 0})
    with pytest.raises(HpoError, match="impossible geometry"):
        fit(config, tiny_data)


def test_train_stop_event_raises_interrupted(tiny_data):
    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted):
        fit(tiny(epochs=2), tiny_data, stop=stop)


def test_train_stop_event_mid_run(tiny_data):
    stop = threading.Event()
    epochs = []

    def on_epoch(m, _checkpoint):
        epochs.append(m.epoch)
        stop.set()

    with pytest.raises(Interrupted):
        fit(tiny(epochs=3), tiny_data, on_epoch=on_epoch, stop=stop)
    assert epochs == [1]


def test_train_on_epoch_exception_propagates(tiny_data):
    class Pruned(Exception):
        pass

    def prune(m, _checkpoint):
        raise Pruned

    with pytest.raises(Pruned):
        fit(tiny(epochs=2), tiny_data, on_epoch=prune)


def test_train_l1_adds_to_loss_and_shrinks_weights(tiny_data):
    plain = fit(tiny(), tiny_data)
    l1 = fit(tiny(l1=1e-3), tiny_data)
    assert l1.history[0].train_loss > plain.history[0].train_loss + 1e-3

    def size(model):
        return sum(w.abs().sum().item() for w in penalised_weights(model))

    assert size(l1.model) < size(plain.model)


def test_train_weight_decay_shrinks_weights(tiny_data):
    plain = fit(tiny(), tiny_data)
    decayed = fit(tiny(weight_decay=0.5), tiny_data)

    def norm(model):
        return sum(w.pow(2).sum().item() for w in penalised_weights(model))

    assert norm(decayed.model) < norm(plain.model)


def fake_evaluate(monkeypatch, accuracies):
    """Validation accuracies in this order, whatever the model does."""
    values = iter(accuracies)
    monkeypatch.setattr(hpo.train, "evaluate", lambda *a, **k: (1.0, next(values, accuracies[-1])))


def test_train_early_stopping(tiny_data, monkeypatch):
    fake_evaluate(monkeypatch, [0.5, 0.6, 0.55, 0.58, 0.7, 0.8])
    result = fit(tiny(epochs=6, early_stop_patience=2), tiny_data)
    assert result.status == "early_stopped"
    assert "no validation improvement" in result.reason and "2" in result.reason
    assert [m.val_acc for m in result.history] == [0.5, 0.6, 0.55, 0.58]
    assert result.best_val_acc == 0.6


def test_train_no_early_stopping_when_patience_zero(tiny_data, monkeypatch):
    fake_evaluate(monkeypatch, [0.5, 0.4, 0.3])
    result = fit(tiny(epochs=3), tiny_data)
    assert result.status == "completed" and len(result.history) == 3


def test_train_early_stopping_counts_epochs_before_resume(tiny_data, monkeypatch):
    saved = {}

    def keep(m, checkpoint):
        if m.epoch == 3:
            saved["ckpt"] = checkpoint()

    config = tiny(epochs=6, early_stop_patience=2)
    fake_evaluate(monkeypatch, [0.5, 0.6, 0.55, 0.58])
    fit(config, tiny_data, on_epoch=keep)
    fake_evaluate(monkeypatch, [0.58, 0.7])
    resumed = fit(config, tiny_data, resume=saved["ckpt"])
    assert resumed.status == "early_stopped"
    assert [m.val_acc for m in resumed.history] == [0.5, 0.6, 0.55, 0.58]


def test_train_lone_last_sample_with_batchnorm(sample_images):
    data = DeviceData(sample_images, "cpu", val_fraction=0.02, train_size=65)
    result = fit(tiny(batch_size=32, fc_batchnorm=True, conv_batchnorm=True), data)
    assert result.status == "completed"


def test_train_bf16_autocast_runs_on_cpu(tiny_data):
    result = fit(tiny(), tiny_data, bf16=True)
    assert result.status == "completed"
    assert torch.isfinite(torch.tensor(result.history[0].train_loss))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_train_optimizer_builds_and_steps(optimizer):
    torch.manual_seed(0)
    model = build_model(tiny(optimizer=optimizer, weight_decay=1e-4))
    opt = make_optimizer(tiny(optimizer=optimizer, weight_decay=1e-4, lr=0.1), model.parameters())
    assert opt.param_groups[0]["lr"] == 0.1
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)),
                                             torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_train_sgd_momentum_and_nesterov():
    opt = make_optimizer(tiny(momentum=0.8, nesterov=True), build_model(tiny()).parameters())
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.8 and opt.param_groups[0]["nesterov"]


# scheduler -> learning rates over 4 epochs from lr 1.0 (plateau sees a flat validation loss)
SCHEDULES = {
    "none": [1.0, 1.0, 1.0, 1.0],
    "step": [1.0, 0.5, 0.5, 0.25],
    "multistep": [1.0, 0.5, 0.5, 0.25],
    "cosine": [1.0, 0.8535533905932737, 0.5, 0.14644660940672627],  # (1 + cos(pi t / 4)) / 2
}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_train_scheduler_builds_and_steps(scheduler):
    config = tiny(scheduler=scheduler, lr=1.0, momentum=0.0, epochs=4, step_size=2, gamma=0.5,
                  milestones=[1, 3])
    opt = make_optimizer(config, build_model(config).parameters())
    sched = make_scheduler(config, opt)
    assert (sched is None) == (scheduler == "none")
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if scheduler == "plateau":
            sched.step(1.0)
        elif sched is not None:
            sched.step()
    if scheduler == "step":
        assert lrs == [1.0, 1.0, 0.5, 0.5]
    elif scheduler == "plateau":
        assert lrs[0] == 1.0 and lrs[-1] < 1.0
    else:
        assert lrs == pytest.approx(SCHEDULES[scheduler])


def test_train_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(HpoError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(HpoError, match="CUDA is not available"):
            resolve_device("cuda")
