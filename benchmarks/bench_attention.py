"""Benchmark rows for the attention chapter: what attention modules cost.

Training: one `models.train` step (a batch of 64 shapes images, 64×64) of the chapter's
AttentionNet (widths 8-16-32-64, stride-2 stem) with squeeze-excitation or CBAM, against the
same net without attention. The printed speed-up is baseline time / attention-net time, so its
inverse is the overhead per epoch. Reading the masks: `attention.attention_maps` against a
plain forward pass in eval mode, on the CBAM net (batch of 64) and on torchvision's
MobileNetV3-Small (random weights, SE modules) at the benchmark's 224×224 photo; the goal is
attention_maps within 1.1× of the forward pass. The EfficientNet-Lite0 passed in has no
attention modules and is not used.
"""
from __future__ import annotations

import torch
import torchvision

from timing import timings
from vizlib import attention, data, models

BATCH = 64
WIDTHS, STEM_STRIDE = (8, 16, 32, 64), 2      # the chapter's nets


def per_image(times, n):
    return [t / n for t in times]


def rows(model, image, repeats):
    where = image.device
    shapes = data.shapes(BATCH, seed=0)
    x, labels = shapes.images.to(where), shapes.labels.to(where)
    nets = {kind: attention.AttentionNet(kind, widths=WIDTHS, stem_stride=STEM_STRIDE).to(where)
            for kind in (None, "se", "cbam")}

    def train_step(kind):
        return lambda: models.train(nets[kind], (x, labels), epochs=1, batch_size=BATCH, cache=False,
                                    progress=False)

    def forward(net, inputs):
        def run():
            with torch.no_grad():
                net.eval()(inputs)
        return run

    torch.manual_seed(0)
    mobilenet = torchvision.models.mobilenet_v3_small(weights=None).eval().to(where)
    baseline_step = per_image(timings(train_step(None), repeats), BATCH)
    result = [(f"train step +{kind.upper()} vs baseline", per_image(timings(train_step(kind), repeats), BATCH),
               baseline_step) for kind in ("se", "cbam")]
    result.append(("attention_maps vs forward, CBAM",
                   per_image(timings(lambda: attention.attention_maps(nets["cbam"], x), repeats), BATCH),
                   per_image(timings(forward(nets["cbam"], x), repeats), BATCH)))
    result.append(("attention_maps vs forward, MNv3-S",
                   timings(lambda: attention.attention_maps(mobilenet, image), repeats),
                   timings(forward(mobilenet, image), repeats)))
    return result
