"""Benchmark rows for the explorer (issue 15's goal: a class or layer switch of a CAM-family method
answers in at most 150 ms for EfficientNet-Lite0 at 224×224 on the 2-core CPU). Each time is the
wall time of `Explorer.select(...).wait()`, from the change to the PNG shown (map, overlay and
encoding included); the reference is a direct call of the same `vizlib.cam` function, which does
its own forward and backward pass every time. The image switch pays the other image's retained pass
(its top-k forward pass is cached after the first visit) and the map."""
from __future__ import annotations

import itertools

from timing import timings
from vizlib import cam
from vizlib.explorer import LITE0_LAYERS, Explorer


def rows(model, image, repeats):
    explorer = Explorer(model, {"image": image, "mirrored": image.flip(-1)}).wait()
    classes = itertools.cycle([index for _, index in explorer.class_picker.options[:3]])
    layers = itertools.cycle(LITE0_LAYERS)

    def switch(control, values):
        return lambda: explorer.select(**{control: next(values)}).wait()

    def direct(function, layers):
        return lambda: function(model, image, next(classes), layer=next(layers))

    table = []
    for name, method, function in (("Grad-CAM", "grad-cam", cam.grad_cam), ("CAM", "cam", cam.cam)):
        explorer.select(image="image", method=method, layer="head").wait()
        table.append((f"{name} class switch, head",
                      timings(switch("class_", classes), repeats),
                      timings(direct(function, itertools.repeat("head")), repeats)))
    explorer.select(method="grad-cam").wait()
    table.append(("Grad-CAM layer switch, 6 layers",
                  timings(switch("layer", layers), repeats),
                  timings(direct(cam.grad_cam, layers), repeats)))
    images = itertools.cycle(["mirrored", "image"])
    table.append(("Grad-CAM image switch",
                  timings(switch("image", images), repeats), None))
    return table
