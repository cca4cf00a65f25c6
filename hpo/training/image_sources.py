"""Decoding a dataset from its source into uint8 tensors on the CPU.

Sources: a folder or .tar/.tar.gz archive of ``train/`` and ``test/`` class folders, or
torchvision's CIFAR download.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from hpo.errors import HpoError, HpoFailure


@dataclasses.dataclass
class ImageSet:
    """A decoded dataset: uint8 images (N, C, H, W) and int64 labels, on the CPU."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


def _iter_image_files(source: Path) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) for every file under source, archive or folder."""
    if source.is_file():
        try:
            with tarfile.open(source) as tar:
                for member in tar:
                    if member.isfile():
                        f = tar.extractfile(member)
                        assert f is not None
                        yield member.name, f.read()
        except tarfile.TarError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise HpoFailure(f"{str(source)!r} is not a readable .tar/.tar.gz archive "
                             f"({reason})") from None
    else:
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for f in sorted(files):
                full = os.path.join(root, f)
                yield os.path.relpath(full, source), Path(full).read_bytes()


def decode_tree(source: Path) -> ImageSet:
    """The images under ``train/<class>/`` and ``test/<class>/`` of a folder or archive."""
    from PIL import Image  # heavy import, only when decoding

    found: dict[str, dict[str, list[bytes]]] = {"train": {}, "test": {}}
    for rel, blob in _iter_image_files(source):
        parts = Path(rel).parts
        # accept <root>/train/<class>/<file> at depth 0 or 1 (archives usually add a top folder)
        for depth in (0, 1):
            if len(parts) == depth + 3 and parts[depth] in found:
                found[parts[depth]].setdefault(parts[depth + 1], []).append(blob)
    if not found["train"] or not found["test"]:
        raise HpoFailure(f"{str(source)!r} holds no train/<class>/ and test/<class>/ image folders")
    classes = sorted(found["train"])
    extra = sorted(set(found["test"]) - set(classes))
    if extra:
        raise HpoFailure(f"{str(source)!r}: test classes {extra} do not appear under train/")
    out = {}
    for split, by_class in found.items():
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for blob in by_class.get(cls, []):
                xs.append(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
                ys.append(label)
        shapes = {x.shape for x in xs}
        if len(shapes) != 1:
            raise HpoFailure(f"{str(source)!r}: images differ in size {sorted(shapes)[:3]}; "
                           "all must share one size")
        out[split] = (torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(),
                      torch.tensor(ys, dtype=torch.int64))
    return ImageSet(out["train"][0], out["train"][1], out["test"][0], out["test"][1], classes)


def torchvision_images(name: str, root: Path) -> ImageSet:
    """CIFAR-10 or CIFAR-100 from torchvision, downloaded into ``root`` when not there yet."""
    from torchvision import datasets  # heavy import, only when asked for

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Workers sharing a cache folder must not download into it at the same time.
        with open(root / ".download.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            train = cls(str(root), train=True, download=True)
            test = cls(str(root), train=False, download=True)
    except Exception as e:
        raise HpoError(
            f"dataset {name!r} is not under {root} and could not be downloaded ({type(e).__name__}); "
            f"offline, copy the python-version batches there (set HPO_DATA_DIR to their parent), or "
            f"use --dataset imagefolder:PATH with a folder or archive of train/ and test/ images"
        ) from None

    def tensors(ds):
        return (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                torch.tensor(ds.targets, dtype=torch.int64))

    return ImageSet(*tensors(train), *tensors(test), list(train.classes))
