"""Does bf16 train to the same accuracy as float32, and how much faster, through hpo's trainer?

Four networks (the reports' start, the network they settled on, a small one and a wide one),
each trained by ``hpo.training.train.fit`` for 10 epochs on 1,000 real CIFAR-10 training images, on
three seeds, in float32 and in bf16 (``--precision bf16``: autocast forward, float32 weights,
optimiser state, normalisation statistics and loss). Runs alternate precisions within each seed
(fp32 first on even seeds, bf16 first on odd ones), in one process on one thread, so machine
noise hits both alike and the speed ratio is measured side by side.

Per network: mean validation accuracy per precision, the mean and largest bf16 - fp32 gap over
seeds, beside float32's own seed-to-seed spread (max - min), and bf16's images/s over float32's
(median over seeds). Target: |mean gap| <= fp32's spread for every network; bf16 >= 1.5x for the
reports' networks on a CPU with AVX512-BF16/AMX. One JSON line per run and per network, printed
and appended to benchmarks/results/precision_parity.jsonl.

    .venv/bin/python benchmarks/precision_parity.py            # ~15 min of one core here
    .venv/bin/python benchmarks/precision_parity.py --networks small --seeds 0 --epochs 1  # a look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from hpo.training import data  # noqa: E402
from hpo.training.config import from_dict, load_json  # noqa: E402
from hpo.training.train import configure_backend, fit  # noqa: E402
from search_spaces import DEFAULTS  # noqa: E402

DATASET = "imagefolder:" + str(REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
REPORTS_START = {**DEFAULTS, **load_json(REPO_ROOT / "benchmarks" / "bases" / "reports.json")}
NETWORKS = {
    "start": REPORTS_START,  # 32-64-128, 3x3, SGD, batch 32: where the reports began
    "settled": {**DEFAULTS, **load_json(REPO_ROOT / "examples" / "reports_final.json")},
    "small": {**DEFAULTS, "conv_layers": 2, "filters": [16, 32], "fc_widths": [128],
              "batch_size": 64},
    "wide": {**DEFAULTS, "filters": [64, 128, 256], "fc_widths": [4096], "conv_batchnorm": True,
             "fc_dropout": 0.3, "batch_size": 64},
}
RESULTS = REPO_ROOT / "benchmarks" / "results" / "precision_parity.jsonl"


def emit(record: dict, out) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    configure_backend("cpu", "highest")
    images = data.load(args.dataset, "cpu", args.val_fraction, 0, args.train_size)
    out = open(args.out, "a") if args.out else None
    summaries = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        for name in args.networks:
            runs = {"fp32": [], "bf16": []}
            for seed in args.seeds:
                order = ("fp32", "bf16") if seed % 2 == 0 else ("bf16", "fp32")
                for precision in order:
                    config = from_dict({**NETWORKS[name], "epochs": args.epochs, "seed": seed})
                    result = fit(config, images, bf16=precision == "bf16")
                    rate = len(images.train) * len(result.history) / result.seconds
                    record = {"network": name, "seed": seed, "precision": precision,
                              "val_acc": round(result.final_val_acc, 4),
                              "best_val_acc": round(result.best_val_acc, 4),
                              "train_loss": round(result.history[-1].train_loss, 4),
                              "status": result.status, "seconds": round(result.seconds, 2),
                              "img_per_s": round(rate, 1)}
                    runs[precision].append(record)
                    emit({"run": record, "at": stamp}, out)
            summaries.append(summarise(name, runs, args, stamp))
            emit(summaries[-1], out)
    finally:
        if out is not None:
            out.close()
    return summaries


def summarise(name: str, runs: dict[str, list[dict]], args, stamp: str) -> dict:
    fp32 = [r["val_acc"] for r in runs["fp32"]]
    bf16 = [r["val_acc"] for r in runs["bf16"]]
    gaps = [b - f for b, f in zip(bf16, fp32)]  # per seed: same seed, same data order
    spread = max(fp32) - min(fp32)
    speed = [b["img_per_s"] / f["img_per_s"] for b, f in zip(runs["bf16"], runs["fp32"])]
    mean_gap = statistics.mean(gaps)
    return {"summary": name, "at": stamp, "epochs": args.epochs, "train_size": args.train_size,
            "seeds": list(args.seeds), "threads": args.threads,
            "fp32_mean": round(statistics.mean(fp32), 4),
            "bf16_mean": round(statistics.mean(bf16), 4),
            "mean_gap": round(mean_gap, 4), "largest_gap": round(max(gaps, key=abs), 4),
            "fp32_seed_spread": round(spread, 4),
            "bf16_vs_fp32_img_per_s": round(statistics.median(speed), 3),
            "fp32_img_per_s": round(statistics.median(r["img_per_s"] for r in runs["fp32"]), 1),
            "bf16_img_per_s": round(statistics.median(r["img_per_s"] for r in runs["bf16"]), 1),
            "parity": abs(mean_gap) <= spread}


def table(summaries: list[dict]) -> str:
    rows = [f"{'network':<9}{'fp32':>8}{'bf16':>8}{'mean gap':>10}{'largest':>9}"
            f"{'fp32 spread':>13}{'speed':>7}  parity"]
    for s in summaries:
        rows.append(f"{s['summary']:<9}{s['fp32_mean']:>8.3f}{s['bf16_mean']:>8.3f}"
                    f"{s['mean_gap']:>+10.3f}{s['largest_gap']:>+9.3f}"
                    f"{s['fp32_seed_spread']:>13.3f}"
                    f"{s['bf16_vs_fp32_img_per_s']:>6.2f}x  {'yes' if s['parity'] else 'NO'}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=DATASET)
    p.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--val-fraction", type=float, default=0.02,
                   help="of the 50,000 training images: 0.02 is 1,000 validation images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS), help="JSON lines appended here ('' for none)")
    args = p.parse_args(argv)
    summaries = run(args)
    print(table(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
