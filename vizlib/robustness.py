"""Robustness of explanations: attacks on the prediction, attacks on the explanation (survey §3.2).

Two questions, one module. When an attack changes the *prediction* (`fgsm`, `pgd`), how far does an
explanation move (`stability`, `map_similarity`)? And can an attack change the *explanation* while
the prediction stays put (`manipulate_explanation`)? The second attack differentiates the
explanation itself, so it needs second derivatives of the network; `softplus_relus` provides them
by smoothing every ReLU. The chapter is ``book/09_robustness.ipynb``.

Inputs ``x`` [N, C, H, W] live in the model's input space. ``bounds=(low, high)`` clips them to the
valid range; for EfficientNet-Lite0 that is `PREPROCESSED_BOUNDS`, the range `data.preprocess`
produces. The loss of the attacks is the cross-entropy of the logits. Everything runs batched on the
device of ``x``, and the model is handed back unchanged.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
from typing import Callable, Iterator

import numpy as np
import scipy.stats
import skimage.metrics
import torch
from torch import nn
from torch.nn import functional as F

from . import backprop, lrp
from .data import normalize
from .mechanics import batchnorm_pairs, check_input, check_target, preserved, swapped

__all__ = [
    "PREPROCESSED_BOUNDS",
    "fgsm",
    "pgd",
    "stability",
    "map_similarity",
    "manipulate_explanation",
    "differentiable",
    "softplus_relus",
    "SoftplusReLU",
    "NORMS",
]

# The input range `data.preprocess` produces: pixel 0 maps to -127/128, pixel 255 to 128/128.
PREPROCESSED_BOUNDS = (normalize(torch.tensor(0.0)).item(), normalize(torch.tensor(255.0)).item())

NORMS = ("linf", "l2")


# --- checks ----------------------------------------------------------------------------------------

def _check_radius(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _check_steps(value, name: str = "steps") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _check_bounds(bounds) -> tuple[float, float] | None:
    if bounds is None:
        return None
    try:
        low, high = (float(value) for value in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds: expected None or a pair (low, high) of numbers, got {bounds!r}") from None
    if not low < high:
        raise ValueError(f"bounds: expected low < high, got {bounds!r}")
    return low, high


def _clip(x: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    return x if bounds is None else x.clamp(*bounds)


def _check_attack_target(target, targeted: bool):
    if targeted and target is None:
        raise ValueError("target: a targeted attack needs the class to reach; got None")
    return target


# --- attacks on the prediction -----------------------------------------------------------------------

def _loss_gradient(model: nn.Module, x: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
    """∇_x J(x, target) per image, J the cross-entropy of the logits (summed over the batch, so each
    image gets the gradient of its own loss: the model is in eval mode), and the target as a
    LongTensor [N] (None: the class predicted for x), from one forward and one backward pass."""
    inputs = x.detach().clone().requires_grad_()
    logits = model(inputs)
    target = check_target(target, logits.detach())
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), inputs)
    return grad, target


def fgsm(model: nn.Module, x: torch.Tensor, target=None, *, epsilon: float, targeted: bool = False,
         bounds=None) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al., 2015); survey Eq. (38), Fig. 33.

        x_adv = clip(x + ε · sign(∇_x J(x, y)))     (untargeted: y the class to leave)
        x_adv = clip(x − ε · sign(∇_x J(x, t)))     (targeted: t the class to reach)

    J is the cross-entropy of the logits; `target` defaults to the predicted class (untargeted
    only). One forward and one backward pass. A component whose gradient is exactly zero stays put.
    (Captum's `FGSM` also leaves components with |∇| ≤ 1e-6 in place, which on a confident model can
    be most of the image; set its ``zero_thresh = 0`` to compare.)
    """
    x = check_input(x)
    epsilon = _check_radius(epsilon, "epsilon")
    bounds = _check_bounds(bounds)
    target = _check_attack_target(target, targeted)
    with preserved(model):
        grad, _ = _loss_gradient(model, x, target)
    direction = -1.0 if targeted else 1.0
    return _clip(x + direction * epsilon * grad.sign(), bounds).detach()


def _steepest_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-norm direction of steepest ascent of a linear function with gradient `grad`:
    sign(∇) for L∞, ∇/‖∇‖₂ for L2 (zero where the gradient is zero)."""
    if norm == "linf":
        return grad.sign()
    length = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.dim() - 1))
    return grad / length.clamp(min=torch.finfo(grad.dtype).tiny)


def _project(delta: torch.Tensor, radius: float, norm: str) -> torch.Tensor:
    """The nearest point to `delta` in the norm ball of `radius` around zero, image by image."""
    if norm == "linf":
        return delta.clamp(-radius, radius)
    length = delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.dim() - 1))
    return delta * (radius / length.clamp(min=torch.finfo(delta.dtype).tiny)).clamp(max=1.0)


def _random_start(x: torch.Tensor, radius: float, norm: str, seed: int) -> torch.Tensor:
    """A point drawn uniformly from the norm ball of `radius` around each image."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    if norm == "linf":
        return x + (2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1) * radius
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    # The radius of a uniform point in a d-ball is distributed as R · U^(1/d).
    dimension = x[0].numel()
    lengths = radius * torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1 / dimension)
    return x + lengths.view(-1, 1, 1, 1) * direction


def pgd(model: nn.Module, x: torch.Tensor, target=None, *, radius: float, step_size: float, steps: int,
        norm: str = "linf", targeted: bool = False, random_start: bool = False, bounds=None,
        seed: int = 0) -> torch.Tensor:
    """Projected gradient descent (Madry et al., 2018): FGSM iterated inside a norm ball.

        x_{t+1} = clip(x + Π_r(x_t ± α · s(∇_x J(x_t, y)) − x)),

    with s the steepest-ascent direction of the norm (sign(∇) for ``"linf"``, ∇/‖∇‖₂ for ``"l2"``),
    Π_r the projection onto the ball of `radius` r around the clean x, α = `step_size`, + for an
    untargeted attack (leave y, by default the predicted class) and − for a targeted one (reach y).
    With `random_start` the walk starts from a point drawn uniformly from the ball (from `seed`).
    Each step is one forward and one backward pass of the whole batch.

    Captum's `PGD` takes sign steps for L2 too and only projects with the L2 norm; its L∞ attack is
    this one (with ``fgsm.zero_thresh = 0``, see `fgsm`).
    """
    x = check_input(x)
    radius = _check_radius(radius, "radius")
    step_size = _check_radius(step_size, "step_size")
    steps = _check_steps(steps)
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    bounds = _check_bounds(bounds)
    direction = -1.0 if targeted else 1.0
    target = _check_attack_target(target, targeted)
    if target is None and random_start:
        with preserved(model), torch.no_grad():
            target = model(x).argmax(dim=1)          # the class to leave is the one predicted for x
    with preserved(model):
        adversarial = _clip(_random_start(x, radius, norm, seed), bounds) if random_start else x.detach()
        for _ in range(steps):
            grad, target = _loss_gradient(model, adversarial, target)
            stepped = adversarial + direction * step_size * _steepest_step(grad, norm)
            adversarial = _clip(x + _project(stepped - x, radius, norm), bounds).detach()
    return adversarial


# --- how far an explanation moves ----------------------------------------------------------------------

def _importance(maps: torch.Tensor, name: str) -> torch.Tensor:
    """|R| summed over channels: [N, H, W] from [N, C, H, W] (or [N, H, W])."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor [N, C, H, W] or [N, H, W], got {type(maps).__name__}")
    if maps.dim() == 4:
        return maps.abs().sum(dim=1)
    if maps.dim() == 3:
        return maps.abs()
    raise ValueError(f"{name}: expected a tensor [N, C, H, W] or [N, H, W], got shape {tuple(maps.shape)}")


def _ssim(first: np.ndarray, second: np.ndarray) -> float:
    """SSIM of two maps in [0, 1] with the largest odd window up to 7 that fits; NaN below 3×3."""
    side = min(7, *first.shape)
    side -= 1 - side % 2
    if side < 3:
        return math.nan
    return skimage.metrics.structural_similarity(first, second, data_range=1.0, win_size=side)


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k largest entries of each row; ties go to the earlier position."""
    order = values.sort(dim=1, descending=True, stable=True).indices
    return torch.zeros_like(values, dtype=torch.bool).scatter_(1, order[:, :k], True)


def map_similarity(maps: torch.Tensor, other: torch.Tensor, *, top_k: float = 0.1) -> dict[str, torch.Tensor]:
    """How alike two batches of explanations are, image by image (Ghorbani et al., 2019;
    Dombrowski et al., 2019). Each map is first reduced to its importance |R| summed over channels.

    - ``"spearman"``: Spearman's rank correlation of the importances (ties get their average rank;
      NaN for a constant map). 1: the same order of pixels.
    - ``"top_k_intersection"``: the fraction of the ⌈top_k·H·W⌉ most important pixels of `maps`
      that are also among the most important of `other` (ties broken by position). 1: the same set.
    - ``"ssim"``: structural similarity (Wang et al., 2004; scikit-image, 7×7 uniform window) of the
      maps each scaled to [0, 1] by its maximum (a smaller window for maps under 7 pixels a side,
      NaN under 3). 1: the same picture.
    - ``"l2_distance"``: ‖a/‖a‖ − b/‖b‖‖₂ of the importances: 0 for maps equal up to scale, √2 for
      maps with disjoint support.

    Returns {name: float tensor [N]} on the device of `maps`.
    """
    first, second = _importance(maps, "maps"), _importance(other, "other")
    if first.shape != second.shape:
        raise ValueError(f"other: expected maps of the same shape as maps, {tuple(maps.shape)}, "
                         f"got {tuple(other.shape)}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or not 0 < top_k <= 1:
        raise ValueError(f"top_k: expected a fraction in (0, 1], got {top_k!r}")
    n, height, width = first.shape
    a, b = first.detach().double().cpu().flatten(1), second.detach().double().cpu().flatten(1)

    ranks_a, ranks_b = (torch.from_numpy(scipy.stats.rankdata(v.numpy(), axis=1)) for v in (a, b))
    ranks_a, ranks_b = ranks_a - ranks_a.mean(1, keepdim=True), ranks_b - ranks_b.mean(1, keepdim=True)
    spearman = (ranks_a * ranks_b).sum(1) / (ranks_a.norm(dim=1) * ranks_b.norm(dim=1))

    k = math.ceil(top_k * height * width - 1e-9)
    intersection = (_top(a, k) & _top(b, k)).sum(1).double() / k

    scaled_a = (a / a.amax(1, keepdim=True).clamp(min=1e-300)).view(n, height, width).numpy()
    scaled_b = (b / b.amax(1, keepdim=True).clamp(min=1e-300)).view(n, height, width).numpy()
    ssim = torch.tensor([_ssim(p, q) for p, q in zip(scaled_a, scaled_b)], dtype=torch.float64)

    unit_a = a / a.norm(dim=1, keepdim=True).clamp(min=1e-300)
    unit_b = b / b.norm(dim=1, keepdim=True).clamp(min=1e-300)
    distance = (unit_a - unit_b).norm(dim=1)
    results = {"spearman": spearman, "top_k_intersection": intersection, "ssim": ssim, "l2_distance": distance}
    return {name: value.to(device=maps.device, dtype=torch.float32) for name, value in results.items()}


def stability(explain: Callable, model: nn.Module, x: torch.Tensor, x_other: torch.Tensor, *, target=None,
              top_k: float = 0.1) -> dict[str, torch.Tensor]:
    """How much the explanation of the same class moves between `x` and `x_other` (survey §3.2.1).

    ``explain(model, x, target)`` is any vizlib method (a ``functools.partial`` fixes its options).
    Both inputs are explained for `target`, by default the class predicted for `x`, so an attack
    that changes the prediction is judged on the class it attacked. Returns `map_similarity` of the
    two explanations: Spearman correlation, top-k intersection, SSIM and L2 distance, each [N].
    """
    x, x_other = check_input(x), check_input(x_other, name="x_other")
    if x.shape != x_other.shape:
        raise ValueError(f"x_other: expected the shape of x, {tuple(x.shape)}, got {tuple(x_other.shape)}")
    with preserved(model), torch.no_grad():
        target = check_target(target, model(x))
    return map_similarity(explain(model, x, target), explain(model, x_other, target), top_k=top_k)


# --- smooth networks and the attack on the explanation ------------------------------------------------

class SoftplusReLU(nn.Module):
    """softplus_β(z) = log(1 + e^{βz}) / β in place of ReLU, and softplus_β(z) − softplus_β(z − 6) in
    place of ReLU6 = ReLU(z) − ReLU(z − 6). Both tend to the original as β → ∞, with the largest
    error log(2)/β at the kinks; unlike the original they have second derivatives everywhere."""

    def __init__(self, beta: float, ceiling: float | None = None):
        super().__init__()
        self.beta, self.ceiling = beta, ceiling

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        smooth = F.softplus(z, beta=self.beta)
        return smooth if self.ceiling is None else smooth - F.softplus(z - self.ceiling, beta=self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}" + ("" if self.ceiling is None else f", ceiling={self.ceiling}")


@contextlib.contextmanager
def softplus_relus(model: nn.Module, beta: float) -> Iterator[dict[str, nn.Module]]:
    """Inside, every ReLU and ReLU6 of `model` computes softplus-β (see `SoftplusReLU`); used
    in-place or several times alike. The original modules are back on exit, also on error.
    Dombrowski et al. (2019) use it to differentiate explanations of ReLU networks (whose gradient
    is piecewise constant) and, with small β, as a defence: the β-smoothed explanation."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0 or not math.isfinite(beta):
        raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")

    def smooth(module: nn.Module) -> nn.Module:
        return SoftplusReLU(float(beta), 6.0 if isinstance(module, nn.ReLU6) else None)

    with swapped(model, lambda module: isinstance(module, backprop.RELU_LIKE), smooth) as replaced:
        yield replaced


def _gradient_with_graph(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """∂f_c/∂x, kept differentiable in x (create_graph), for an `x` that requires grad."""
    scores = model(x).gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(scores, x, create_graph=True)
    return grad


def _input_x_gradient_with_graph(model, x, target):
    return x * _gradient_with_graph(model, x, target)


def _smoothgrad_with_graph(model, x, target, *, method=backprop.gradient, n_samples: int = 25,
                           noise_level: float = 0.15, variant: str = "mean", seed: int = 0, batch_size=None):
    """`backprop.smoothgrad` (variant "mean", the same noise from `seed`), kept differentiable in x."""
    if variant != "mean":
        raise ValueError(f"explain: the attack differentiates SmoothGrad's variant 'mean' only, got {variant!r}")
    inner = differentiable(method)
    n = x.shape[0]
    sigma = noise_level * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    noise = torch.randn((n_samples, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    noisy = (x + noise * sigma.view(1, -1, 1, 1, 1)).flatten(0, 1)
    maps = inner(model, noisy, target.repeat(n_samples))
    return maps.view(n_samples, *x.shape).mean(dim=0)


# The layers through which LRP-ε is the gradient with a rescaled signal at each pre-activation.
_LRP_EPSILON_LAYERS = (*lrp.RULE_LAYERS, *lrp.POOLS, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, SoftplusReLU,
                       nn.Flatten, nn.Dropout, nn.Identity)


def _lrp_with_graph(model, x, target, *, rule: str = "epsilon", epsilon: float = 1e-6, **options):
    """`lrp.lrp` with the ε (or zero) rule, kept differentiable in x, on ReLU networks.

    LRP-ε is a modified gradient: the signal arriving at the pre-activation z of every Conv/Linear
    (after the BatchNorm folded into it) is scaled by z / (z + ε sign z); ReLU, max- and average
    pooling and residual additions keep their gradient (zennit's convention, the default of
    `lrp.lrp`). Here the scale stays in the graph, so R = x ⊙ g can be differentiated again.
    A ReLU6 passes relevance past its clip, which is not its gradient, so ReLU6 networks raise.
    """
    unsupported = {name: value for name, value in options.items()
                   if (name, value) not in (("init", "logit"), ("convention", "zennit"))}
    if rule not in ("epsilon", "zero") or unsupported:
        raise ValueError("explain: the attack differentiates lrp.lrp with rule 'epsilon' or 'zero' only "
                         "(init 'logit', zennit's convention, no first_layer or composite)")
    for name, module in model.named_modules():
        leaf = next(module.children(), None) is None
        if leaf and (not isinstance(module, _LRP_EPSILON_LAYERS) or getattr(module, "ceiling", None)):
            raise TypeError(f"model: layer {name!r} is a {type(module).__name__}; the attack differentiates "
                            f"LRP-ε through Conv, Linear, BatchNorm, ReLU, pooling and flattening only")
    stabilizer = 0.0 if rule == "zero" else epsilon
    pairs = batchnorm_pairs(model)
    folded = set(map(id, pairs.values()))
    pre_activations = [module for module in model.modules()
                       if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d))
                       or isinstance(module, lrp.RULE_LAYERS) and id(module) not in pairs]
    if any(isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and id(module) not in folded
           for module in pre_activations):
        raise TypeError("model: every BatchNorm must follow a convolution or linear layer")

    def rescale(module, inputs, z):
        stabilized = z + stabilizer * torch.where(z >= 0, 1.0, -1.0)
        ratio = z / stabilized.masked_fill(stabilized == 0, 1.0)
        z.register_hook(lambda signal: signal * ratio)
        return z.view_as(z)

    def not_in_place(module):
        replacement = copy.copy(module)
        replacement.inplace = False
        return replacement

    handles = [module.register_forward_hook(rescale) for module in pre_activations]
    try:
        with swapped(model, lambda module: getattr(module, "inplace", False), not_in_place):
            return x * _gradient_with_graph(model, x, target)
    finally:
        for handle in handles:
            handle.remove()


_WITH_GRAPH = {
    backprop.gradient: _gradient_with_graph,
    backprop.input_x_gradient: _input_x_gradient_with_graph,
    backprop.smoothgrad: _smoothgrad_with_graph,
    lrp.lrp: _lrp_with_graph,
}


def differentiable(explain: Callable) -> Callable:
    """The version of a vizlib explanation whose map stays a differentiable function of the input.

    vizlib's methods return detached maps. For `backprop.gradient`, `backprop.input_x_gradient`,
    `backprop.smoothgrad` and `lrp.lrp` with the ε rule on ReLU networks (or a ``functools.partial``
    of them) this returns a function with the same values that keeps the graph, as an attack on the
    explanation needs; any other callable is returned as it is and must build its map
    differentiably itself.
    """
    keywords = {}
    if isinstance(explain, functools.partial):
        if explain.args:
            raise ValueError("explain: give the options of a partial as keywords")
        keywords, explain = dict(explain.keywords), explain.func
    if explain in _WITH_GRAPH:
        with_graph = _WITH_GRAPH[explain]
        return functools.partial(with_graph, **keywords) if keywords else with_graph
    return functools.partial(explain, **keywords) if keywords else explain


def _check_target_map(target_map, x: torch.Tensor) -> torch.Tensor:
    """The target explanation as a distribution over pixels [N, H, W] (|·| summed over channels)."""
    if not isinstance(target_map, torch.Tensor) or not target_map.is_floating_point():
        raise TypeError("target_map: expected a float tensor [N, C, H, W], [N, H, W] or [H, W]")
    n, _, height, width = x.shape
    reshaped = target_map[None] if target_map.dim() == 2 else target_map
    if reshaped.dim() not in (3, 4) or tuple(reshaped.shape[-2:]) != (height, width) \
            or reshaped.shape[0] not in (1, n):
        raise ValueError(f"target_map: expected a map of the input's size, [N, C, {height}, {width}], "
                         f"[N, {height}, {width}] or [{height}, {width}] with N = 1 or {n}, "
                         f"got shape {tuple(target_map.shape)}")
    importance = _importance(reshaped.detach().to(x), "target_map").expand(n, height, width)
    totals = importance.sum(dim=(1, 2), keepdim=True)
    if not torch.isfinite(importance).all() or (totals == 0).any():
        raise ValueError("target_map: expected finite values and a nonzero map for every image")
    return importance / totals


def _distribution(maps: torch.Tensor) -> torch.Tensor:
    """An explanation as h = Σ_c|R_c| / Σ|R|: a distribution over pixels (Dombrowski et al.)."""
    importance = _importance(maps, "explain's map")
    return importance / importance.sum(dim=(1, 2), keepdim=True).clamp(min=torch.finfo(maps.dtype).tiny)


def manipulate_explanation(model: nn.Module, x: torch.Tensor, target_map: torch.Tensor, explain: Callable, *,
                           target=None, beta: float | None = 30.0, steps: int = 100, lr: float = 3e-3,
                           output_weight: float = 1.0, epsilon: float, bounds=None, seed: int = 0):
    """Manipulated explanations (Dombrowski et al., 2019); survey Eq. (39), Fig. 35/36.

    Finds x_adv with ‖x_adv − x‖∞ ≤ ε that minimises

        L = ‖h(x_adv) − h_t‖² + γ ‖p(x_adv) − p(x)‖²,

    where h is the explanation of class `target` (default: the predicted class) as a distribution
    over pixels, h = Σ_c|R_c| / Σ|R|, h_t the same for `target_map`, p the softmax output and
    γ = `output_weight`. Adam (learning rate `lr`) runs `steps` steps on the perturbation, which is
    projected back into the ε-ball and `bounds` after each. With `beta`, the explanation is
    differentiated through the network with its ReLUs replaced by softplus-β (`softplus_relus`): a
    ReLU network's gradient is piecewise constant, so its own derivative carries no signal. The
    output term always uses the original network. `explain` is a vizlib method that `differentiable`
    knows, or a function that builds its map differentiably. `seed` fixes the global random
    generator inside (restored on exit) for explanations that draw random numbers.

    Returns (x_adv, history): history holds "explanation" and "output", the two terms of L per
    step and image, [steps, N] (the explanation term as the smoothed network sees it). Judge the
    result on the original network: ``explain(model, x_adv, target)``.
    """
    x = check_input(x)
    epsilon = _check_radius(epsilon, "epsilon")
    steps = _check_steps(steps)
    bounds = _check_bounds(bounds)
    if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0):
        raise ValueError(f"beta: expected None or a number > 0, got {beta!r}")
    for name, value in {"lr": lr, "output_weight": output_weight}.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    goal = _check_target_map(target_map, x)
    explain_with_graph = differentiable(explain)
    smoothing = (lambda: softplus_relus(model, beta)) if beta is not None else contextlib.nullcontext
    history = {"explanation": [], "output": []}
    with preserved(model), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.no_grad():
            logits = model(x)
            target = check_target(target, logits)
            clean_output = logits.softmax(dim=1)
        delta = torch.zeros_like(x, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=lr)
        for _ in range(steps):
            adversarial = _clip(x + delta, bounds)
            with smoothing():
                maps = explain_with_graph(model, adversarial, target)
            if not maps.requires_grad:
                raise ValueError("explain: its map does not depend differentiably on the input; vizlib's "
                                 "methods detach their maps, so pass backprop.gradient, "
                                 "backprop.input_x_gradient, backprop.smoothgrad or lrp.lrp (see "
                                 "`differentiable`), "
                                 "or a function that builds its map with create_graph=True")
            explanation_loss = (_distribution(maps) - goal).square().sum(dim=(1, 2))
            output_loss = (model(adversarial).softmax(dim=1) - clean_output).square().sum(dim=1)
            optimizer.zero_grad(set_to_none=True)
            (explanation_loss + output_weight * output_loss).sum().backward()
            optimizer.step()
            with torch.no_grad():
                delta.copy_(_clip(x + delta.clamp(-epsilon, epsilon), bounds) - x)
            history["explanation"].append(explanation_loss.detach())
            history["output"].append(output_loss.detach())
    return _clip(x + delta.detach(), bounds), {name: torch.stack(values) for name, values in history.items()}
