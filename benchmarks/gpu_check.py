"""A first look at hpo on a GPU, in one go (about 5-8 minutes on one GPU): what works, how fast.

Writes one JSON document (``--out``, default benchmarks/results/gpu_check-<host>.json) with:

- ``versions``: python, torch, its CUDA and cuDNN, the driver, the GPU, native bf16.
- ``correctness``: fp32 and bf16 training learn; under ``--deterministic`` a re-train and a
  checkpoint resume repeat the uninterrupted run exactly; a checkpoint written on the GPU
  resumes on the CPU; the precision really reaches the convolutions (float32 "highest" against
  a float64 reference, TF32 when asked, bf16 conv outputs under autocast).
- ``throughput``: images/s per network and precision through ``hpo.training.train.fit`` against a plain
  PyTorch loop (same model, optimizer and batch, batches pre-made on the device).
- ``jobs_per_gpu``: the reports' network trained by 1, 2, 4 and 8 processes on the GPU at once
  (started together): their summed images/s.
- ``stage``: one short stage end to end, ``hpo-worker --devices auto --jobs-per-device 2`` on a
  fresh SQLite database: wall time and trials per minute.

Each section records its own error and goes on. Data: the embedded CIFAR-10 sample (5,000
training images), nothing downloaded. ``--device cpu --quick`` runs every section small on the
CPU (the test suite does, tests/test_gpu_check.py).

    .venv/bin/python benchmarks/gpu_check.py                 # on a machine with a GPU
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hpo.training.config import Config  # noqa: E402
from hpo.training.model import build_model  # noqa: E402
from hpo.training.train import configure_backend, conv_tf32_allowed, fit, make_optimizer  # noqa: E402

NETWORKS = {  # the trainer_throughput networks
    "small": dict(conv_layers=2, filters=[16, 32], kernel_size=3, fc_widths=[128]),
    "medium": dict(conv_layers=3, filters=[32, 64, 128], kernel_size=3, fc_widths=[256]),
    "reports": dict(conv_layers=3, filters=[64, 128, 512], kernel_size=4, stride=1, padding=1,
                    pool="max", pool_size=2, fc_widths=[256]),
}
BATCH = 128


class Sizes:
    """How much each section does: full on a GPU, tiny with --quick."""

    def __init__(self, quick: bool):
        self.train_size = 300 if quick else 4500
        self.epochs = 1 if quick else 3
        self.throughput_images = 512 if quick else 20_000
        self.networks = ["small"] if quick else list(NETWORKS)
        self.jobs = (1, 2) if quick else (1, 2, 4, 8)
        self.job_epochs = 1 if quick else 3
        self.stage_trials = 2 if quick else 12
        self.stage_epochs = 1 if quick else 3
        self.stage_train_size = 300 if quick else 4500


def section(name: str, results: dict, work) -> None:
    """Run one section; its result, or its error, goes under ``name``."""
    start = time.perf_counter()
    try:
        results[name] = work()
    except Exception as e:  # a broken section must not lose the others' results
        results[name] = {"error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc(limit=6)}
    results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)
    print(f"{name}: {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)


def versions(device: torch.device) -> dict:
    from hpo.training.cuda_check import driver_version
    from hpo.views.export import versions as package_versions
    from hpo.training.precision import native_bf16

    out = {**package_versions(), "torch_cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "driver": driver_version(), "device": str(device), "host": socket.gethostname(),
           "cpu_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1))
    out["native_bf16"], out["native_bf16_why"] = native_bf16(device)
    return out


def _data(device, train_size: int):
    from hpo.training import data

    return data.load("cifar10-sample", device, 0.1, 0, train_size)


def _metrics(history) -> list[dict]:
    return [{k: v for k, v in vars(m).items() if k != "seconds"} for m in history]


def _same_weights(a, b) -> bool:
    return all(torch.equal(p.cpu(), q.cpu()) for p, q in
               zip(a.state_dict().values(), b.state_dict().values()))


def correctness(device: torch.device, sizes: Sizes) -> dict:
    from optuna.artifacts import FileSystemArtifactStore

    from hpo.training.checkpoints import CheckpointStore

    out: dict = {}
    images = _data(device, sizes.train_size)
    config = Config(**NETWORKS["medium"], conv_batchnorm=True, optimizer="adam", lr=1e-3,
                    batch_size=64, epochs=max(2, sizes.epochs), flip=True, crop_padding=2,
                    fc_dropout=0.2, scheduler="cosine")
    for precision in ("fp32", "bf16"):
        configure_backend(device, "highest")
        result = fit(config, images, bf16=precision == "bf16")
        out[f"train_{precision}"] = {
            "val_acc": [round(m.val_acc, 4) for m in result.history],
            "learns": result.history[-1].val_acc > 0.15 and result.status == "completed"}

    # Under --deterministic: a re-train and a resumed run repeat the uninterrupted run exactly.
    configure_backend(device, "highest", deterministic=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(FileSystemArtifactStore(tmp))

        def save_first(m, checkpoint):
            if m.epoch == 1:
                store.save("first", checkpoint())

        full = fit(config, images, on_epoch=save_first)
        again = fit(config, images)
        resumed = fit(config, images, resume=store.load("first"))
        out["deterministic_retrain_exact"] = (_metrics(again.history) == _metrics(full.history)
                                              and _same_weights(again.model, full.model))
        out["deterministic_resume_exact"] = (_metrics(resumed.history) == _metrics(full.history)
                                             and _same_weights(resumed.model, full.model))
        # The same checkpoint, written from this device, resumed on the CPU.
        configure_backend("cpu", "highest")
        on_cpu = fit(config, _data(torch.device("cpu"), sizes.train_size),
                     resume=store.load("first"))
        out["resumed_on_cpu"] = {"epochs": len(on_cpu.history),
                                 "ok": len(on_cpu.history) == config.epochs}
    configure_backend(device, "highest")
    out["conv_precision"] = conv_precision(device)
    return out


def conv_precision(device: torch.device) -> dict:
    """Relative error of one convolution against float64 on the CPU, per setting; bf16: the
    dtype a convolution returns under the trainer's autocast."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 64, 16, 16, generator=g)
    w = torch.randn(128, 64, 3, 3, generator=g)
    reference = F.conv2d(x.double(), w.double(), padding=1)
    out = {}
    for setting in ("highest", "high"):
        configure_backend(device, setting)
        got = F.conv2d(x.to(device).contiguous(memory_format=torch.channels_last), w.to(device),
                       padding=1).double().cpu()
        error = ((got - reference).abs().max() / reference.abs().max()).item()
        out[setting] = {"tf32_allowed": conv_tf32_allowed(), "max_rel_error": error}
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out["bf16_output_dtype"] = str(F.conv2d(x.to(device), w.to(device), padding=1).dtype)
    configure_backend(device, "highest")
    # float32 is ~1e-7 here, TF32 ~1e-3: "highest" must be the former
    out["fp32_is_fp32"] = out["highest"]["max_rel_error"] < 1e-5
    out["bf16_applied"] = out["bf16_output_dtype"] == "torch.bfloat16"
    return out


def plain_loop(config: Config, device: torch.device, images: int, bf16: bool) -> float:
    """Images/s of a bare PyTorch training loop on pre-made device batches."""
    torch.manual_seed(0)
    model = build_model(config).to(device).to(memory_format=torch.channels_last).train()
    optimizer = make_optimizer(config, model.parameters())
    x = torch.randn(BATCH, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(5):
        step()
    _sync(device)
    steps = max(1, images // BATCH)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    _sync(device)
    return steps * BATCH / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_rate(config: Config, images, bf16: bool) -> float:
    """Images/s through hpo.training.train.fit (its own clock: warm-up excluded, validation included)."""
    result = fit(config, images, bf16=bf16)
    return sum(len(images.train) for _ in result.history) / result.seconds


def throughput(device: torch.device, sizes: Sizes) -> dict:
    configure_backend(device, "highest")
    images = _data(device, min(sizes.train_size * 10, 4500))
    out = {}
    for name in sizes.networks:
        epochs = max(1, sizes.throughput_images // len(images.train))
        config = Config(**NETWORKS[name], batch_size=BATCH, epochs=epochs, optimizer="sgd",
                        flip=True, crop_padding=4)
        for precision in ("fp32", "bf16"):
            bf16 = precision == "bf16"
            ours = trainer_rate(config, images, bf16)
            plain = plain_loop(config, device, sizes.throughput_images, bf16)
            out[f"{name}/{precision}"] = {"trainer_img_per_s": round(ours, 1),
                                          "plain_img_per_s": round(plain, 1),
                                          "trainer_vs_plain": round(ours / plain, 3)}
        out[f"{name}/bf16_vs_fp32"] = round(out[f"{name}/bf16"]["trainer_img_per_s"]
                                            / out[f"{name}/fp32"]["trainer_img_per_s"], 3)
    return out


def child_job(args) -> int:
    """One of several processes sharing the GPU: load, warm up, wait for the go file, train."""
    device = torch.device(args.device)
    configure_backend(device, "highest")
    images = _data(device, args.train_size)
    config = Config(**NETWORKS["reports"], batch_size=BATCH, epochs=args.epochs, optimizer="sgd")
    Path(args.ready).touch()
    deadline = time.monotonic() + 300
    while not Path(args.go).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.time()
    result = fit(config, images, bf16=args.precision == "bf16")
    print(json.dumps({"images": len(images.train) * len(result.history), "start": start,
                      "end": time.time(), "seconds": result.seconds}), flush=True)
    return 0


def jobs_per_gpu(device: torch.device, sizes: Sizes, precision: str) -> dict:
    out = {}
    for jobs in sizes.jobs:
        with tempfile.TemporaryDirectory() as tmp:
            go = Path(tmp) / "go"
            children = [subprocess.Popen(
                [sys.executable, __file__, "--child-job", "--device", str(device),
                 "--precision", precision, "--train-size", str(sizes.train_size),
                 "--epochs", str(sizes.job_epochs), "--ready", str(Path(tmp) / f"ready{i}"),
                 "--go", str(go)], stdout=subprocess.PIPE, text=True,
                env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1)
                                                              // jobs))})
                for i in range(jobs)]
            deadline = time.monotonic() + 300
            while (not all((Path(tmp) / f"ready{i}").exists() for i in range(jobs))
                   and time.monotonic() < deadline
                   and all(c.poll() is None for c in children)):
                time.sleep(0.1)
            go.touch()
            reports = []
            for child in children:
                stdout, _ = child.communicate(timeout=600)
                if child.returncode != 0:
                    raise RuntimeError(f"a job exited with {child.returncode}")
                reports.append(json.loads(stdout.strip().splitlines()[-1]))
        span = max(r["end"] for r in reports) - min(r["start"] for r in reports)
        out[str(jobs)] = {"img_per_s": round(sum(r["images"] for r in reports) / span, 1),
                          "per_job_img_per_s": [round(r["images"] / r["seconds"], 1)
                                                for r in reports]}
    return out


def stage(device: torch.device, sizes: Sizes) -> dict:
    """One short stage through the real hpo-worker, two jobs on the device."""
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/hpo.db"
        devices = "auto" if device.type == "cuda" else "cpu"
        command = [sys.executable, "-m", "hpo.runtime.worker", "--study", "stage1_layers",
                   "--storage", url, "--artifacts", f"{tmp}/artifacts", "--devices", devices,
                   "--jobs-per-device", "2", "--n-trials", str(sizes.stage_trials),
                   "--epochs", str(sizes.stage_epochs), "--train-size",
                   str(sizes.stage_train_size), "--dataset", "cifar10-sample", "--quiet"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=600)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"hpo-worker exited {done.returncode}: {done.stderr[-2000:]}")
        trials = optuna.load_study(study_name="stage1_layers", storage=url).get_trials()
        states = [t.state.name for t in trials]
        finished = sum(s in ("COMPLETE", "PRUNED") for s in states)
        precision = {t.user_attrs.get("device") for t in trials}
        return {"wall_s": round(wall, 1), "trials": len(trials), "finished": finished,
                "states": {s: states.count(s) for s in set(states)},
                "trials_per_minute": round(finished / (wall / 60), 2),
                "devices": sorted(d for d in precision if d)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--quick", action="store_true", help="every section, tiny (for tests)")
    p.add_argument("--out", help="JSON file (default benchmarks/results/gpu_check-<host>.json)")
    p.add_argument("--sections", default="versions,correctness,throughput,jobs_per_gpu,stage")
    # the processes jobs_per_gpu starts
    p.add_argument("--child-job", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--precision", "--train-size", "--epochs", "--ready", "--go"):
        p.add_argument(hidden, help=argparse.SUPPRESS,
                       type=int if hidden in ("--train-size", "--epochs") else str)
    args = p.parse_args(argv)
    if args.child_job:
        return child_job(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: --device cuda but torch cannot use CUDA here; "
              "--device cpu --quick checks the script itself", file=sys.stderr)
        return 2
    sizes = Sizes(args.quick)
    from hpo.training.precision import resolve

    precision = resolve("auto", device)[0]
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "quick": args.quick, "auto_precision": precision}
    work = {"versions": lambda: versions(device),
            "correctness": lambda: correctness(device, sizes),
            "throughput": lambda: throughput(device, sizes),
            "jobs_per_gpu": lambda: jobs_per_gpu(device, sizes, precision),
            "stage": lambda: stage(device, sizes)}
    for name in args.sections.split(","):
        section(name, results, work[name])
    out = Path(args.out or REPO_ROOT / "benchmarks" / "results"
               / f"gpu_check-{socket.gethostname()}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
