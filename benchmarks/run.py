"""Benchmarks: vizlib's methods against their reference implementations, on the same model,
inputs and machine, in one process. Run with `make bench` (never part of the tests).

Each row prints the median wall time of ours and of the reference, and their ratio. The first
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


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
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
    return statistics.median(times)


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

        rows.append((f"forward, batch {batch_size}", median_seconds(forward, repeats) / batch_size, None))
        rows.append((f"forward+backward, batch {batch_size}", median_seconds(forward_backward, repeats) / batch_size, None))
    return rows


def print_table(title, rows):
    print(f"\n{title}")
    print(f"{'case':<40}{'ours ms/img':>14}{'reference ms/img':>18}{'speed-up':>10}")
    for name, ours, reference in rows:
        ratio = f"{reference / ours:9.2f}x" if reference else ""
        reference_text = f"{reference * 1e3:18.1f}" if reference else f"{'-':>18}"
        print(f"{name:<40}{ours * 1e3:14.1f}{reference_text}{ratio:>10}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    args = parser.parse_args()

    where = device()
    print(f"device: {where}, torch {torch.__version__}, threads: {torch.get_num_threads()}")
    model = models.load_efficientnet_lite0(where)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    image = data.preprocess(data.load_image("chelsea")).to(where)
    print_table("Limits: EfficientNet-Lite0, 224×224 (per image; lower is better)",
                limit_rows(model, image, args.batch_sizes, args.repeats))


if __name__ == "__main__":
    main()
