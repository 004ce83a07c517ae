"""Benchmark rows for the gradients chapter: each method against its Captum counterpart with matched
parameters, and IG / SmoothGrad against the raw batched forward+backward of the same number of samples."""
from __future__ import annotations

import warnings

import captum.attr as ca

from timing import alternating, timings
from vizlib import backprop

TARGET = 282          # tiger cat
STEPS = 16            # IG path points and SmoothGrad samples
BATCH = 8             # the cheapest forward+backward batch on a 2-core CPU (see the limits table)


def rows(model, image, repeats):
    warnings.filterwarnings("ignore", module="captum")
    x = image
    sigma = 0.15 * (x.max() - x.min()).item()      # smoothgrad's default noise_level, as an absolute σ

    def raw_forward_backward():
        for _ in range(STEPS // BATCH):
            inputs = x.expand(BATCH, -1, -1, -1).clone().requires_grad_()
            model(inputs)[:, TARGET].sum().backward()

    cases = [
        ("gradient", lambda: backprop.gradient(model, x, TARGET),
         lambda: ca.Saliency(model).attribute(x, target=TARGET, abs=False)),
        ("input_x_gradient", lambda: backprop.input_x_gradient(model, x, TARGET),
         lambda: ca.InputXGradient(model).attribute(x, target=TARGET)),
        ("guided_backprop", lambda: backprop.guided_backprop(model, x, TARGET),
         lambda: ca.GuidedBackprop(model).attribute(x, target=TARGET)),
        ("deconvnet", lambda: backprop.deconvnet(model, x, TARGET),
         lambda: ca.Deconvolution(model).attribute(x, target=TARGET)),
        ("deconvnet, neuron blocks.5", lambda: backprop.deconvnet(model, x, layer="blocks.5", channel=3),
         lambda: ca.NeuronDeconvolution(model, model.get_submodule("blocks.5")).attribute(
             x, neuron_selector=(3, 5, 5))),
        (f"integrated_gradients, {STEPS} steps", lambda: backprop.integrated_gradients(
            model, x, TARGET, steps=STEPS, rule="gausslegendre", batch_size=BATCH),
         lambda: ca.IntegratedGradients(model).attribute(x, target=TARGET, n_steps=STEPS, method="gausslegendre",
                                                          internal_batch_size=BATCH)),
        (f"smoothgrad, {STEPS} samples", lambda: backprop.smoothgrad(model, x, TARGET, n_samples=STEPS,
                                                                      batch_size=BATCH),
         lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(x, target=TARGET, nt_samples=STEPS, stdevs=sigma,
                                                              nt_samples_batch_size=BATCH, abs=False)),
        (f"raw forward+backward, {STEPS} images", raw_forward_backward, None),
        (f"IG, {STEPS} steps, vs raw limit", lambda: backprop.integrated_gradients(
            model, x, TARGET, steps=STEPS, rule="gausslegendre", batch_size=BATCH), raw_forward_backward),
        (f"SmoothGrad, {STEPS} samples, vs raw limit", lambda: backprop.smoothgrad(
            model, x, TARGET, n_samples=STEPS, batch_size=BATCH), raw_forward_backward),
        (f"blur IG, {STEPS} steps, vs raw limit", lambda: backprop.blur_integrated_gradients(
            model, x, TARGET, steps=STEPS, batch_size=BATCH), raw_forward_backward),
        (f"blur IG vs IG, {STEPS} steps each", lambda: backprop.blur_integrated_gradients(
            model, x, TARGET, steps=STEPS, batch_size=BATCH), lambda: backprop.integrated_gradients(
            model, x, TARGET, steps=STEPS, batch_size=BATCH)),
        ("rectified_gradient", lambda: backprop.rectified_gradient(model, x, TARGET), None),
    ]
    table = [(name, timings(ours, repeats), timings(reference, repeats) if reference else None)
             for name, ours, reference in cases]
    # The rule overhead (goal: within 1.1× of the plain gradient pass), at batch 1 and BATCH, each
    # rule timed in turns with the plain pass (the ratio is small next to the machine's drift).
    batch = x.expand(BATCH, -1, -1, -1).contiguous()
    for images, size in ((x, 1), (batch, BATCH)):
        def plain(images=images):
            backprop.gradient(model, images, TARGET)

        for name, method in (("guided backprop", backprop.guided_backprop), ("deconvnet", backprop.deconvnet)):
            table.append((f"{name} vs gradient, batch {size}",
                          *alternating(lambda images=images, method=method: method(model, images, TARGET), plain,
                                       repeats)))
    return table
