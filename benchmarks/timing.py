"""Timing helpers shared by the benchmark modules."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


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


def alternating(ours, reference, repeats):
    """Times of `ours` and `reference`, run in turns (after one warm-up each), so that a load that
    changes during the benchmark slows both sides alike."""
    ours(), reference()
    times = ([], [])
    for _ in range(repeats):
        for fn, kept in zip((ours, reference), times):
            kept.extend(timings(fn, 1, warmup=0))
    return times


def auto_vs_best_fixed(name, run, repeats, sizes=(1, 4, 16, 64)):
    """One row: ``run("auto")`` against the fastest of ``run(size)`` for the fixed `sizes` (the goal
    of `batch_size="auto"`: within 1.05× of the best fixed size). The best size is found first;
    then auto and that size are timed in turns, so a drifting load slows both alike."""
    fixed = {size: timings(lambda size=size: run(size), repeats, warmup=1) for size in sizes}
    best = min(fixed, key=lambda size: statistics.median(fixed[size]))
    return (f"{name} auto vs best fixed ({best})",
            *alternating(lambda: run("auto"), lambda: run(best), repeats))
