"""CheckpointStore: save/load/remove over an artifact store; loads land on the CPU, whatever the
device that wrote them or will resume them, so a retried trial resumes on any worker."""

from __future__ import annotations

import dataclasses
import io
import logging

import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore

from hpo.training.checkpoints import CheckpointStore
from hpo.training.config import from_dict
from hpo.training.data import DeviceData
from hpo.training.train import fit

TINY = {"conv_layers": 2, "filters": [8, 16], "fc_widths": [32], "batch_size": 32, "epochs": 1}


def tiny(**changes):
    return from_dict({**TINY, **changes})


def metrics(history):
    """Everything but wall time, which never repeats."""
    return [{k: v for k, v in dataclasses.asdict(m).items() if k != "seconds"} for m in history]


@pytest.fixture
def store(tmp_path):
    return CheckpointStore(FileSystemArtifactStore(str(tmp_path)))


def warnings_of(caplog):
    return [r for r in caplog.records
            if r.name == "hpo.training.checkpoints" and r.levelno >= logging.WARNING]


def test_checkpoints_round_trip(store):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "rng_cpu": torch.get_rng_state(),
             "history": [{"epoch": 1}], "seconds": 1.5}
    store.save("ckpt-a", state)
    loaded = store.load("ckpt-a")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert torch.equal(loaded["rng_cpu"], state["rng_cpu"])
    assert loaded["history"] == [{"epoch": 1}] and loaded["seconds"] == 1.5


def test_checkpoints_missing_is_none_with_one_warning(store, caplog):
    with caplog.at_level(logging.WARNING):
        assert store.load("checkpoint-study1-trial7") is None
    [record] = warnings_of(caplog)
    assert "checkpoint-study1-trial7" in record.getMessage()
    assert "\n" not in record.getMessage()


@pytest.mark.parametrize("blob", [b"not a checkpoint", b""])
def test_checkpoints_unreadable_is_none_with_one_warning(store, caplog, blob):
    store.artifact_store.write("bad", io.BytesIO(blob))
    with caplog.at_level(logging.WARNING):
        assert store.load("bad") is None
    [record] = warnings_of(caplog)
    assert "bad" in record.getMessage() and "\n" not in record.getMessage()


def test_checkpoints_not_a_dict_is_none(store, caplog):
    store.save("list", [1, 2])  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        assert store.load("list") is None
    assert len(warnings_of(caplog)) == 1


def test_checkpoints_remove(store, caplog):
    store.save("gone", {"x": torch.zeros(1)})
    store.remove("gone")
    with caplog.at_level(logging.WARNING):
        store.remove("gone")  # missing: no error, no warning
        store.remove("never-written")
    assert warnings_of(caplog) == []
    assert store.load("gone") is None


def test_checkpoints_written_on_cuda_load_on_the_cpu(store, monkeypatch):
    """A checkpoint whose tensors were saved from cuda:0 (a GPU worker's) loads into host memory,
    here on a machine without CUDA too: the loader never honours the saving device."""
    state = {"model": {"w": torch.ones(3)}, "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.zeros(16, dtype=torch.uint8)}
    # torch.save tags each storage with its device; make it tag them all "cuda:0".
    monkeypatch.setattr(torch.serialization, "_package_registry",
                        [(0, lambda storage: "cuda:0", lambda storage, location: None),
                         *torch.serialization._package_registry])
    store.save("from-gpu", state)
    monkeypatch.undo()
    with store.artifact_store.open_reader("from-gpu") as reader:
        blob = reader.read()
    if not torch.cuda.is_available():  # the blob really claims CUDA
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(io.BytesIO(blob), weights_only=False)
    loaded = store.load("from-gpu")
    assert loaded["model"]["w"].device.type == "cpu" and torch.equal(loaded["model"]["w"],
                                                                     torch.ones(3))
    for key in ("rng_cpu", "rng_cuda"):
        assert loaded[key].device.type == "cpu" and loaded[key].dtype == torch.uint8, key


def save_at(store, epoch):
    def on_epoch(m, checkpoint):
        if m.epoch == epoch:
            store.save("ckpt", checkpoint())
    return on_epoch


def test_checkpoints_resume_reproduces_uninterrupted_run(store, small_data):
    """Through the real path: fit's checkpoint() -> CheckpointStore.save/load -> fit(resume=...)."""
    config = tiny(epochs=2, optimizer="adam", lr=1e-3, fc_dropout=0.3, conv_batchnorm=True,
                  flip=True, crop_padding=2, scheduler="multistep", milestones=[1], gamma=0.5)
    full = fit(config, small_data, on_epoch=save_at(store, 1))
    resume = store.load("ckpt")
    seen = []
    resumed = fit(config, small_data, on_epoch=lambda m, _c: seen.append(m.epoch), resume=resume)
    assert seen == [2]
    assert [m.lr for m in resumed.history] == [1e-3, 5e-4]
    assert metrics(resumed.history) == metrics(full.history)
    assert all(torch.equal(p, q) for p, q in
               zip(resumed.model.state_dict().values(), full.model.state_dict().values()))


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter:UserWarning")
def test_checkpoints_resume_on_another_device(store, small_data, sample_images, monkeypatch):
    """Regression: a CUDA worker resuming a retried trial crashed in torch.set_rng_state, because
    the checkpoint was loaded with map_location=<training device>, which moved the RNG state
    there. The meta device stands in for CUDA: the checkpoint a CPU run saved is loaded back on
    the CPU and restored into a model on the device, with no training left to do."""
    config = tiny(optimizer="adam", lr=1e-3, conv_batchnorm=True, scheduler="step", step_size=1)
    done = fit(config, small_data, on_epoch=save_at(store, 1))
    resume = store.load("ckpt")
    assert resume["rng_cpu"].device.type == "cpu" and resume["rng_cpu"].dtype == torch.uint8
    assert resume["rng_cuda"] is None  # saved by a CPU run

    given = []
    set_rng_state = torch.set_rng_state
    monkeypatch.setattr(torch, "set_rng_state", lambda s: (given.append(s), set_rng_state(s)))
    device_data = DeviceData(sample_images, "meta", val_fraction=0.1, split_seed=0, train_size=600)
    resumed = fit(config, device_data, resume=resume)
    assert [(s.device.type, s.dtype) for s in given] == [("cpu", torch.uint8)]
    assert resumed.status == "completed"
    assert metrics(resumed.history) == metrics(done.history)
    assert {t.device.type for t in resumed.model.state_dict().values()} == {"meta"}


class BlockingStore(FileSystemArtifactStore):
    """Writes wait for ``release``: a checkpoint still being written, as a big one on a slow
    disk is."""

    def __init__(self, root):
        import threading

        super().__init__(root)
        self.release, self.writes = threading.Event(), []

    def write(self, artifact_id, content_body):
        assert self.release.wait(60)
        self.writes.append(artifact_id)
        super().write(artifact_id, content_body)


def test_checkpoints_at_most_one_save_is_pending(tmp_path):
    # Defect: every epoch's checkpoint went into an unbounded queue behind a slow writer.
    blocking = BlockingStore(str(tmp_path))
    store = CheckpointStore(blocking)
    assert not store.busy()
    assert store.save_in_background("a", {"w": torch.ones(2)}) is True
    assert store.busy()
    assert store.save_in_background("b", {"w": torch.zeros(2)}) is False  # dropped, not queued
    blocking.release.set()
    store.wait()
    assert blocking.writes == ["a"] and not store.busy()
    assert store.save_in_background("c", {"w": torch.zeros(2)}) is True
    store.wait()
    assert blocking.writes == ["a", "c"]


def test_checkpoints_wait_for_in_flight_copies_before_serialising(store):
    """A CUDA snapshot's copies are queued, not waited for, on the training thread: the writer
    waits on their event, and the event is not part of what is stored."""
    from hpo.training.snapshots import READY_KEY

    order = []

    class CopiesDone:
        def synchronize(self):
            order.append("synchronized")

    real_save = torch.save

    def save(obj, f):
        order.append("serialised")
        real_save(obj, f)

    import unittest.mock

    with unittest.mock.patch.object(torch, "save", save):
        store.save("in-flight", {"w": torch.ones(2), READY_KEY: CopiesDone()})
    assert order == ["synchronized", "serialised"]
    assert set(store.load("in-flight")) == {"w"}


class RunsCode:
    """Unpickling this runs a shell command: what a planted checkpoint would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_checkpoints_never_unpickle_code(store, tmp_path, caplog):
    # Issue 25, item 4: a checkpoint was read with weights_only=False from a shared folder.
    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(1)}, "x": RunsCode(marker)}, buffer)
    buffer.seek(0)
    store.artifact_store.write("planted", buffer)
    with caplog.at_level(logging.WARNING):
        assert store.load("planted") is None
    assert not marker.exists()
    [warning] = warnings_of(caplog)
    message = warning.getMessage()
    assert "refused" in message and "posix.system" in message and "\n" not in message


def test_checkpoints_of_every_optimizer_and_scheduler_load_weights_only(store):
    """What fit's snapshot holds (tensors, RNG ByteTensors, numbers, strings, plain containers, a
    MultiStepLR's Counter) loads with weights_only=True."""
    from hpo.training.model import build_model
    from hpo.training.snapshots import snapshot
    from hpo.training.train import make_optimizer, make_scheduler

    for optimizer_name in ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"):
        for scheduler_name in ("none", "step", "multistep", "cosine", "plateau"):
            config = tiny(optimizer=optimizer_name, scheduler=scheduler_name, conv_batchnorm=True)
            model = build_model(config)
            optimizer = make_optimizer(config, model.parameters())
            scheduler = make_scheduler(config, optimizer)
            model(torch.randn(2, 3, 32, 32)).sum().backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step(1.0) if scheduler_name == "plateau" else scheduler.step()
            state = snapshot(model, optimizer, scheduler, [], 0.0, torch.device("cpu"))
            store.save("every", {"config": config.to_dict(), **state})
            loaded = store.load("every")
            assert loaded is not None, (optimizer_name, scheduler_name)
            assert loaded["config"] == config.to_dict()
