"""Training images/second: hpo's device-resident trainer against a conventional DataLoader loop.

Three loops share the model, optimizer, batch size and augmentation (flip + 4px random crop):

- ``ours``: ``DeviceData.train_batches`` feeding the step that ``hpo.training.train.fit`` takes;
- ``conventional``: a Dataset of decoded images with per-sample torchvision transforms
  (RandomHorizontalFlip, RandomCrop(padding=4), ToTensor, Normalize) behind
  ``DataLoader(shuffle=True, num_workers=N)``, the way the course reports trained;
- ``compute_bound``: the same step repeated on one pre-made, normalised batch (no data work).

Each loop runs in every precision asked (``--precisions``, default fp32 and bf16: autocast as
``hpo.training.train.fit`` uses it). Rounds interleave loops and precisions (in alternating order) so
machine noise hits all of them; each measurement skips a few warm-up batches, then times a fixed
number of images. Output is one JSON line per measurement and one summary line (medians over
rounds) per architecture and precision, then one line per architecture with bf16's speed over
float32's.

    .venv/bin/python benchmarks/trainer_throughput.py [--device cuda] [--rounds 3]
    .venv/bin/python benchmarks/trainer_throughput.py --loops ours --archs medium reports
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout, installed or not

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hpo.training.config import Config  # noqa: E402
from hpo.training.data import DeviceData, load_images  # noqa: E402
from hpo.errors import HpoError  # noqa: E402
from hpo.training.model import build_model  # noqa: E402
from hpo.training.train import configure_backend, make_optimizer, resolve_device  # noqa: E402

log = logging.getLogger("trainer_throughput")

DEFAULT_DATASET = "imagefolder:../shared/data/cifar10-jpeg.tar.gz"  # relative to the repo root
CROP_PADDING = 4
LOOPS = ("ours", "conventional", "compute_bound")
# name -> (architecture knobs, default images per measurement: a few seconds each on 2 CPU cores)
ARCHITECTURES = {
    "small": (dict(conv_layers=2, filters=[16, 32], kernel_size=3, fc_widths=[128]), 12288),
    "medium": (dict(conv_layers=3, filters=[32, 64, 128], kernel_size=3, fc_widths=[256]), 3072),
    "reports": (dict(conv_layers=3, filters=[64, 128, 512], kernel_size=4, stride=1, padding=1,
                     pool="max", pool_size=2, fc_widths=[256]), 768),
}
TARGET_VS_CONVENTIONAL = {"small": 2.5}  # ours / conventional
TARGET_VS_COMPUTE_BOUND = 0.90  # ours / compute_bound, every architecture
TARGET_BF16_SPEEDUP = {"medium": 1.5, "reports": 1.5}  # bf16 / fp32 of ours (AVX512-BF16 CPUs)
PRECISIONS = ("fp32", "bf16")


class Trainer:
    """Model, optimizer and training step set up and taken exactly as ``hpo.training.train.fit`` does."""

    def __init__(self, config: Config, data: DeviceData, bf16: bool = False):
        self.device, self.bf16 = data.device, bf16
        torch.manual_seed(config.seed)
        model = build_model(config, data.num_classes, data.image_size, data.in_channels)
        model = model.to(self.device).to(memory_format=torch.channels_last)
        self.model = model.train()
        self.optimizer = make_optimizer(config, model.parameters())
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.int64)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):  # as fit
            out = self.model(x)
        loss = F.cross_entropy(out.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach() * len(y)
        self.correct += (out.detach().argmax(1) == y).sum()

    def sync(self) -> None:
        """Wait for queued work, as fit's end-of-epoch ``loss_sum.item()`` does."""
        self.loss_sum.item()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class DecodedImages(torch.utils.data.Dataset):
    """Decoded HWC uint8 images handed out as PIL images, like torchvision's CIFAR10 dataset."""

    def __init__(self, images: np.ndarray, labels: list[int], transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def conventional_loader(data: DeviceData, batch_size: int, workers: int
                        ) -> torch.utils.data.DataLoader:
    """The training split as a course report would load it; each ``iter`` is a fresh epoch."""
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomCrop(data.image_size, padding=CROP_PADDING),
        transforms.ToTensor(),
        transforms.Normalize(data.mean.flatten().tolist(), data.std.flatten().tolist()),
    ])
    images = data.train.x.cpu().permute(0, 2, 3, 1).contiguous().numpy()
    dataset = DecodedImages(images, data.train.y.cpu().tolist(), transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
        pin_memory=data.device.type == "cuda", generator=torch.Generator().manual_seed(0))


def batches(loop: str, data: DeviceData, loader: torch.utils.data.DataLoader, epoch: int
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    batch_size = loader.batch_size
    if loop == "ours":
        yield from data.train_batches(batch_size, epoch, seed=0, flip=True,
                                      crop_padding=CROP_PADDING)
    elif loop == "conventional":
        for x, y in loader:
            # same memory format as ours; only the data path differs
            x = x.to(data.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yield x, y.to(data.device, non_blocking=True)
    else:
        batch = next(data.train_batches(batch_size, epoch, seed=0, flip=True,
                                        crop_padding=CROP_PADDING))
        yield from itertools.repeat(batch)


def measure(loop: str, config: Config, data: DeviceData, loader: torch.utils.data.DataLoader,
            n_batches: int, warmup: int, epoch: int, bf16: bool = False) -> tuple[int, float]:
    """(images, seconds) of n_batches timed training steps after warmup untimed ones."""
    trainer = Trainer(config, data, bf16)
    source = batches(loop, data, loader, epoch)
    try:
        for x, y in itertools.islice(source, warmup):
            trainer.step(x, y)
        trainer.sync()
        images, t0 = 0, time.perf_counter()
        for x, y in itertools.islice(source, n_batches):
            trainer.step(x, y)
            images += len(y)
        trainer.sync()
        return images, time.perf_counter() - t0
    finally:
        source.close()  # stops DataLoader workers outside the timed region


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def run(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    configure_backend(device)  # as the worker and hpo train do before fit (cuDNN autotuning)
    archs = {name: ARCHITECTURES[name] for name in args.archs}
    n_batches = {name: -(-(args.images or default) // args.batch_size)
                 for name, (_, default) in archs.items()}
    train_size = (max(n_batches.values()) + args.warmup) * args.batch_size
    image_set = load_images(args.dataset)
    try:
        data = DeviceData(image_set, device, train_size=train_size)
    except HpoError as e:
        raise HpoError(f"--images, --warmup and --batch-size need {train_size} training images "
                       f"({e})") from None
    log.info("device %s, %d torch threads, %d DataLoader workers, train subset %d images",
             device, torch.get_num_threads(), args.workers, train_size)
    loader = conventional_loader(data, args.batch_size, args.workers)
    loops = [loop for loop in LOOPS if loop in args.loops]
    runs = [(loop, precision) for loop in loops for precision in args.precisions]
    for name, (knobs, _) in archs.items():
        config = Config(**knobs, batch_size=args.batch_size, flip=True, crop_padding=CROP_PADDING)
        rates: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
        for r in range(args.rounds):
            for loop, precision in (runs if r % 2 == 0 else runs[::-1]):
                images, seconds = measure(loop, config, data, loader, n_batches[name],
                                          args.warmup, epoch=r, bf16=precision == "bf16")
                rates[(loop, precision)].append(images / seconds)
                emit({"arch": name, "round": r + 1, "loop": loop, "precision": precision,
                      "images": images, "seconds": round(seconds, 3),
                      "img_per_s": round(images / seconds, 1)})
        medians = {run: statistics.median(v) for run, v in rates.items()}
        for precision in args.precisions:
            med = {loop: medians[(loop, precision)] for loop in loops}
            summary = {"summary": name, "precision": precision, "device": str(device),
                       "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                       "workers": args.workers, "images": n_batches[name] * args.batch_size,
                       "rounds": args.rounds,
                       **{f"{loop}_img_per_s": round(v, 1) for loop, v in med.items()},
                       # contention only ever slows a round down: a median far below the best
                       # means the machine was busy and the ratios are suspect
                       "best_img_per_s": {loop: round(max(rates[(loop, precision)]), 1)
                                          for loop in loops}}
            met = True
            if "conventional" in med and "ours" in med:
                vs_conv = med["ours"] / med["conventional"]
                target_conv = TARGET_VS_CONVENTIONAL.get(name)
                summary.update(ours_vs_conventional=round(vs_conv, 3),
                               target_ours_vs_conventional=target_conv)
                met = met and (target_conv is None or vs_conv >= target_conv)
            if "compute_bound" in med and "ours" in med:
                vs_bound = med["ours"] / med["compute_bound"]
                summary.update(ours_vs_compute_bound=round(vs_bound, 3),
                               target_ours_vs_compute_bound=TARGET_VS_COMPUTE_BOUND)
                met = met and vs_bound >= TARGET_VS_COMPUTE_BOUND
            summary["targets_met"] = met
            emit(summary)
        if {"fp32", "bf16"} <= set(args.precisions):
            # per round, side by side: the ratio of each round's pair, then their median
            emit({"speedup": name, "bf16_vs_fp32": {
                loop: round(statistics.median(b / f for b, f in zip(rates[(loop, "bf16")],
                                                                    rates[(loop, "fp32")])), 3)
                for loop in loops}, "target_ours": TARGET_BF16_SPEEDUP.get(name)})


def dataset_name(value: str) -> str:
    """Resolve a relative imagefolder path against the repo root, so the default works anywhere."""
    prefix = "imagefolder:"
    if value.startswith(prefix) and not Path(value[len(prefix):]).expanduser().is_absolute():
        return prefix + str(REPO_ROOT / value[len(prefix):])
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=dataset_name, default=DEFAULT_DATASET,
                   help="dataset name; a relative imagefolder path is taken from the repo root "
                        "(default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--batch-size", type=int, default=128)
    defaults = ", ".join(f"{name} {images}" for name, (_, images) in ARCHITECTURES.items())
    p.add_argument("--images", type=int, default=None,
                   help=f"timed images per measurement, rounded up to whole batches "
                        f"(default per architecture: {defaults})")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first (default: 5)")
    p.add_argument("--workers", type=int, default=2, help="conventional DataLoader workers")
    p.add_argument("--archs", nargs="+", choices=list(ARCHITECTURES), default=list(ARCHITECTURES))
    p.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS))
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    args = p.parse_args(argv)
    for flag, low in (("batch_size", 1), ("images", 1), ("rounds", 1), ("warmup", 0),
                      ("workers", 0)):
        value = getattr(args, flag)
        if value is not None and value < low:
            p.error(f"--{flag.replace('_', '-')} is {value}; it must be >= {low}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        run(args)
    except HpoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
