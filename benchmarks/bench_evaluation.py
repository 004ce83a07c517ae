"""Benchmark rows for the evaluation chapter on EfficientNet-Lite0: deletion and insertion (33 points
of the curve, one batch of 33) against the raw batched forward of 33 prepared images, the limit any
implementation lives under; infidelity and max-sensitivity against Captum's metrics with the same
perturbations and chunks; deletion with `batch_size="auto"` against its best fixed batch size."""
from __future__ import annotations

import warnings

import captum.metrics
import torch

from timing import auto_vs_best_fixed, timings
from vizlib import backprop, evaluation

TARGET = 282          # tiger cat
STEPS = 32


def rows(model, image, repeats):
    warnings.filterwarnings("ignore", module="captum")
    saliency = backprop.gradient(model, image, TARGET).abs().sum(1, keepdim=True)
    prepared = image.expand(STEPS + 1, -1, -1, -1).contiguous()
    target = torch.tensor([TARGET], device=image.device)

    def raw_forward():
        with torch.no_grad():
            model(prepared).softmax(-1)[:, TARGET]

    def noise_pair(inputs):
        noise = torch.randn_like(inputs) * 0.1
        return noise, inputs - noise

    def explain(inputs, target):
        with torch.enable_grad():
            if isinstance(inputs, tuple):
                return (backprop.gradient(model, inputs[0], target),)
            return backprop.gradient(model, inputs, target)

    attribution = saliency.expand_as(image)
    cases = [
        ("deletion 33 pts vs raw forward", lambda: evaluation.deletion(model, image, saliency, TARGET, steps=STEPS,
                                                                      batch_size=STEPS + 1), raw_forward),
        ("insertion 33 pts vs raw forward", lambda: evaluation.insertion(model, image, saliency, TARGET,
                                                                        steps=STEPS, batch_size=STEPS + 1),
         raw_forward),
        ("infidelity, 16 samples", lambda: evaluation.infidelity(model, image, attribution, TARGET,
                                                                 perturb=noise_pair, n_perturb_samples=16),
         lambda: captum.metrics.infidelity(model, noise_pair, image, attribution, target=TARGET,
                                           n_perturb_samples=16)),
        ("max-sensitivity gradient, 8", lambda: evaluation.max_sensitivity(backprop.gradient, model, image,
                                                                           target, n_perturb_samples=8),
         lambda: captum.metrics.sensitivity_max(explain, image, n_perturb_samples=8, target=target)),
    ]
    auto = auto_vs_best_fixed(f"deletion {STEPS + 1} pts", lambda batch_size: evaluation.deletion(
        model, image, saliency, TARGET, steps=STEPS, batch_size=batch_size), repeats)
    return [(name, timings(ours, repeats), timings(reference, repeats)) for name, ours, reference in cases] + [auto]
