"""Benchmark rows for the small nets the chapters train: one optimizer step of `models.train`'s
loop (AdamW, batch 64, 64×64 shapes) with the weights channels-last, as `models.train` runs it
(`mechanics.channels_last`), against the same step in the default contiguous layout. Times are per
step; the EfficientNet arguments of `rows` are not used."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from timing import timings
from vizlib import attention, data, models
from vizlib.mechanics import channels_last

BATCH = 64
SUBJECT = "64×64 shapes, batch 64"


def rows(model, image, repeats):
    shapes = data.shapes(BATCH, seed=0)
    images, labels = shapes.images.to(image.device), shapes.labels.to(image.device)
    nets = {"GAPNet (16, 32, 64)": lambda: models.GAPNet(widths=(16, 32, 64)),
            "GAPNet (default)": models.GAPNet,
            "AttentionNet, CBAM (chapter 6)": lambda: attention.AttentionNet(
                "cbam", widths=(8, 16, 32, 64), stem_stride=2)}
    table = []
    for name, make in nets.items():
        torch.manual_seed(0)
        net = make().to(image.device).train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

        def step():
            loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        contiguous = timings(step, repeats)
        with channels_last(net):
            last = timings(step, repeats)
        table.append((f"train step, {name}: channels-last vs contiguous", last, contiguous))
    return table
