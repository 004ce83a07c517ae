"""Benchmark rows for the maximization chapter: `maximize` on EfficientNet-Lite0 at 224×224, per
step, against one raw forward+backward pass (the limit; goal: within 1.3×), and with FFT, colour
decorrelation and the standard transforms ("all") against torch-lucent's `render_vis` on the same
objective, parameterization, transforms and number of steps.

torch-lucent 0.1.8 pins kornia <= 0.4.1 and is not among the project's dependencies; where it does
not import, its row says so. To run it: `pip install --no-deps torch-lucent kornia==0.4.1 decorator`
into a folder outside the project's environment and put that folder on PYTHONPATH.
"""
from __future__ import annotations

import copy

import torch

from timing import timings
from vizlib import maximization as mx

TARGET = 282                          # tiger cat
LAYER, CHANNEL = "blocks.8", 10       # a mid-depth channel for the lucent comparison
STEPS = 8                             # steps per timed call; rows are per step


def per_step(fn, repeats):
    return [t / STEPS for t in timings(fn, repeats, warmup=1)]


def lucent_rows(model, repeats, ours):
    try:
        from lucent.optvis import objectives, param, render, transform
    except ImportError as error:
        return [(f"AM {LAYER}:{CHANNEL}; no module {error.name}", ours, None)]
    # A copy, because render_vis registers a forward hook on every module and never removes them.
    copied = copy.deepcopy(model)
    to_lite0_input = [lambda x: (255 * x - 127) / 128]      # lucent's images are in [0, 1]

    def lucent():
        render.render_vis(copied, objectives.channel(LAYER.replace(".", "_"), CHANNEL),
                          lambda: param.image(224, fft=True, decorrelate=True),
                          transforms=transform.standard_transforms + to_lite0_input, thresholds=(STEPS,),
                          preprocess=False, progress=False, show_image=False)
        for module in copied.modules():
            module._forward_hooks.clear()

    return [(f"AM {LAYER}:{CHANNEL}, all (vs lucent)", ours, per_step(lucent, repeats))]


def rows(model, image, repeats):
    def raw_forward_backward():
        inputs = image.clone().requires_grad_()
        model(inputs)[:, TARGET].sum().backward()

    def maximize(objective, **options):
        return lambda: mx.maximize(model, objective, steps=STEPS, **options)

    raw = timings(raw_forward_backward, repeats)
    plain = dict(parameterization="pixels", decorrelate=False, transforms=None)
    channel = mx.channel(LAYER, CHANNEL)
    table = [
        ("AM logit, pixels (vs raw f+b)", per_step(maximize(mx.class_logit(TARGET), **plain), repeats), raw),
        ("AM logit, fft+decorr (vs raw f+b)", per_step(maximize(mx.class_logit(TARGET), transforms=None), repeats),
         raw),
        ("AM logit, +std transforms (vs f+b)", per_step(maximize(mx.class_logit(TARGET)), repeats), raw),
    ]
    return table + lucent_rows(model, repeats, per_step(maximize(channel), repeats))
