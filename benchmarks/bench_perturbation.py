"""Benchmark rows for the perturbation chapter: occlusion and leave-one-out against Captum.

Every case explains one image with 25 perturbed copies (an 80-pixel window at stride 36, or a 5×5
grid), so a row costs 26 forward passes; times are per explanation, ours at the default
`batch_size="auto"` unless a row names a size. Two rows compare `batch_size="auto"` with the best
fixed batch size on this machine (goal: within 1.05×), for occlusion and for RISE with 64 masks.
Two rows time one forward pass of `mechanics.inference_copy` (BatchNorm folded, channels-last), which the
forward-only methods run, against the model itself (goal: 1.5× faster), per image.
"""
import math

import torch
from captum.attr import FeatureAblation, Occlusion

from timing import auto_vs_best_fixed, timings
from vizlib.mechanics import inference_copy
from vizlib.perturbation import grid_segments, leave_one_out, occlusion, rise

WINDOW, STRIDE, CELLS, BATCH, RISE_MASKS = 80, 36, 5, 64, 64
PERTURBED = (math.ceil((224 - WINDOW) / STRIDE) + 1) ** 2   # 25 windows, as many as grid cells


def rows(model, image, repeats):
    target = 285
    segments = grid_segments(224, 224, CELLS).to(image.device)
    captum_occlusion, captum_ablation = Occlusion(model), FeatureAblation(model)

    def ours_occlusion(batch_size="auto"):
        occlusion(model, image, target, window=WINDOW, stride=STRIDE, batch_size=batch_size)

    def theirs_occlusion(perturbations_per_eval):
        return lambda: captum_occlusion.attribute(image, target=target, sliding_window_shapes=(3, WINDOW, WINDOW),
                                                  strides=(3, STRIDE, STRIDE),
                                                  perturbations_per_eval=perturbations_per_eval)

    def ours_leave_one_out():
        leave_one_out(model, image, target, segments=segments)

    def theirs_ablation(perturbations_per_eval):
        return lambda: captum_ablation.attribute(image, target=target, feature_mask=segments[None, None],
                                                 perturbations_per_eval=perturbations_per_eval)

    # The floor: one forward pass of the original and the perturbed copies, nothing else.
    copies = image.expand(PERTURBED + 1, -1, -1, -1).contiguous()

    def raw_forward():
        with torch.no_grad():
            for start in range(0, len(copies), BATCH):
                model(copies[start:start + BATCH])

    def timed(fn):
        return timings(fn, repeats, warmup=1)

    def forward(net, batch):
        def run():
            with torch.inference_mode():
                net(batch)
        return [t / len(batch) for t in timed(run)]

    folded = inference_copy(model)
    forward_rows = [(f"forward, inference copy vs model, batch {size}", forward(folded, copies[:size]),
                     forward(model, copies[:size])) for size in (1, 16)]

    ours, ours_segments = timed(ours_occlusion), timed(ours_leave_one_out)
    return [
        *forward_rows,
        auto_vs_best_fixed("occlusion", ours_occlusion, repeats),
        auto_vs_best_fixed(f"RISE, {RISE_MASKS} masks,", lambda batch_size: rise(
            model, image, target, n_masks=RISE_MASKS, batch_size=batch_size), repeats),
        ("occlusion vs Captum, ppe=1", ours, timed(theirs_occlusion(1))),
        ("occlusion, batch 1 vs Captum, ppe=1", timed(lambda: ours_occlusion(1)), timed(theirs_occlusion(1))),
        (f"occlusion vs Captum, ppe={PERTURBED}", ours, timed(theirs_occlusion(PERTURBED))),
        (f"occlusion vs raw forward of {PERTURBED + 1}", ours, timed(raw_forward)),
        ("leave-one-out vs FeatureAblation, ppe=1", ours_segments, timed(theirs_ablation(1))),
        (f"leave-one-out vs FeatureAblation, ppe={PERTURBED}", ours_segments, timed(theirs_ablation(PERTURBED))),
    ]
