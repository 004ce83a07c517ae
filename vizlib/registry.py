"""The book's method registry: one entry per attribution method, read by the evaluation leaderboard,
the explorer and chapter 0's tables (survey §2.1 and Table 3).

An attribution method is a function ``f(model, x, target, **params)`` of a family module that
returns a map of `x` for the class `target`. Each `Method` records what the survey's Table 3 says
about it (resolution, class-discriminative, model-agnostic), whether it needs gradients, its
cost in forward and backward passes per image as formulas in its parameters, and its default
parameters in two settings: ``"lite0"`` (EfficientNet-Lite0, 224×224 inputs under
`data.preprocess`, layer names of `models.EfficientNetLite0`) and ``"shapes"`` (the small GAP
nets of `vizlib.models` on `data.shapes`, 64×64 inputs in [0, 1]). The defaults are cheap
settings for ranking methods, not each method's best.

Call a method by name with `explain` (``vizlib.explain``), list the entries with `methods`
(``vizlib.methods``) and render Table 3 with `table` / `markdown`. A new method is one more entry
in `METHODS`; ``tests/test_registry.py`` fails until every public method of a family module has one.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import backprop, cam, lrp, perturbation, surrogate
from .data import BLACK, WHITE
from .mechanics import activations

__all__ = ["Method", "METHODS", "SETTINGS", "FAMILIES", "method", "names", "methods", "explain", "table",
           "markdown", "taxonomy_markdown", "window_count"]

SETTINGS = ("lite0", "shapes")
INPUT_SIZES = {"lite0": (224, 224), "shapes": (64, 64)}
FAMILY_CHAPTERS = {"perturbation": "01_perturbation", "backprop": "02_gradients", "lrp": "03_lrp",
                   "cam": "04_cam", "surrogate": "07_surrogates"}


def window_count(height: int, width: int, window, stride) -> int:
    """How many placements of a `window` sliding with `stride` cover an image: ⌈(H − h)/s⌉ + 1 per
    side (occlusion's and prediction difference's windows; the last one is flush or cut off)."""
    (h, w), (sh, sw) = [(v, v) if isinstance(v, int) else tuple(v) for v in (window, stride)]
    return (math.ceil((height - h) / sh) + 1) * (math.ceil((width - w) / sw) + 1)


# Names a cost formula may use besides the method's parameters: H, W (input size), P (placements
# of a sliding `window`, `window_count`), K (channels of `layer`), M (segments), B (baselines) and
# `min`. Formulas are Python expressions kept as text, so the table prints exactly what the tests
# evaluate and check against counted passes.
_COST_FUNCTIONS = {"min": min}


@dataclass(frozen=True)
class Method:
    """One attribution method of the book.

    name: the registry key ("grad-cam"); `explain` also accepts the function's name ("grad_cam").
    function: ``function(model, x, target, **params)``; family: its module; section: the survey's.
    gradients: needs gradients of the model (False: forward passes suffice).
    lite0, shapes: default keyword arguments of the two settings.
    layer: the function takes a ``layer=`` argument (a layer name of the setting's model).
    main_parameter: (name, candidate values) of the parameter a slider should offer, or None.
    title, cite: the method's usual name and the bibliography keys of its paper(s).
    class_discriminative, model_agnostic, resolution: survey Table 3's verdicts ("pixel" is its
        fine-grained, "region" its region-level); a method the table does not list takes the
        verdict of the listed method it extends (blur IG that of IG, Score-CAM that of Grad-CAM).
    forwards, backwards: passes per image as formulas (see `passes`).
    per_channel: the map is shaped like x [N, C, H, W]; False: one channel [N, 1, H, W].
    leaderboard: among the cheap methods the evaluation chapter ranks on every data set.
    to_map: turns the function's result into the map (called with result, x, parameters).
    """

    name: str
    function: Callable
    family: str
    section: str
    gradients: bool
    lite0: dict = field(default_factory=dict)
    shapes: dict = field(default_factory=dict)
    layer: bool = False
    main_parameter: tuple[str, tuple] | None = None
    title: str = ""
    cite: tuple[str, ...] = ()
    class_discriminative: bool = False
    model_agnostic: bool = False
    resolution: str = "pixel"
    forwards: str = "1"
    backwards: str = "0"
    per_channel: bool = True
    leaderboard: bool = True
    to_map: Callable | None = None

    @property
    def chapter(self) -> str:
        """The book chapter (a file of book/ without suffix) that presents the method."""
        return FAMILY_CHAPTERS[self.family]

    def parameters(self, setting: str = "shapes", **options) -> dict:
        """Every keyword argument the function receives: its own defaults, updated by the setting's
        defaults and by `options`."""
        _check_setting(setting)
        own = {name: p.default for name, p in inspect.signature(self.function).parameters.items()
               if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}
        return {**own, **getattr(self, setting), **options}

    def __call__(self, model, x: torch.Tensor, target=None, *, setting: str = "shapes", **options) -> torch.Tensor:
        """The map of `model` on `x` for `target` with the setting's defaults updated by `options`;
        a segment attribution (LIME, SHAP) is returned as its pixel map [N, 1, H, W]."""
        _check_setting(setting)
        options = {**getattr(self, setting), **options}
        result = self.function(model, x, target, **options)
        if self.to_map is not None:
            return self.to_map(result, x, options)
        return result.map if isinstance(result, surrogate.SegmentAttribution) else result

    def passes(self, model=None, x: torch.Tensor | None = None, *, setting: str = "shapes",
               **options) -> tuple[int, int]:
        """Forward and backward passes per image at the setting's defaults updated by `options`:
        the formulas `forwards` and `backwards` evaluated on the parameters and on H, W (the size
        of `x`, else the setting's), P (placements of a sliding window), M (segments), B
        (baselines) and K (channels of `layer`, which needs `model` and `x`). An image counts once per copy of it that goes through the model;
        the passes `batch_size="auto"` times once per process are not counted."""
        variables = self._cost_variables(model, x, setting, options)
        return tuple(int(eval(formula, {"__builtins__": {}}, {**_COST_FUNCTIONS, **variables}))
                     for formula in (self.forwards, self.backwards))

    def _cost_variables(self, model, x, setting, options) -> dict:
        params = self.parameters(setting, **options)
        height, width = x.shape[-2:] if x is not None else INPUT_SIZES[setting]
        variables = {**params, "H": height, "W": width}
        if "window" in params and "stride" in params:
            variables["P"] = window_count(height, width, params["window"], params["stride"])
        if "segments" in params:
            variables["M"] = int(params["segments"].max()) + 1
        if "baselines" in params:
            baselines = params["baselines"]
            variables["B"] = 1 if not isinstance(baselines, torch.Tensor) or baselines.dim() == 3 else len(baselines)
        if self.layer and model is not None and x is not None:
            variables["K"] = activations(model, x[:1], params["layer"])[params["layer"]].shape[1]
        return variables


def _check_setting(setting) -> None:
    if setting not in SETTINGS:
        raise ValueError(f"setting: expected one of {', '.join(map(repr, SETTINGS))}, got {setting!r}")


def _first(result, x, params):            # leave-one-out returns (map, drops per segment)
    return result[0]


def _deleted(result, x, params):          # meaningful perturbation learns a mask; 1 − m is deleted
    return 1 - result.mask


def _painted(result, x, params):          # segment probe: each segment's score on its pixels [N, 1, H, W]
    segments = params["segments"].to(x.device).expand(len(x), *x.shape[-2:])
    return result.to(x.dtype).gather(1, segments.flatten(1)).view(len(x), 1, *x.shape[-2:])


LITE0_GRID = perturbation.grid_segments(224, 224, 8)
SHAPES_GRID = perturbation.grid_segments(64, 64, 8)
LITE0_GRID_3 = perturbation.grid_segments(224, 224, 3)   # 9 segments: 2^9 coalitions for exact Shapley
SHAPES_GRID_3 = perturbation.grid_segments(64, 64, 3)
LITE0_ZERO = torch.zeros(1, 3, 224, 224)        # mid-grey under data.preprocess
SHAPES_GREY = torch.full((1, 3, 64, 64), 0.5)   # mid-grey for inputs in [0, 1]
LITE0_GREYS = torch.linspace(BLACK, WHITE, 4).view(4, 1, 1, 1).expand(4, 3, 224, 224)   # 4 grey levels
SHAPES_GREYS = torch.linspace(0.0, 1.0, 4).view(4, 1, 1, 1).expand(4, 3, 64, 64)
LITE0_BOX = dict(low=BLACK, high=WHITE)   # the input's bounds for the z^B rule
SHAPES_BOX = dict(low=0.0, high=1.0)
LITE0_CAM, SHAPES_CAM = dict(layer="head"), dict(layer="features")   # the last convolutional layer
STEPS = (8, 16, 32, 64)

METHODS: dict[str, Method] = {m.name: m for m in [
    # --- perturbation (survey §2.1.1) -------------------------------------------------------------
    Method("occlusion", perturbation.occlusion, "perturbation", "2.1.1", False,
           dict(window=(32, 32), stride=16), dict(window=(8, 8), stride=4, baseline=0.5),
           main_parameter=("stride", (4, 8, 16, 32)), title="Occlusion", cite=("zeiler2014visualizing",),
           model_agnostic=True, resolution="region", forwards="1 + P"),
    Method("leave-one-out", perturbation.leave_one_out, "perturbation", "2.1.1", False,
           dict(segments=LITE0_GRID), dict(segments=SHAPES_GRID, baseline=0.5), title="Leave-one-out",
           cite=("robnik2008explaining", "li2016understanding"), model_agnostic=True, resolution="region",
           forwards="1 + M", leaderboard=False, to_map=_first),
    Method("rise", perturbation.rise, "perturbation", "2.1.1", False,
           dict(n_masks=500), dict(n_masks=500, cell=8), main_parameter=("n_masks", (250, 500, 1000)),
           title="RISE", cite=("petsiuk2018rise",), model_agnostic=True, resolution="region",
           forwards="1 + n_masks", per_channel=False),
    Method("prediction difference", perturbation.prediction_difference, "perturbation", "2.1.1", False,
           dict(window=16, stride=16, samples=4), dict(window=8, stride=8, padding=2, samples=4),
           main_parameter=("samples", (2, 4, 10)), title="Prediction difference",
           cite=("zintgraf2017visualizing",), model_agnostic=True, resolution="region",
           forwards="1 + samples * P", leaderboard=False),
    Method("meaningful perturbation", perturbation.meaningful_perturbation, "perturbation", "2.1.1", True,
           dict(steps=100), dict(steps=100, mask_scale=4, jitter=2), main_parameter=("steps", (50, 100, 300)),
           title="Meaningful perturbation", cite=("fong2017interpretable",), resolution="region",
           forwards="1 + steps", backwards="steps", per_channel=False, leaderboard=False, to_map=_deleted),
    # --- gradients (survey §2.1.2.1) --------------------------------------------------------------
    Method("gradient", backprop.gradient, "backprop", "2.1.2.1", True, title="Gradient (saliency)",
           cite=("baehrens2010explain", "simonyan2013deep"), backwards="1"),
    Method("input x gradient", backprop.input_x_gradient, "backprop", "2.1.2.1", True,
           title="Gradient × input", cite=("shrikumar2017learning",), backwards="1"),
    Method("smoothgrad", backprop.smoothgrad, "backprop", "2.1.2.1", True,
           dict(n_samples=16), dict(n_samples=16), main_parameter=("n_samples", STEPS), title="SmoothGrad",
           cite=("smilkov2017smoothgrad",), forwards="1 + n_samples", backwards="n_samples"),
    Method("integrated gradients", backprop.integrated_gradients, "backprop", "2.1.2.1", True,
           dict(steps=32), dict(steps=32, baseline=SHAPES_GREY), main_parameter=("steps", STEPS),
           title="Integrated gradients", cite=("sundararajan2017axiomatic",), forwards="1 + steps",
           backwards="steps"),
    Method("blur integrated gradients", backprop.blur_integrated_gradients, "backprop", "2.1.2.1", True,
           dict(steps=32), dict(steps=32, max_sigma=14.0), main_parameter=("steps", STEPS), title="Blur IG",
           cite=("xu2020attribution",), forwards="1 + steps", backwards="steps", leaderboard=False),
    Method("rectified gradient", backprop.rectified_gradient, "backprop", "2.1.2.1", True,
           main_parameter=("percentile", (90.0, 95.0, 98.0, 99.0)), title="Rectified gradient",
           cite=("kim2019why",), backwards="1", leaderboard=False),
    # --- deconvnet and guided backpropagation (survey §2.1.2.2) ------------------------------------
    Method("guided backprop", backprop.guided_backprop, "backprop", "2.1.2.2", True,
           title="Guided backpropagation", cite=("springenberg2014striving",), backwards="1"),
    Method("deconvnet", backprop.deconvnet, "backprop", "2.1.2.2", True, title="Deconvnet",
           cite=("zeiler2014visualizing",), backwards="1"),
    # --- relevance propagation (survey §2.1.2.3) ---------------------------------------------------
    Method("lrp epsilon", lrp.lrp, "lrp", "2.1.2.3", True, main_parameter=("epsilon", (1e-6, 0.01, 0.1, 1.0)),
           title="LRP-ε", cite=("bach2015pixel",), backwards="1"),
    Method("lrp composite", lrp.lrp, "lrp", "2.1.2.3", True,
           dict(composite="epsilon_gamma_box", **LITE0_BOX), dict(composite="epsilon_gamma_box", **SHAPES_BOX),
           main_parameter=("composite", tuple(lrp.COMPOSITES)), title="LRP composite",
           cite=("montavon2019layer", "kohlbrenner2020towards"), backwards="1", leaderboard=False),
    Method("clrp", lrp.lrp, "lrp", "2.1.2.3", True, dict(init="contrastive"), dict(init="contrastive"),
           title="Contrastive LRP", cite=("gu2018understanding",), class_discriminative=True, backwards="1",
           leaderboard=False),
    Method("sglrp", lrp.lrp, "lrp", "2.1.2.3", True, dict(init="softmax_gradient"), dict(init="softmax_gradient"),
           title="Softmax-gradient LRP", cite=("iwana2019explaining",), class_discriminative=True,
           backwards="1", leaderboard=False),
    Method("deeplift", lrp.deeplift, "lrp", "2.1.2.3", True, dict(), dict(baseline=0.5), title="DeepLIFT",
           cite=("shrikumar2017learning",), forwards="2", backwards="2"),   # x and its reference, one batch
    # --- deep Taylor decomposition (survey §2.1.2.4) ------------------------------------------------
    Method("deep taylor", lrp.deep_taylor, "lrp", "2.1.2.4", True, dict(LITE0_BOX), dict(SHAPES_BOX),
           title="Deep Taylor decomposition", cite=("montavon2017explaining",), backwards="1",
           leaderboard=False),
    # --- class activation maps (survey §2.1.3) -----------------------------------------------------
    Method("cam", cam.cam, "cam", "2.1.3", True, LITE0_CAM, SHAPES_CAM, layer=True, title="CAM",
           cite=("zhou2016learning",), class_discriminative=True, resolution="region", per_channel=False),
    Method("grad-cam", cam.grad_cam, "cam", "2.1.3", True, LITE0_CAM, SHAPES_CAM, layer=True,
           title="Grad-CAM", cite=("selvaraju2017gradcam",), class_discriminative=True, resolution="region",
           backwards="1", per_channel=False),
    Method("guided grad-cam", cam.guided_grad_cam, "cam", "2.1.3", True, LITE0_CAM, SHAPES_CAM, layer=True,
           title="Guided Grad-CAM", cite=("selvaraju2017gradcam",), class_discriminative=True,
           forwards="2", backwards="2"),
    Method("grad-cam++", cam.grad_cam_plus_plus, "cam", "2.1.3", True, LITE0_CAM, SHAPES_CAM, layer=True,
           title="Grad-CAM++", cite=("chattopadhay2018gradcam",), class_discriminative=True, resolution="region",
           backwards="1", per_channel=False),
    Method("smooth grad-cam++", cam.smooth_grad_cam_plus_plus, "cam", "2.1.3", True,
           dict(LITE0_CAM, samples=8), dict(SHAPES_CAM, samples=8), layer=True,
           main_parameter=("samples", (4, 8, 16, 25)), title="Smooth Grad-CAM++", cite=("omeiza2019smooth",),
           class_discriminative=True, resolution="region", forwards="1 + samples", backwards="samples",
           per_channel=False, leaderboard=False),
    Method("score-cam", cam.score_cam, "cam", "2.1.3", False, LITE0_CAM, SHAPES_CAM, layer=True,
           title="Score-CAM", cite=("wang2020scorecam",), class_discriminative=True, resolution="region",
           forwards="2 + K", per_channel=False),   # the pass for A, the baseline, one per channel
    Method("layer-cam", cam.layer_cam, "cam", "2.1.3", True, LITE0_CAM, SHAPES_CAM, layer=True,
           title="LayerCAM", cite=("jiang2021layercam",), class_discriminative=True, resolution="region",
           backwards="1", per_channel=False),
    # --- surrogate models and Shapley values (survey §2.1.6) ----------------------------------------
    Method("lime", surrogate.lime, "surrogate", "2.1.6", False,
           dict(segments=LITE0_GRID, n_samples=256), dict(segments=SHAPES_GRID, n_samples=256, baseline=0.5),
           main_parameter=("n_samples", (64, 256, 1024)), title="LIME", cite=("ribeiro2016why",),
           class_discriminative=True, model_agnostic=True, resolution="region", forwards="1 + n_samples",
           per_channel=False),
    Method("kernel shap", surrogate.kernel_shap, "surrogate", "2.1.6", False,
           dict(segments=LITE0_GRID, n_samples=256), dict(segments=SHAPES_GRID, n_samples=256, baseline=0.5),
           main_parameter=("n_samples", (64, 256, 1024)), title="Kernel SHAP", cite=("lundberg2017unified",),
           class_discriminative=True, model_agnostic=True, resolution="region",
           forwards="3 + min(2 ** M - 2, n_samples)", per_channel=False),   # the full and empty coalitions too
    Method("shapley exact", surrogate.shapley_exact, "surrogate", "2.1.6", False,
           dict(segments=LITE0_GRID_3), dict(segments=SHAPES_GRID_3, baseline=0.5), title="Exact Shapley values",
           cite=("shapley1953value", "lundberg2017unified"), class_discriminative=True, model_agnostic=True,
           resolution="region", forwards="1 + 2 ** M", per_channel=False, leaderboard=False),
    Method("segment probe", surrogate.segment_probe, "surrogate", "2.1.6", False,
           dict(segments=LITE0_GRID), dict(segments=SHAPES_GRID, baseline=0.5), title="Segment probe",
           class_discriminative=True, model_agnostic=True, resolution="region", forwards="1 + M",
           per_channel=False, leaderboard=False, to_map=_painted),
    Method("gradient shap", surrogate.gradient_shap, "surrogate", "2.1.6", True,
           dict(baselines=LITE0_ZERO, n_samples=16), dict(baselines=SHAPES_GREY, n_samples=16),
           main_parameter=("n_samples", STEPS), title="Gradient SHAP", cite=("lundberg2017unified",),
           class_discriminative=True, forwards="1 + n_samples", backwards="n_samples"),
    Method("deep shap", surrogate.deep_shap, "surrogate", "2.1.6", True,
           dict(baselines=LITE0_GREYS), dict(baselines=SHAPES_GREYS), title="Deep SHAP",
           cite=("lundberg2017unified",), class_discriminative=True, forwards="1 + 2 * B", backwards="2 * B",
           leaderboard=False),   # DeepLIFT per baseline: x and the baseline in one batch
]}

# A function's own name calls its first entry: explain(..., "grad_cam"), explain(..., "lrp").
ALIASES: dict[str, str] = {}
for _entry in METHODS.values():
    ALIASES.setdefault(_entry.function.__name__, _entry.name)


def method(name: str) -> Method:
    """The entry of `METHODS` called `name` (or whose function is called `name`); an unknown name
    raises a KeyError listing the known ones."""
    return _lookup(name)


def _lookup(name: str) -> Method:
    if name in METHODS:
        return METHODS[name]
    if name in ALIASES:
        return METHODS[ALIASES[name]]
    raise KeyError(f"method: unknown {name!r}; known: {', '.join(METHODS)}")


def names(family: str | None = None, *, gradients: bool | None = None, leaderboard: bool | None = None) -> list[str]:
    """The method names, optionally of one family, only those that do (not) need gradients, or
    only those the evaluation chapter ranks (`leaderboard`)."""
    return [m.name for m in METHODS.values()
            if (family is None or m.family == family) and (gradients is None or m.gradients == gradients)
            and (leaderboard is None or m.leaderboard == leaderboard)]


def methods(family: str | None = None) -> list[Method]:
    """The registry's entries, optionally of one family, in the book's order (``vizlib.methods``)."""
    return [METHODS[name] for name in names(family)]


def _default_setting(model) -> str:
    from .models import EfficientNetLite0

    return "lite0" if isinstance(model, EfficientNetLite0) else "shapes"


def explain(model, x: torch.Tensor, method: str, target=None, *, setting: str | None = None,
            **params) -> torch.Tensor:
    """The map of the registered `method` (a name of `METHODS` or a function's name) of `model` on
    `x` for `target` (None: the predicted class), with the setting's defaults updated by `params`
    (``vizlib.explain``). `setting` None picks ``"lite0"`` for an `EfficientNetLite0` and
    ``"shapes"`` for any other model. Segment attributions come back as pixel maps [N, 1, H, W]."""
    return _lookup(method)(model, x, target, setting=_default_setting(model) if setting is None else setting, **params)


def _cell(value) -> str:
    return "yes" if value is True else "no" if value is False else str(value)


def _cost_texts(entry: Method, setting: str) -> tuple[str, str]:
    """The formulas for forward and backward passes, each with its value at the setting's defaults
    when those fix every variable: "1 + n_samples = 17"."""
    formulas = (entry.forwards, entry.backwards)
    try:
        values = entry.passes(setting=setting)
    except NameError:   # K, the channels of `layer`, needs a model
        return formulas
    return tuple(formula if formula == str(value) else f"{formula} = {value}"
                 for formula, value in zip(formulas, values))


def _needs(entry: Method) -> str:
    """What the method reads of the model: its outputs only (model-agnostic), also its activations
    (model-specific, no gradients: Score-CAM), or its gradients."""
    return "gradients" if entry.gradients else "outputs" if entry.model_agnostic else "activations"


def table(setting: str = "lite0") -> list[dict]:
    """Survey Table 3 for the registry: one row per method, its Table 3 verdicts, whether it needs
    gradients or takes a layer, and its forward and backward passes per image at `setting`'s
    defaults (formula and value)."""
    _check_setting(setting)
    rows = []
    for m in METHODS.values():
        forwards, backwards = _cost_texts(m, setting)
        rows.append({"method": m.title, "name": m.name, "cite": m.cite, "family": m.family, "section": m.section,
                     "chapter": m.chapter, "resolution": m.resolution,
                     "class-discriminative": m.class_discriminative, "model-agnostic": m.model_agnostic,
                     "gradients": m.gradients, "needs": _needs(m), "layer": m.layer, "forwards": forwards,
                     "backwards": backwards})
    return rows


def _cited(title: str, keys, cite: bool) -> str:
    return f"{title} {{cite}}`{','.join(keys)}`" if cite and keys else title


def _formula(text: str) -> str:
    """A cost as Markdown: the formula as code, its value as text."""
    formula, _, value = text.partition(" = ")
    return f"`{formula}` = {value}" if value else text if text.isdigit() else f"`{text}`"


def markdown(setting: str = "lite0", *, cite: bool = True) -> str:
    """`table` as Markdown, in the survey's order (its sections are in `taxonomy_markdown`): the
    map's resolution, class-discriminative or not, what the method needs of the model (outputs
    only: model-agnostic), and its passes per image. With `cite`, each method carries a MyST
    {cite} role (for Markdown rendered by MyST, as in the book)."""
    header = ["method", "map", "class-discriminative", "needs", "forwards", "backwards"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table(setting):
        cells = [_cited(row["method"], row["cite"], cite), row["resolution"], row["class-discriminative"],
                 row["needs"], _formula(row["forwards"]), _formula(row["backwards"])]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Family:
    """A row of chapter 0's map of the methods: a survey section, the question its methods answer,
    its chapter (None: not written yet) and, for sections without registered attribution methods,
    representative methods as (title, citation keys)."""

    section: str
    title: str
    question: str
    chapter: str | None
    representatives: tuple[tuple[str, tuple[str, ...]], ...] = ()


FAMILIES: tuple[Family, ...] = (
    Family("1.1.1", "Feature maps", "What does a layer respond to in this image?", "00_cnn_basics",
           (("displaying activations", ("zeiler2014visualizing",)),)),
    Family("2.1.1", "Perturbation", "Which regions, when hidden or altered, lower the class score?",
           "01_perturbation"),
    Family("2.1.2.1", "Backpropagation: gradients", "How sensitive is the class score to each pixel?",
           "02_gradients"),
    Family("2.1.2.2", "Backpropagation: deconvnet and guided backprop", "Which input pattern drove this unit?",
           "02_gradients"),
    Family("2.1.2.3", "Backpropagation: LRP", "How does the score split into contributions of the pixels?",
           "03_lrp"),
    Family("2.1.2.4", "Backpropagation: DTD",
           "Which local Taylor expansions, neuron by neuron, account for the score?", "03_lrp"),
    Family("2.1.3", "Class activation maps",
           "Where, at the resolution of the last convolutional layer, is the evidence for class $c$?", "04_cam"),
    Family("2.1.4", "Activation maximization", "What input does a unit or a class prefer above all?",
           "05_maximization",
           (("AM", ("erhan2009visualizing",)), ("class models", ("simonyan2013deep",)),
            ("inversion", ("mahendran2015understanding",)), ("DGN-AM", ("nguyen2016synthesizing",)),
            ("feature visualization", ("olah2017feature",)))),
    Family("2.1.5", "Attention masks", "Where does a network with built-in attention look?", "06_attention",
           (("SE", ("hu2018squeeze",)), ("CBAM", ("woo2018cbam",)),
            ("learned attention maps", ("jetley2018learn",)), ("class attention", ("li2018tell",)))),
    Family("2.1.6", "Surrogate models", "Which superpixels does a simple local model credit?", "07_surrogates"),
    Family("3.1", "Evaluation", "Does the map reflect what the model uses, and how can we measure it?",
           "08_evaluation",
           (("pointing game", ("zhang2016top",)), ("pixel flipping", ("samek2017evaluating",)),
            ("ROAR", ("hooker2019benchmark",)), ("sanity checks", ("adebayo2018sanity",)))),
    Family("3.2", "Robustness", "Can the map be changed without changing the prediction, or the reverse?",
           "09_robustness",
           (("FGSM", ("goodfellow2015explaining",)), ("fragile interpretations", ("ghorbani2019interpretation",)),
            ("manipulated maps", ("dombrowski2019explanations",)),
            ("unreliability", ("kindermans2019reliability",)))),
    Family("4", "Applications", "What are the maps good for?", None,
           (("diagnosing a network", ("zeiler2014visualizing",)),
            ("Clever Hans detection", ("lapuschkin2019unmasking",)),
            ("weakly supervised localisation", ("zhou2016learning",)), ("network dissection", ("bau2017network",)))),
)


def taxonomy_markdown(*, cite: bool = True) -> str:
    """Chapter 0's map of the methods as Markdown: one row per `FAMILIES` entry, listing the
    registered methods of its survey section, or its representatives when it has none."""
    lines = ["| family | what it answers | methods | survey | chapter |", "|---|---|---|---|---|"]
    for family in FAMILIES:
        listed = [(m.title, m.cite) for m in METHODS.values() if m.section == family.section]
        methods_text = ", ".join(_cited(title, keys, cite) for title, keys in listed or family.representatives)
        chapter = "coming" if family.chapter is None else f"{{doc}}`{family.chapter}`" if cite else family.chapter
        lines.append(f"| {family.title} | {family.question} | {methods_text} | §{family.section} | {chapter} |")
    return "\n".join(lines)
