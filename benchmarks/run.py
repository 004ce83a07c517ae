"""Benchmarks: vizlib's methods against their reference implementations, on the same model,
inputs and machine, in one process. Run with `make bench` (never part of the tests).

Each row prints the median (and best) wall time per image of ours and of the reference, and the
ratio of the medians. Timings on a shared 2-core machine vary by up to 2× between runs; compare
rows of one run only. The first
rows are the limits every attribution method lives under: the raw batched forward and
forward+backward throughput of EfficientNet-Lite0 at 224×224.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from vizlib import data, device, models


def timings(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def limit_rows(model, image, batch_sizes, repeats):
    """Forward and forward+backward cost per image of EfficientNet-Lite0 by batch size."""
    rows = []
    for batch_size in batch_sizes:
        x = image.expand(batch_size, -1, -1, -1).contiguous()

        def forward():
            with torch.no_grad():
                model(x)

        def forward_backward():
            inputs = x.clone().requires_grad_()
            model(inputs)[:, 285].sum().backward()

        rows.append((f"forward, batch {batch_size}", [t / batch_size for t in timings(forward, repeats)], None))
        rows.append((f"forward+backward, batch {batch_size}",
                     [t / batch_size for t in timings(forward_backward, repeats)], None))
    return rows


def training_rows(n_train=2000, n_test=500):
    """Wall time of `models.train` (6 epochs, no cache) on shapes, and held-out accuracy."""
    train_set, test_set = data.shapes(n_train, seed=0), data.shapes(n_test, seed=1)
    rows = []
    for model in (models.GAPNet(), models.VGGNet(), models.AllConvNet()):
        start = time.perf_counter()
        models.train(model, train_set, cache=False, progress=False)
        rows.append((type(model).__name__, time.perf_counter() - start, models.accuracy(model, test_set)))
    return rows


def print_table(title, rows):
    """rows: (case, our times per image, reference times per image or None)."""
    def cell(times):
        return f"{statistics.median(times) * 1e3:8.1f} ({min(times) * 1e3:5.1f})" if times else f"{'-':>16}"

    print(f"\n{title}")
    print(f"{'case':<34}{'ours ms/img':>18}{'reference ms/img':>20}{'speed-up':>10}")
    print(f"{'':<34}{'median (best)':>18}{'median (best)':>20}")
    for name, ours, reference in rows:
        ratio = f"{statistics.median(reference) / statistics.median(ours):9.2f}x" if reference else ""
        print(f"{name:<34}{cell(ours):>18}{cell(reference):>20}{ratio:>10}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--no-training", action="store_true", help="skip the small-net training rows")
    args = parser.parse_args()

    where = device()
    print(f"device: {where}, torch {torch.__version__}, threads: {torch.get_num_threads()}")
    model = models.load_efficientnet_lite0(where)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    image = data.preprocess(data.load_image("chelsea")).to(where)
    print_table("Limits: EfficientNet-Lite0, 224×224 (per image; lower is better)",
                limit_rows(model, image, args.batch_sizes, args.repeats))
    if not args.no_training:
        print("\nSmall nets: models.train on shapes(2000, 64×64), 6 epochs; accuracy on shapes(500, seed=1)")
        for name, seconds, accuracy in training_rows():
            print(f"{name:<34}{seconds:8.1f} s{accuracy:12.1%}")


if __name__ == "__main__":
    main()
