"""Datasets: the on-disk cache and its invalidation, the validation split, batches and augmentation."""

from __future__ import annotations

import hashlib
import os
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hpo.training.data
from hpo.training.data import DATASET_NAMES, DeviceData, Split, load_images
from hpo.training.image_sources import ImageSet
from hpo.errors import HpoError

CLASSES = ("cat", "dog", "emu")


def write_png(path, seed: int, size: int = 8) -> np.ndarray:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def make_imagefolder(root, per_class: int = 3) -> dict[str, list[tuple[np.ndarray, int]]]:
    """root/{train,test}/<class>/<n>.png with known pixels; returns {split: [(pixels, label)]}."""
    written: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "test": []}
    seed = 0
    for split in ("train", "test"):
        for label, cls in enumerate(CLASSES):
            for i in range(per_class if split == "train" else 1):
                seed += 1
                written[split].append((write_png(root / split / cls / f"{i}.png", seed), label))
    return written


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("HPO_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def decodes(monkeypatch):
    """Counts calls to the decoder (the slow path the cache avoids)."""
    calls = []
    real = hpo.training.data.decode_tree

    def counting(source):
        calls.append(source)
        return real(source)

    monkeypatch.setattr(hpo.training.data, "decode_tree", counting)
    return calls


def forbid_decoding(monkeypatch):
    def fail(source):
        raise AssertionError(f"decoded {source} although the cache should have been used")

    monkeypatch.setattr(hpo.training.data, "decode_tree", fail)


def assert_same(a: ImageSet, b: ImageSet) -> None:
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.classes == b.classes


def test_data_imagefolder_decodes_pixels_and_labels(tmp_path, cache):
    written = make_imagefolder(tmp_path / "tiny")
    images = load_images(f"imagefolder:{tmp_path / 'tiny'}")
    assert images.classes == list(CLASSES)
    assert images.train_x.dtype == torch.uint8 and images.train_x.shape == (9, 3, 8, 8)
    assert images.test_x.shape == (3, 3, 8, 8)
    for split in ("train", "test"):
        x, y = getattr(images, f"{split}_x"), getattr(images, f"{split}_y")
        got = {(hashlib.sha1(x[i].permute(1, 2, 0).numpy().tobytes()).hexdigest(), int(y[i]))
               for i in range(len(y))}
        want = {(hashlib.sha1(p.tobytes()).hexdigest(), label) for p, label in written[split]}
        assert got == want


def test_data_cache_written_then_read_without_decoding(tmp_path, cache, monkeypatch, decodes):
    make_imagefolder(tmp_path / "tiny")
    name = f"imagefolder:{tmp_path / 'tiny'}"
    first = load_images(name)
    assert len(decodes) == 1
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    forbid_decoding(monkeypatch)
    assert_same(load_images(name), first)
    assert list(cache.glob("*.pt")) == files


def test_data_cache_changed_file_decodes_again(tmp_path, cache, decodes):
    make_imagefolder(tmp_path / "tiny")
    name = f"imagefolder:{tmp_path / 'tiny'}"
    before = load_images(name)
    changed = write_png(tmp_path / "tiny" / "train" / "cat" / "0.png", seed=999)
    st = os.stat(tmp_path / "tiny" / "train" / "cat" / "0.png")
    os.utime(tmp_path / "tiny" / "train" / "cat" / "0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = load_images(name)
    assert len(decodes) == 2
    assert not torch.equal(before.train_x, after.train_x)
    assert torch.equal(after.train_x[0], torch.from_numpy(changed).permute(2, 0, 1))
    assert len(list(cache.glob("*.pt"))) == 2


def test_data_cache_touched_file_changes_key(tmp_path, cache, decodes):
    make_imagefolder(tmp_path / "tiny")
    name, source = f"imagefolder:{tmp_path / 'tiny'}", (tmp_path / "tiny").resolve()
    key = hpo.training.data.cache_path(name, source)
    load_images(name)
    target = tmp_path / "tiny" / "test" / "dog" / "0.png"
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert hpo.training.data.cache_path(name, source) != key
    load_images(name)
    assert len(decodes) == 2


def test_data_cache_added_file_is_seen(tmp_path, cache, decodes):
    make_imagefolder(tmp_path / "tiny")
    name = f"imagefolder:{tmp_path / 'tiny'}"
    assert len(load_images(name).train_y) == 9
    write_png(tmp_path / "tiny" / "train" / "emu" / "new.png", seed=77)
    assert len(load_images(name).train_y) == 10
    assert len(decodes) == 2


def test_data_cache_unreadable_file_is_replaced(tmp_path, cache, decodes):
    make_imagefolder(tmp_path / "tiny")
    name = f"imagefolder:{tmp_path / 'tiny'}"
    first = load_images(name)
    (target,) = cache.glob("*.pt")
    target.write_bytes(b"truncated")
    assert_same(load_images(name), first)
    assert len(decodes) == 2
    assert target.stat().st_size > len(b"truncated")


def test_data_tar_gz_archive_source(tmp_path, cache, monkeypatch, decodes):
    make_imagefolder(tmp_path / "tiny")
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tiny", arcname="tiny")  # archives usually add a top folder
    from_folder = load_images(f"imagefolder:{tmp_path / 'tiny'}")
    from_archive = load_images(f"imagefolder:{archive}")
    assert_same(from_archive, from_folder)
    forbid_decoding(monkeypatch)
    assert_same(load_images(f"imagefolder:{archive}"), from_folder)
    st = os.stat(archive)
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded"):
        load_images(f"imagefolder:{archive}")


def test_data_folder_without_splits_is_an_error(tmp_path, cache):
    write_png(tmp_path / "flat" / "cat" / "0.png", seed=1)
    with pytest.raises(HpoError, match=r"train/<class>/ and test/<class>/") as e:
        load_images(f"imagefolder:{tmp_path / 'flat'}")
    assert "\n" not in str(e.value)


def test_data_missing_path_is_an_error(tmp_path, cache):
    with pytest.raises(HpoError, match="does not exist"):
        load_images(f"imagefolder:{tmp_path / 'nowhere'}")


def test_data_not_an_archive_is_an_error(tmp_path, cache):
    bogus = tmp_path / "images.tar.gz"
    bogus.write_bytes(b"this is not a tar file")
    with pytest.raises(HpoError, match="not a (readable )?.tar"):
        load_images(f"imagefolder:{bogus}")


def test_data_mixed_image_sizes_is_an_error(tmp_path, cache):
    make_imagefolder(tmp_path / "tiny")
    write_png(tmp_path / "tiny" / "train" / "cat" / "big.png", seed=5, size=16)
    with pytest.raises(HpoError, match="differ in size"):
        load_images(f"imagefolder:{tmp_path / 'tiny'}")


def test_data_unknown_dataset_lists_known_names():
    with pytest.raises(HpoError) as e:
        load_images("cifar11")
    assert "cifar11" in str(e.value)
    for name in DATASET_NAMES:
        assert name in str(e.value)


def test_data_sample_is_cifar_shaped(sample_images):
    assert sample_images.train_x.shape == (5000, 3, 32, 32)
    assert sample_images.test_x.shape == (1000, 3, 32, 32)
    assert sample_images.train_x.dtype == torch.uint8
    assert len(sample_images.classes) == 10
    assert set(sample_images.train_y.tolist()) == set(range(10))


# --- the split ---------------------------------------------------------------------------------

def indexed_images(n: int = 200, n_test: int = 20, size: int = 8) -> ImageSet:
    """Random images whose first two pixels spell their own index, labels = index % 10."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n) % 256
    x[:, 0, 0, 1] = torch.arange(n) // 256
    test_x = torch.randint(0, 256, (n_test, 3, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(x, torch.arange(n) % 10, test_x, torch.arange(n_test) % 10,
                    [str(i) for i in range(10)])


def indices(split) -> list[int]:
    return (split.x[:, 0, 0, 0].long() + 256 * split.x[:, 0, 0, 1].long()).tolist()


def image_hashes(x: torch.Tensor) -> list[str]:
    return [hashlib.sha1(img.contiguous().numpy().tobytes()).hexdigest() for img in x]


def test_data_split_is_disjoint_and_complete():
    images = indexed_images()
    data = DeviceData(images, "cpu", val_fraction=0.1, split_seed=0)
    train, val = indices(data.train), indices(data.val)
    assert len(val) == 20 and len(train) == 180
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(200))
    assert data.train.y.tolist() == [i % 10 for i in train]  # labels travel with their images
    assert data.val.y.tolist() == [i % 10 for i in val]
    assert torch.equal(data.test.x, images.test_x) and torch.equal(data.test.y, images.test_y)


def test_data_split_disjoint_on_sample(small_data):
    assert not set(image_hashes(small_data.train.x)) & set(image_hashes(small_data.val.x))
    assert len(small_data.val) == 500 and len(small_data.train) == 600


def test_data_split_is_seeded():
    images = indexed_images()
    a = indices(DeviceData(images, split_seed=0).val)
    assert indices(DeviceData(images, split_seed=0).val) == a
    assert set(indices(DeviceData(images, split_seed=1).val)) != set(a)


def test_data_train_size_subsets_train_only():
    images = indexed_images()
    full = DeviceData(images, split_seed=3)
    sub = DeviceData(images, split_seed=3, train_size=50)
    assert len(sub.train) == 50
    assert set(indices(sub.train)) <= set(indices(full.train))
    assert indices(sub.val) == indices(full.val)  # validation does not depend on train_size


@pytest.mark.parametrize("kwargs,match", [({"train_size": 0}, "--train-size 0"),
                                          ({"train_size": 181}, "--train-size 181"),
                                          ({"val_fraction": 0.0}, "validation fraction"),
                                          ({"val_fraction": 1.0}, "validation fraction")])
def test_data_bad_split_arguments(kwargs, match):
    with pytest.raises(HpoError, match=match):
        DeviceData(indexed_images(), **kwargs)


def test_data_normalisation_uses_train_statistics():
    data = DeviceData(indexed_images(), split_seed=0)
    pixels = data.train.x.float() / 255
    assert torch.allclose(data.mean.flatten(), pixels.mean(dim=(0, 2, 3)))
    x = torch.cat([x for x, _ in data.train_batches(64, epoch=0, seed=0)])
    assert abs(x.mean().item()) < 1e-3
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)


# --- batches and augmentation -------------------------------------------------------------------

def raw(data: DeviceData, x: torch.Tensor) -> torch.Tensor:
    """Undo normalisation: back to the uint8 pixels."""
    return (x * data.std + data.mean).mul(255).round().clamp(0, 255).to(torch.uint8)


def epoch(data, seed=0, n=0, **aug):
    batches = list(data.train_batches(32, epoch=n, seed=seed, **aug))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), batches


def test_data_train_batches_cover_an_epoch_once():
    data = DeviceData(indexed_images(), split_seed=0)
    x, y, batches = epoch(data)
    assert [len(b[1]) for b in batches] == [32] * 5 + [20]
    assert x.dtype == torch.float32 and x.shape == (180, 3, 8, 8)
    seen = indices(Split(raw(data, x), y))
    assert sorted(seen) == sorted(indices(data.train))
    assert y.tolist() == [i % 10 for i in seen]


def test_data_train_batches_are_seeded_per_epoch():
    data = DeviceData(indexed_images(), split_seed=0)
    a = epoch(data, seed=0, n=0, flip=True, crop_padding=2)[0]
    assert torch.equal(epoch(data, seed=0, n=0, flip=True, crop_padding=2)[0], a)
    assert not torch.equal(epoch(data, seed=0, n=1, flip=True, crop_padding=2)[0], a)
    assert not torch.equal(epoch(data, seed=1, n=0, flip=True, crop_padding=2)[0], a)


def test_data_flip_is_applied_to_some_images():
    data = DeviceData(indexed_images(), split_seed=0)
    originals = set(image_hashes(data.train.x))
    flipped = set(image_hashes(data.train.x.flip(3)))
    x, y, _ = epoch(data, flip=True)
    assert x.shape == (180, 3, 8, 8) and x.dtype == torch.float32 and len(y) == 180
    got = image_hashes(raw(data, x))
    assert all(h in originals or h in flipped for h in got)
    n_flipped = sum(h in flipped for h in got)
    assert 0 < n_flipped < len(got)


def test_data_crop_is_applied_to_some_images():
    pad = 2
    data = DeviceData(indexed_images(), split_seed=0)
    padded = F.pad(data.train.x.float(), (pad,) * 4, mode="reflect").to(torch.uint8)
    windows = {h for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
               for h in image_hashes(padded[:, :, dy:dy + 8, dx:dx + 8])}
    originals = set(image_hashes(data.train.x))
    x, _, _ = epoch(data, crop_padding=pad)
    assert x.shape == (180, 3, 8, 8) and x.dtype == torch.float32
    got = image_hashes(raw(data, x))
    assert all(h in windows for h in got)
    assert sum(h not in originals for h in got) > len(got) // 2


def test_data_flip_and_crop_together_are_windows_of_the_padded_or_flipped_image():
    pad = 3
    data = DeviceData(indexed_images(), split_seed=0)
    windows = set()
    for source in (data.train.x, data.train.x.flip(3)):
        padded = F.pad(source.float(), (pad,) * 4, mode="reflect").to(torch.uint8)
        windows |= {h for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                    for h in image_hashes(padded[:, :, dy:dy + 8, dx:dx + 8])}
    x, y, _ = epoch(data, flip=True, crop_padding=pad)
    assert x.shape == (180, 3, 8, 8) and len(y) == 180
    got = image_hashes(raw(data, x))
    assert all(h in windows for h in got)
    unflipped = set(image_hashes(data.train.x))
    assert sum(h not in unflipped for h in got) > len(got) // 2


def test_data_crop_padding_larger_than_image_is_an_error():
    data = DeviceData(indexed_images(), split_seed=0)
    assert len(epoch(data, crop_padding=7)[1]) == 180
    with pytest.raises(HpoError, match="crop padding 8"):
        next(data.train_batches(32, epoch=0, seed=0, crop_padding=8))


def test_data_eval_batches_are_the_split_in_order():
    data = DeviceData(indexed_images(), split_seed=0)
    batches = list(data.eval_batches(data.val, batch_size=7))
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(raw(data, x), data.val.x)
    assert torch.equal(torch.cat([b[1] for b in batches]), data.val.y)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_data_torchvision_set_offline_fails_with_a_hint(name, tmp_path, monkeypatch):
    import urllib.error

    from torchvision import datasets

    def offline(self):  # what torchvision's download meets without a network; never downloads
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(datasets.CIFAR10, "download", offline)  # CIFAR100 inherits it
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(HpoError, match=f"dataset '{name}' is not under .*HPO_DATA_DIR.*imagefolder"):
        hpo.training.data.load_images(name)


def test_importing_hpo_does_no_heavy_work():
    import subprocess
    import sys

    code = ("import sys, hpo, hpo.cli, hpo.runtime.worker, search_spaces; "
            "print(sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
