"""The book's method list: one entry per saliency method, read by `evaluation.leaderboard`.

Each `Method` names the function, its family (the module), the survey section that presents it,
whether it needs gradients of the model (False: a black box is enough), and default keyword
arguments for two settings: ``"lite0"`` (EfficientNet-Lite0, 224×224 inputs under
`data.preprocess`) and ``"shapes"`` (the small GAP nets of `vizlib.models` on `data.shapes`,
64×64 inputs in [0, 1]). The defaults are cheap settings for ranking methods, not each method's
best. A new method is one more line in `METHODS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import backprop, cam, lrp, perturbation, surrogate

__all__ = ["Method", "METHODS", "method", "names"]


@dataclass(frozen=True)
class Method:
    name: str
    function: Callable
    family: str
    section: str
    gradients: bool
    lite0: dict = field(default_factory=dict)
    shapes: dict = field(default_factory=dict)
    layer: bool = False                              # the function takes a `layer=` argument
    main_parameter: tuple[str, tuple] | None = None  # (name, candidate values) for a slider

    def __call__(self, model, x: torch.Tensor, target=None, *, setting: str = "shapes", **options) -> torch.Tensor:
        """The map of `model` on `x` for `target` with the setting's defaults updated by `options`;
        a segment attribution (LIME, SHAP) is returned as its pixel map [N, 1, H, W]."""
        if setting not in ("lite0", "shapes"):
            raise ValueError(f"setting: expected 'lite0' or 'shapes', got {setting!r}")
        result = self.function(model, x, target, **{**getattr(self, setting), **options})
        return result.map if isinstance(result, surrogate.SegmentAttribution) else result


LITE0_GRID = perturbation.grid_segments(224, 224, 8)
SHAPES_GRID = perturbation.grid_segments(64, 64, 8)
LITE0_ZERO = torch.zeros(1, 3, 224, 224)        # mid-grey under data.preprocess
SHAPES_GREY = torch.full((1, 3, 64, 64), 0.5)   # mid-grey for inputs in [0, 1]

METHODS: dict[str, Method] = {m.name: m for m in [
    Method("occlusion", perturbation.occlusion, "perturbation", "2.1.1", False,
           dict(window=(32, 32), stride=16), dict(window=(8, 8), stride=4, baseline=0.5), main_parameter=("stride", (4, 8, 16, 32))),
    Method("rise", perturbation.rise, "perturbation", "2.1.1", False,
           dict(n_masks=500), dict(n_masks=500, cell=8), main_parameter=("n_masks", (250, 500, 1000))),
    Method("gradient", backprop.gradient, "backprop", "2.1.2.1", True),
    Method("input x gradient", backprop.input_x_gradient, "backprop", "2.1.2.1", True),
    Method("smoothgrad", backprop.smoothgrad, "backprop", "2.1.2.1", True,
           dict(n_samples=16), dict(n_samples=16), main_parameter=("n_samples", (8, 16, 32, 64))),
    Method("integrated gradients", backprop.integrated_gradients, "backprop", "2.1.2.1", True,
           dict(steps=32), dict(steps=32, baseline=SHAPES_GREY), main_parameter=("steps", (8, 16, 32, 64))),
    Method("guided backprop", backprop.guided_backprop, "backprop", "2.1.2.2", True),
    Method("deconvnet", backprop.deconvnet, "backprop", "2.1.2.2", True),
    Method("lrp epsilon", lrp.lrp, "lrp", "2.1.2.3", True),
    Method("deeplift", lrp.deeplift, "lrp", "2.1.2.3", True, dict(), dict(baseline=0.5)),
    Method("cam", cam.cam, "cam", "2.1.3", True, dict(layer="head"), dict(layer="features"), layer=True),
    Method("grad-cam", cam.grad_cam, "cam", "2.1.3", True, dict(layer="head"), dict(layer="features"), layer=True),
    Method("guided grad-cam", cam.guided_grad_cam, "cam", "2.1.3", True,
           dict(layer="head"), dict(layer="features"), layer=True),
    Method("grad-cam++", cam.grad_cam_plus_plus, "cam", "2.1.3", True,
           dict(layer="head"), dict(layer="features"), layer=True),
    Method("score-cam", cam.score_cam, "cam", "2.1.3", False, dict(layer="head"), dict(layer="features"), layer=True),
    Method("layer-cam", cam.layer_cam, "cam", "2.1.3", True, dict(layer="head"), dict(layer="features"), layer=True),
    Method("lime", surrogate.lime, "surrogate", "2.1.6", False,
           dict(segments=LITE0_GRID, n_samples=256), dict(segments=SHAPES_GRID, n_samples=256, baseline=0.5), main_parameter=("n_samples", (64, 256, 1024))),
    Method("kernel shap", surrogate.kernel_shap, "surrogate", "2.1.6", False,
           dict(segments=LITE0_GRID, n_samples=256), dict(segments=SHAPES_GRID, n_samples=256, baseline=0.5), main_parameter=("n_samples", (64, 256, 1024))),
    Method("gradient shap", surrogate.gradient_shap, "surrogate", "2.1.6", True,
           dict(baselines=LITE0_ZERO, n_samples=16), dict(baselines=SHAPES_GREY, n_samples=16), main_parameter=("n_samples", (8, 16, 32, 64))),
]}


def method(name: str) -> Method:
    """The entry of `METHODS` called `name`; an unknown name raises a KeyError listing the known ones."""
    if name not in METHODS:
        raise KeyError(f"method: unknown {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def names(family: str | None = None, *, gradients: bool | None = None) -> list[str]:
    """The method names, optionally of one family, or only those that do (not) need gradients."""
    return [m.name for m in METHODS.values()
            if (family is None or m.family == family) and (gradients is None or m.gradients == gradients)]
