"""Datasets by name, decoded once into uint8 tensors cached on disk, then held on the device.

Names: ``cifar10-sample`` (embedded: 5,000 train / 1,000 test real CIFAR-10 images),
``cifar10`` and ``cifar100`` (torchvision), ``imagefolder:PATH`` (a folder or a .tar/.tar.gz archive
with ``train/`` and ``test/`` class sub-folders, e.g. ``../shared/data/cifar10-jpeg.tar.gz``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import torch

from hpo.errors import HpoError
from hpo.training.image_sources import ImageSet, decode_tree, torchvision_images

log = logging.getLogger(__name__)

SAMPLE_ARCHIVE = Path(__file__).parent / "sample" / "cifar10-sample.tar.gz"
DATASET_NAMES = ("cifar10-sample", "cifar10", "cifar100", "imagefolder:PATH")
_CACHE_FORMAT = 1  # bump when the cached layout changes


def cache_dir() -> Path:
    return Path(os.environ.get("HPO_CACHE_DIR") or Path.home() / ".cache" / "hpo")


def check_dataset_name(name: str) -> None:
    """Fail early, before anything is created, on a name load_images would refuse."""
    if name in ("cifar10-sample", "cifar10", "cifar100"):
        return
    if name.startswith("imagefolder:"):
        given = name[len("imagefolder:"):]
        path = Path(given).expanduser()
        what = ("a folder or .tar/.tar.gz archive holding train/ and test/ class folders")
        if not given or not path.exists():
            raise HpoError(f"--dataset {name!r} is invalid: {given!r} does not exist; allowed: "
                           f"imagefolder:PATH with {what}")
        if path.is_file() and not tarfile.is_tarfile(path):
            raise HpoError(f"--dataset {name!r} is invalid: {given!r} is not a .tar/.tar.gz "
                           f"archive; allowed: imagefolder:PATH with {what}")
        return
    raise HpoError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")


def load_images(name: str) -> ImageSet:
    """Decode the named dataset, or read it from the on-disk cache when its source is unchanged."""
    check_dataset_name(name)
    if name == "cifar10-sample":
        return _cached(name, SAMPLE_ARCHIVE)
    if name.startswith("imagefolder:"):
        return _cached(name, Path(name[len("imagefolder:"):]).expanduser().resolve())
    root = Path(os.environ.get("HPO_DATA_DIR") or cache_dir() / "torchvision")
    return torchvision_images(name, root)


def _fingerprint(path: Path) -> str:
    """Changes whenever the source changes: name, size and mtime of the archive or of every file."""
    h = hashlib.sha256(f"{_CACHE_FORMAT}:{path}".encode())
    if path.is_file():
        st = path.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                st = os.stat(os.path.join(root, f))
                h.update(f"{os.path.join(root, f)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cache_path(name: str, source: Path) -> Path:
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in source.name)[:60]
    return cache_dir() / f"{stem}-{_fingerprint(source)}.pt"


def _cached(name: str, source: Path) -> ImageSet:
    target = cache_path(name, source)
    if target.exists():
        try:
            return ImageSet(**torch.load(target, weights_only=True))
        except Exception as e:  # a truncated or foreign file: decode again
            log.warning("ignoring unreadable cache %s (%s)", target, e)
    log.info("decoding %s (first use; cached at %s)", source, target)
    images = decode_tree(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    torch.save(dataclasses.asdict(images), tmp)
    os.replace(tmp, target)  # atomic: concurrent workers never read half a file
    return images


@dataclasses.dataclass
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W) on the training device
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


class DeviceData:
    """Train/validation/test splits resident on one device, normalised there batch by batch.

    The validation split is carved from the training set with a seeded permutation; the test set
    is never used for selection.
    """

    def __init__(self, images: ImageSet, device: str | torch.device = "cpu",
                 val_fraction: float = 0.1, split_seed: int = 0, train_size: int | None = None):
        if not 0 < val_fraction < 1:
            raise HpoError(f"validation fraction {val_fraction} is invalid; allowed: 0 < f < 1")
        n = len(images.train_y)
        n_val, n_train = split_sizes(n, val_fraction, train_size)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
        val_idx, train_idx = order[:n_val], order[n_val:n_val + n_train]
        self.device = torch.device(device)
        self.classes = images.classes
        self.num_classes = len(images.classes)
        self.image_size = images.train_x.shape[-1]
        self.in_channels = images.train_x.shape[1]
        self.train = self._put(images.train_x[train_idx], images.train_y[train_idx])
        self.val = self._put(images.train_x[val_idx], images.train_y[val_idx])
        self.test = self._put(images.test_x, images.test_y)
        self._train_pixels = self.train.x.permute(0, 2, 3, 1).reshape(-1, self.in_channels)  # a view
        pixels = self.train.x.float().div_(255)
        self.mean = pixels.mean(dim=(0, 2, 3), keepdim=True)
        self.std = pixels.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
        # (x / 255 - mean) / std as one multiply-add on the pixel values, per NHWC image
        hwc = (1, *images.train_x.shape[-2:], self.in_channels)
        self._scale_row = (1 / (255 * self.std)).view(1, 1, 1, -1).expand(hwc).reshape(1, -1)
        self._shift_row = (-self.mean / self.std).view(1, 1, 1, -1).expand(hwc).reshape(1, -1)

    def _put(self, x: torch.Tensor, y: torch.Tensor) -> Split:
        # NHWC memory (channels_last): a pixel's channels are adjacent, so an augmented batch
        # is one index_select of whole pixels. Batches keep that layout and fit() converts the
        # model to match: convolutions are faster so on CUDA (tensor cores) and CPU (oneDNN).
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        return Split(x, y.to(self.device))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW pixels -> normalised float32 in channels_last memory."""
        b, c, h, w = x.shape
        nhwc = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        # per-channel scale and shift laid out as one whole NHWC image: a broadcast over rows of
        # h*w*c values vectorises; one over a last dimension of 3 channels does not (3x slower)
        flat = nhwc.float().view(b, -1).mul_(self._scale_row).add_(self._shift_row)
        return flat.view(b, h, w, c).permute(0, 3, 1, 2)

    def train_batches(self, batch_size: int, epoch: int, seed: int, flip: bool = False,
                      crop_padding: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch: a seeded permutation, sliced into batches, augmented as whole tensors.

        Flip and reflect-pad + random crop are one gather from the uint8 set per batch: each
        output pixel's source row and column are computed, so no padded copy is ever made.
        """
        if crop_padding >= self.image_size:  # reflect padding needs pad < image size
            raise HpoError(f"crop padding {crop_padding} is invalid for {self.image_size}px "
                           f"images; allowed: 0 to {self.image_size - 1}")
        g = torch.Generator(device=self.device).manual_seed(seed * 1_000_003 + epoch)
        n, (h, w) = len(self.train), self.train.x.shape[-2:]
        order = torch.randperm(n, generator=g, device=self.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if flip or crop_padding:
                rows, cols = augment_indices(len(idx), h, w, flip, crop_padding, g, self.device)
                pixel = (idx[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
                x = self._train_pixels.index_select(0, pixel.view(-1)).view(len(idx), h, w, -1)
                x = x.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last
            else:
                x = self.train.x[idx]
            yield self.normalize(x), self.train.y[idx]

    def eval_batches(self, split: Split, batch_size: int = 1000
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(split), batch_size):
            yield self.normalize(split.x[start:start + batch_size]), split.y[start:start + batch_size]


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Index into a length-n axis as reflect padding reads it (-1 -> 1, n -> n - 2)."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def augment_indices(b: int, h: int, w: int, flip: bool, pad: int, g: torch.Generator,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows (b, h) and columns (b, w) of a random horizontal flip (p=0.5) followed by an
    h x w crop at a random offset from the image reflect-padded by pad."""
    flipped = (torch.rand(b, generator=g, device=device) < 0.5) if flip else None
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g, device=device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g, device=device)
    rows = _reflect(dy[:, None] + torch.arange(h, device=device) - pad, h)
    cols = _reflect(dx[:, None] + torch.arange(w, device=device) - pad, w)
    if flipped is not None:  # reflect padding is symmetric: pad(flip(x)) == flip(pad(x))
        cols = torch.where(flipped[:, None], w - 1 - cols, cols)
    return rows, cols


def split_sizes(n: int, val_fraction: float, train_size: int | None) -> tuple[int, int]:
    """(validation, training) image counts of a training set of n images; HpoError naming the
    flag when the split leaves no image to train on or the asked train size is not there."""
    n_val = max(1, int(round(n * val_fraction)))
    available = n - n_val
    if available < 1:
        raise HpoError(f"--val-fraction {val_fraction:g} is invalid for {n} training images; "
                       f"allowed: a fraction that leaves at least one image to train on")
    if train_size is not None and not 1 <= train_size <= available:
        raise HpoError(f"--train-size {train_size} is invalid; allowed: 1 to {available} "
                       f"(the training images left after the validation split)")
    return n_val, train_size or available


def check_split(name: str, val_fraction: float, train_size: int | None) -> None:
    """Fail before anything is stored on a split the dataset cannot give (reads, and caches,
    the dataset's images)."""
    split_sizes(len(load_images(name).train_y), val_fraction, train_size)


def load(name: str, device: str | torch.device = "cpu", val_fraction: float = 0.1,
         split_seed: int = 0, train_size: int | None = None) -> DeviceData:
    return DeviceData(load_images(name), device, val_fraction, split_seed, train_size)


def image_size(name: str) -> int:
    """The side of the dataset's (square) images, reading a custom dataset only when needed."""
    if name in ("cifar10-sample", "cifar10", "cifar100"):
        return 32
    return int(load_images(name).train_x.shape[-1])
