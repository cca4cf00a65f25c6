"""The trainer: learning, divergence, determinism, resume, interruption, regularisation, early stop."""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import threading

import pytest
import torch

import hpo.training.train
from hpo.training.config import OPTIMIZERS, SCHEDULERS, from_dict
from hpo.training.data import DeviceData
from hpo.errors import HpoError
from hpo.training.model import build_model, count_parameters, penalised_weights
from hpo.training.snapshots import READY_KEY, host_copy, restore, snapshot
from hpo.training.train import (MATMUL_PRECISIONS, Interrupted, configure_backend, evaluate, fit,
                                make_optimizer, make_scheduler, resolve_device)

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
    monkeypatch.setattr(hpo.training.train, "evaluate", lambda *a, **k: (1.0, next(values, accuracies[-1])))


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


def tensors(obj):
    """Every tensor in a nest of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors(v)


def test_train_checkpoint_is_a_host_copy_independent_of_live_weights(tiny_data):
    config = tiny(epochs=2, optimizer="adam", conv_batchnorm=True, scheduler="step", step_size=1)
    saved = {}

    def keep(m, checkpoint):
        if m.epoch == 1:
            saved["ckpt"] = checkpoint()
            buffer = io.BytesIO()
            torch.save(checkpoint(), buffer)
            saved["bytes"] = buffer.getvalue()

    result = fit(config, tiny_data, on_epoch=keep)
    ckpt, then = saved["ckpt"], torch.load(io.BytesIO(saved["bytes"]), weights_only=False)
    assert set(ckpt) == {"model", "optimizer", "scheduler", "history", "seconds", "rng_cpu",
                         "rng_cuda"}
    assert all(t.device.type == "cpu" for t in tensors(ckpt))
    assert ckpt["rng_cpu"].dtype == torch.uint8 and ckpt["rng_cuda"] is None
    live = {t.untyped_storage().data_ptr() for t in tensors(result.model.state_dict())}
    assert not live & {t.untyped_storage().data_ptr() for t in tensors(ckpt)}
    # the live weights trained on for another epoch; the snapshot did not move with them
    for k, v in ckpt["model"].items():
        assert torch.equal(v, then["model"][k]), k
    assert not torch.equal(ckpt["model"]["0.weight"], result.model.state_dict()["0.weight"])
    assert [m["epoch"] for m in ckpt["history"]] == [1]


def test_train_snapshot_of_device_state_lands_on_host(monkeypatch):
    """Model and optimizer state on cuda:0 (fake tensors: no GPU needed) are copied to the CPU,
    not duplicated on the device; both RNG states are CPU ByteTensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    config = tiny(optimizer="adam", conv_batchnorm=True, scheduler="multistep", milestones=[1, 3])
    with FakeTensorMode():
        with torch.device("cuda"):
            model = build_model(config)
        optimizer = make_optimizer(config, model.parameters())
        for p in model.parameters():
            optimizer.state[p] = {"step": torch.tensor(1.0, device="cpu"),
                                  "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    scheduler = make_scheduler(config, optimizer)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    calls = []
    def get_rng_state(device="cuda"):  # the real one returns a CPU ByteTensor too
        calls.append(device)
        return torch.zeros(16, dtype=torch.uint8)

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    recorded = []

    class Event:  # the copies are queued, not waited for: an event says when they are done
        def record(self, stream):
            recorded.append(stream)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"stream of {device}")
    state = snapshot(model, optimizer, scheduler, [], 0.0, torch.device("cuda", 0))
    assert calls == [torch.device("cuda", 0)]
    assert isinstance(state.pop(READY_KEY), Event) and recorded == ["stream of cuda:0"]
    assert {t.device.type for t in tensors(state["model"])} == {"cpu"}
    assert {t.device.type for t in tensors(state["optimizer"])} == {"cpu"}
    for key in ("rng_cpu", "rng_cuda"):
        assert state[key].device.type == "cpu" and state[key].dtype == torch.uint8, key
    assert isinstance(state["scheduler"]["milestones"], collections.Counter)


def test_train_host_copy_keeps_types_and_sharing():
    shared = torch.arange(3.0, requires_grad=True)
    obj = {"a": [shared, (shared, 2)], "c": collections.Counter({5: 1}), "n": None}
    out = host_copy(obj)
    assert out["a"][0] is out["a"][1][0] and out["a"][0] is not shared
    assert not out["a"][0].requires_grad and torch.equal(out["a"][0], shared.detach())
    assert isinstance(out["a"][1], tuple) and out["a"][1][1] == 2
    assert isinstance(out["c"], collections.Counter) and out["c"] is not obj["c"]
    shared.data.add_(1)
    assert torch.equal(out["a"][0], torch.arange(3.0))


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter:UserWarning")
@pytest.mark.parametrize("rng_on", ["cpu", "device"])
def test_train_restore_moves_state_to_the_device_and_keeps_rng_on_cpu(tiny_data, monkeypatch,
                                                                       rng_on):
    """A CPU checkpoint restored for a CUDA worker: model and optimizer state go to where the
    parameters live (meta stands in for the GPU), the RNG states to torch as CPU ByteTensors,
    even from a checkpoint read with map_location=<device> (rng_on="device": fake cuda:0 tensors,
    as the old loader gave; torch.set_rng_state refuses them)."""
    config = tiny(optimizer="adam", scheduler="step", step_size=1)
    saved = {}
    fit(config, tiny_data, on_epoch=lambda m, checkpoint: saved.update(ckpt=checkpoint()))
    ckpt = host_copy(saved["ckpt"])
    ckpt["rng_cuda"] = torch.arange(16, dtype=torch.uint8)  # as if written by a CUDA run
    if rng_on == "device":
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode(allow_non_fake_inputs=True):
            for key in ("rng_cpu", "rng_cuda"):
                ckpt[key] = ckpt[key].to("cuda")
        assert ckpt["rng_cpu"].device.type == ckpt["rng_cuda"].device.type == "cuda"
    model = build_model(config).to("meta")
    optimizer = make_optimizer(config, model.parameters())
    scheduler = make_scheduler(config, optimizer)
    cpu_rng, cuda_rng = [], []
    monkeypatch.setattr(torch, "set_rng_state", cpu_rng.append)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": cuda_rng.append((state, device)))
    history, seconds = restore(ckpt, model, optimizer, scheduler, torch.device("cuda", 0))
    assert [m.epoch for m in history] == [1] and seconds == ckpt["seconds"]
    assert [(s.device.type, s.dtype) for s in cpu_rng] == [("cpu", torch.uint8)]
    if rng_on == "cpu":
        assert torch.equal(cpu_rng[0], ckpt["rng_cpu"])
    [(state, device)] = cuda_rng
    assert (state.device.type, state.dtype, device) == ("cpu", torch.uint8, torch.device("cuda", 0))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    moments = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    assert moments and {t.device.type for t in moments} == {"meta"}
    # Adam's step count stays a CPU scalar unless capturable/fused, as torch expects
    assert {s["step"].device.type for s in optimizer.state.values()} == {"cpu"}
    assert scheduler.last_epoch == 1 and optimizer.param_groups[0]["lr"] == pytest.approx(0.001)


def test_train_restore_skips_cuda_rng_off_cuda(tiny_data, monkeypatch):
    saved = {}
    fit(tiny(), tiny_data, on_epoch=lambda m, checkpoint: saved.update(ckpt=checkpoint()))
    saved["ckpt"]["rng_cuda"] = torch.zeros(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: pytest.fail("CUDA RNG touched"))
    model = build_model(tiny())
    optimizer = make_optimizer(tiny(), model.parameters())
    restore(saved["ckpt"], model, optimizer, None, torch.device("cpu"))


def test_train_final_val_acc_is_last_epoch(tiny_data, monkeypatch):
    fake_evaluate(monkeypatch, [0.5, 0.7, 0.6])
    result = fit(tiny(epochs=3), tiny_data)
    assert result.best_val_acc == 0.7 and result.final_val_acc == 0.6
    assert dataclasses.replace(result, history=[]).final_val_acc == 0.0


@pytest.fixture
def backend_settings(monkeypatch):
    """configure_backend changes process-wide settings: put them back."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    precision = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(precision)


def test_train_configure_backend_rejects_unknown_precision(backend_settings):
    before = torch.get_float32_matmul_precision()
    with pytest.raises(HpoError) as e:
        configure_backend(torch.device("cpu"), "fast")
    message = str(e.value)
    assert "'fast'" in message and "highest, high, medium" in message and "\n" not in message
    assert torch.get_float32_matmul_precision() == before  # nothing changed
    assert MATMUL_PRECISIONS == ("highest", "high", "medium")


@pytest.mark.parametrize("precision", MATMUL_PRECISIONS)
def test_train_configure_backend_cpu(backend_settings, precision):
    configure_backend(torch.device("cpu"), precision)
    assert torch.get_float32_matmul_precision() == precision
    assert torch.backends.cudnn.benchmark is False


def test_train_configure_backend_cuda_benchmarks_cudnn(backend_settings):
    configure_backend(torch.device("cuda", 0), "high")  # a device name needs no GPU to exist
    assert torch.backends.cudnn.benchmark is True
    assert torch.get_float32_matmul_precision() == "high"
    configure_backend("cuda")  # as a string, default precision
    assert torch.get_float32_matmul_precision() == "highest"


@pytest.fixture
def conv_precision():
    """configure_backend sets cuDNN's convolution precision process-wide: put it back."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    before = conv.fp32_precision if conv is not None else torch.backends.cudnn.allow_tf32
    deterministic = torch.backends.cudnn.deterministic
    yield
    if conv is not None:
        conv.fp32_precision = before
    else:
        torch.backends.cudnn.allow_tf32 = before
    torch.backends.cudnn.deterministic = deterministic


def test_train_highest_precision_turns_tf32_off_in_convolutions_too(backend_settings,
                                                                   conv_precision):
    # Defect: "highest" set only the matmul precision; cuDNN convolutions (most of the work)
    # still ran in TF32, PyTorch's default for them.
    from hpo.training.train import conv_tf32_allowed

    configure_backend(torch.device("cuda", 0), "high")
    assert conv_tf32_allowed()  # TF32: asked for explicitly
    configure_backend(torch.device("cuda", 0), "highest")
    assert not conv_tf32_allowed()
    assert torch.get_float32_matmul_precision() == "highest"


def test_train_deterministic_backend(backend_settings, conv_precision, monkeypatch):
    # Defect: cudnn.benchmark with no deterministic option; a re-train was exact on the CPU only.
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    configure_backend(torch.device("cuda", 0), "highest", deterministic=True)
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    # not torch.use_deterministic_algorithms: cross-entropy on CUDA raises under it
    assert not torch.are_deterministic_algorithms_enabled()
    configure_backend(torch.device("cuda", 0), "highest")
    assert torch.backends.cudnn.deterministic is False and torch.backends.cudnn.benchmark is True


def test_train_bf16_keeps_weights_optimizer_state_norm_stats_and_loss_in_float32(tiny_data):
    config = tiny(epochs=2, optimizer="adam", conv_batchnorm=True, fc_batchnorm=True)
    conv_outputs = []
    seen = {}

    def on_epoch(m, checkpoint):
        seen["state"] = checkpoint()

    import hpo.training.train as train_module

    real_build = train_module.build_model

    def build(*a, **k):
        model = real_build(*a, **k)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(lambda mod, i, out: conv_outputs.append(out.dtype))
        return model

    import unittest.mock

    with unittest.mock.patch.object(train_module, "build_model", build):
        result = fit(config, tiny_data, on_epoch=on_epoch, bf16=True)
    assert set(conv_outputs) == {torch.bfloat16}  # the convolutions really ran in bf16
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}
    assert {b.dtype for n, b in result.model.named_buffers() if "running" in n} == {torch.float32}
    moments = [t for s in seen["state"]["optimizer"]["state"].values() for k, t in s.items()
               if k != "step"]
    assert moments and {t.dtype for t in moments} == {torch.float32}
    assert all(math.isfinite(m.train_loss) and math.isfinite(m.val_loss) for m in result.history)


def test_train_warm_up_leaves_the_run_as_it_was(tiny_data):
    """The untimed pass over every batch shape changes nothing a run computes: same metrics,
    same weights."""
    config = tiny(epochs=2, conv_batchnorm=True, fc_dropout=0.3, flip=True)
    plain = fit(config, tiny_data, warm_up=False)
    warmed = fit(config, tiny_data, warm_up=True)
    strip = lambda h: [{k: v for k, v in dataclasses.asdict(m).items() if k != "seconds"}  # noqa: E731
                       for m in h]
    assert strip(warmed.history) == strip(plain.history)
    assert all(torch.equal(p, q) for p, q in zip(warmed.model.state_dict().values(),
                                                 plain.model.state_dict().values()))


def test_train_warm_up_is_not_charged_to_the_first_epoch(tiny_data, monkeypatch):
    # Defect: the time objective's first epoch included cuDNN's autotuning of each new shape.
    import types

    import hpo.training.train as train_module
    import hpo.training.warmup as warmup_module

    clock = [0.0]
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    shapes = {}

    def slow_warm_up(model, device, image_shape, train_sizes, eval_sizes, bf16):
        shapes.update(train=train_sizes, eval=eval_sizes)
        clock[0] += 1000.0  # autotuning: as long as it likes, before the clock starts

    monkeypatch.setattr(warmup_module, "warm_up", slow_warm_up)
    config = tiny(epochs=1, batch_size=32)
    result = fit(config, tiny_data, warm_up=True)
    assert result.seconds < 1000.0 and result.history[0].seconds < 1000.0
    n_train, n_val = len(tiny_data.train), len(tiny_data.val)
    assert shapes["train"][0] == 32 and shapes["eval"][0] == min(1000, n_val)
    assert sorted(shapes["train"]) == sorted({32, n_train % 32} - {0, 1})
    # on the CPU (no autotuning) the default skips it
    shapes.clear()
    fit(config, tiny_data)
    assert shapes == {}


@pytest.mark.parametrize("n, batch, least, expected", [
    (100, 32, 2, [32, 4]), (97, 32, 2, [32]), (96, 32, 2, [32]), (20, 32, 2, [20]),
    (1000, 1000, 1, [1000]), (2500, 1000, 1, [1000, 500]), (0, 32, 1, [])])
def test_warm_up_batch_sizes(n, batch, least, expected):
    from hpo.training.warmup import batch_sizes

    assert batch_sizes(n, batch, least) == expected
