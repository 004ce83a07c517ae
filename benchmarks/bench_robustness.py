"""Benchmark rows for the robustness chapter: vizlib's FGSM and PGD against Captum's on
EfficientNet-Lite0 at 224×224, and one PGD step against one raw forward+backward pass (the limit
an attack that needs the loss gradient at every step lives under). Both libraries use the same
cross-entropy loss and bounds; Captum's `zero_thresh` is set to 0 so that the outputs are equal."""
from __future__ import annotations

import math
import warnings

import captum.robust as cr
import torch
from torch.nn import functional as F

from timing import timings
from vizlib import robustness

TARGET = 282          # tiger cat
EPSILON = 2 / 128     # two pixel levels
STEPS = 5


def rows(model, image, repeats):
    warnings.filterwarnings("ignore", module="captum")
    target = torch.tensor([TARGET], device=image.device)
    low, high = robustness.PREPROCESSED_BOUNDS

    def loss(outputs, labels):
        return F.cross_entropy(outputs, labels, reduction="none")

    captum_fgsm = cr.FGSM(model, loss, low, high)
    captum_fgsm.zero_thresh = 0
    captum_pgd = cr.PGD(model, loss, low, high)
    captum_pgd.fgsm.zero_thresh = 0
    options = dict(radius=EPSILON, step_size=EPSILON / 4, steps=STEPS, bounds=robustness.PREPROCESSED_BOUNDS)

    def raw_forward_backward():
        inputs = image.clone().requires_grad_()
        F.cross_entropy(model(inputs), target).backward()

    cases = [
        ("fgsm vs Captum FGSM",
         lambda: robustness.fgsm(model, image, target, epsilon=EPSILON, bounds=robustness.PREPROCESSED_BOUNDS),
         lambda: captum_fgsm.perturb(image, EPSILON, target)),
        (f"pgd linf, {STEPS} steps vs Captum PGD",
         lambda: robustness.pgd(model, image, target, **options),
         lambda: captum_pgd.perturb(image, EPSILON, EPSILON / 4, STEPS, target)),
        (f"pgd l2, {STEPS} steps vs Captum PGD",
         lambda: robustness.pgd(model, image, target, **dict(options, radius=1.0, step_size=0.25), norm="l2"),
         lambda: captum_pgd.perturb(image, 1.0, 0.25 / math.sqrt(image[0].numel()), STEPS, target,
                                    norm="L2")),
    ]
    results = [(name, timings(ours, repeats), timings(reference, repeats)) for name, ours, reference in cases]
    per_step = [t / STEPS for t in timings(lambda: robustness.pgd(model, image, target, **options), repeats)]
    results.append(("pgd, one step vs raw f+b", per_step, timings(raw_forward_backward, repeats)))
    return results
