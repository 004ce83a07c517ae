"""Benchmark rows for the small nets the chapters train: one optimizer step of `models.train`'s
loop (AdamW, batch 64, 64×64 shapes) with the weights channels-last, as `models.train` runs it
(`mechanics.channels_last`), against the same step of an identical net in the default contiguous
layout, the two timed in turns. Times are per step; the EfficientNet arguments of `rows` are not
used."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from timing import alternating
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
    def training_step(make):
        torch.manual_seed(0)
        net = make().to(image.device).train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

        def step():
            loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return net, step

    table = []
    for name, make in nets.items():
        (last_net, last_step), (_, contiguous_step) = training_step(make), training_step(make)
        with channels_last(last_net):
            table.append((f"train step, {name}: channels-last vs contiguous",
                          *alternating(last_step, contiguous_step, repeats)))
    return table
