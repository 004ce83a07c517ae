"""Benchmark rows for the cam chapter: each method on EfficientNet-Lite0 at 224×224, against Captum's
LayerGradCam and GuidedGradCam where they exist, and Score-CAM's cost per channel against the raw
batched forward pass, which bounds it from below (one masked forward per channel), and Score-CAM with
`batch_size="auto"` against its best fixed batch size."""
from __future__ import annotations

import torch
from captum.attr import GuidedGradCam, LayerGradCam

from timing import auto_vs_best_fixed, timings
from vizlib import cam
from vizlib.mechanics import activations

TARGET = 285          # Egyptian cat
SMOOTH_SAMPLES = 8    # Smooth Grad-CAM++ at its default 25 samples would dominate the run
SCORE_LAYER, SCORE_BATCH = "blocks.15", 64   # 320 channels: the head's 1280 would take a minute per call


def rows(model, image, repeats):
    head = model.head
    grad_cam = LayerGradCam(model, head)
    guided_grad_cam = GuidedGradCam(model, head)
    table = [
        ("CAM, head", timings(lambda: cam.cam(model, image, TARGET, layer="head"), repeats), None),
        ("Grad-CAM, head, 7×7 (vs LayerGradCam)",
         timings(lambda: cam.grad_cam(model, image, TARGET, layer="head", size=None), repeats),
         timings(lambda: grad_cam.attribute(image, target=TARGET), repeats)),
        ("Guided Grad-CAM, head (vs Captum)",
         timings(lambda: cam.guided_grad_cam(model, image, TARGET, layer="head", interpolation="nearest"), repeats),
         timings(lambda: guided_grad_cam.attribute(image, target=TARGET), repeats)),
        ("Grad-CAM++, head", timings(lambda: cam.grad_cam_plus_plus(model, image, TARGET, layer="head"), repeats), None),
        ("LayerCAM, head", timings(lambda: cam.layer_cam(model, image, TARGET, layer="head"), repeats), None),
        (f"Smooth Grad-CAM++, {SMOOTH_SAMPLES} samples",
         timings(lambda: cam.smooth_grad_cam_plus_plus(model, image, TARGET, layer="head", samples=SMOOTH_SAMPLES),
                 repeats, warmup=1), None),
    ]
    channels = activations(model, image, SCORE_LAYER)[SCORE_LAYER].shape[1]
    masked = image.expand(SCORE_BATCH, -1, -1, -1).contiguous()

    def forward():
        with torch.no_grad():
            model(masked)

    score_cam = timings(lambda: cam.score_cam(model, image, TARGET, layer=SCORE_LAYER, batch_size=SCORE_BATCH),
                        min(repeats, 2), warmup=0)
    table.append((f"Score-CAM per channel, {SCORE_LAYER} (vs forward)", [t / channels for t in score_cam],
                  [t / SCORE_BATCH for t in timings(forward, repeats)]))
    table.append(auto_vs_best_fixed(f"Score-CAM, {SCORE_LAYER},", lambda batch_size: cam.score_cam(
        model, image, TARGET, layer=SCORE_LAYER, batch_size=batch_size), min(repeats, 2)))
    return table
