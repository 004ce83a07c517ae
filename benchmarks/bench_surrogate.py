"""Benchmark rows for the surrogates chapter: LIME and Kernel SHAP against Captum's Lime, KernelShap
and ShapleyValueSampling, and against the raw batched forward passes they cannot avoid.

Every case explains one image cut into a 4×4 grid (M = 16 segments) with the same number of
forward passes on both sides: 64 coalitions for Lime and KernelShap; 4 permutations
(4 · 16 passes) for ShapleyValueSampling, against Kernel SHAP with 62 coalitions (+3 passes).
Ours run at the default `batch_size="auto"`, Captum at its default perturbations_per_eval=1 and at
32 (for ShapleyValueSampling, whose batches never exceed one permutation's M passes, both sides
at M); times are per explanation, ours and the reference measured in turns. The last row times
LIME with `batch_size="auto"` against its best fixed batch size.
"""
import warnings

import torch
from captum.attr import KernelShap, Lime, ShapleyValueSampling

from timing import alternating, auto_vs_best_fixed, timings
from vizlib.perturbation import grid_segments
from vizlib.surrogate import kernel_shap, lime

TARGET, CELLS, SAMPLES, PERMUTATIONS, BATCH = 282, 4, 64, 4, 32


def rows(model, image, repeats):
    warnings.filterwarnings("ignore", module="captum")
    segments = grid_segments(224, 224, CELLS).to(image.device)
    feature_mask = segments[None, None]
    count = CELLS * CELLS
    matched = PERMUTATIONS * count - 2   # Kernel SHAP coalitions with the passes of the permutations

    def ours_lime(batch_size="auto"):
        lime(model, image, TARGET, segments=segments, n_samples=SAMPLES, batch_size=batch_size)

    def ours_kernel_shap(n_samples=SAMPLES, batch_size="auto"):
        return lambda: kernel_shap(model, image, TARGET, segments=segments, n_samples=n_samples,
                                   batch_size=batch_size)

    def captum(method, per_eval, n_samples):
        explainer = method(model)

        def run():
            torch.manual_seed(0)
            explainer.attribute(image, target=TARGET, feature_mask=feature_mask, n_samples=n_samples,
                                perturbations_per_eval=per_eval)
        return run

    def raw_forward(n):   # the floor: n images forwarded in batches, nothing else
        copies = image.expand(n, -1, -1, -1).contiguous()

        def run():
            with torch.no_grad():
                for start in range(0, n, BATCH):
                    model(copies[start:start + BATCH])
        return run

    cases = [
        (f"lime vs Captum Lime, ppe=1 (n={SAMPLES})", ours_lime, captum(Lime, 1, SAMPLES)),
        (f"lime vs Captum Lime, ppe={BATCH}", ours_lime, captum(Lime, BATCH, SAMPLES)),
        (f"lime vs raw forward of {SAMPLES + 1}", ours_lime, raw_forward(SAMPLES + 1)),
        ("kernel_shap vs KernelShap, ppe=1", ours_kernel_shap(), captum(KernelShap, 1, SAMPLES)),
        (f"kernel_shap vs KernelShap, ppe={BATCH}", ours_kernel_shap(), captum(KernelShap, BATCH, SAMPLES)),
        (f"kernel_shap vs raw forward of {SAMPLES + 3}", ours_kernel_shap(), raw_forward(SAMPLES + 3)),
        ("kernel_shap vs ShapleyValueSampling, ppe=1", ours_kernel_shap(matched),
         captum(ShapleyValueSampling, 1, PERMUTATIONS)),
        (f"kernel_shap, batch {count} vs ShapleyValueSampling, ppe={count}", ours_kernel_shap(matched, count),
         captum(ShapleyValueSampling, count, PERMUTATIONS)),
    ]
    auto = auto_vs_best_fixed(f"lime, n={SAMPLES},", ours_lime, repeats)
    return [(name, *alternating(ours, reference, repeats)) for name, ours, reference in cases] + [auto]
