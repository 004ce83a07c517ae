"""Backpropagating to the input: gradients and their variants (survey §2.1.2.1–2.1.2.2).

Every method here differentiates one class score f_c with respect to the input image. They differ in
three places only: the rule that carries the signal backwards through each ReLU (Fig. 14), the point
at which the gradient is taken (the image, noisy copies of it, points on a path), and how the
gradients are combined. The ReLU rules are swapped in for the duration of one call and the model is
always handed back unchanged.

All functions take ``x`` [N, C, H, W] and ``target`` (an int, a LongTensor [N] or None for the
predicted class) and return a tensor shaped like ``x`` with no grad history, on the device of ``x``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import gaussian_blur
from .mechanics import batches, capture, check_input, check_target, preserved, resolve_layer, swapped

__all__ = [
    "gradient",
    "input_x_gradient",
    "guided_backprop",
    "deconvnet",
    "smoothgrad",
    "integrated_gradients",
    "blur_integrated_gradients",
    "rectified_gradient",
    "quadrature",
    "QUADRATURE_RULES",
    "RELU_LIKE",
]

# Modules whose backward pass the ReLU rules replace. ReLU6 (EfficientNet-Lite0, MobileNet) is a ReLU
# clipped at 6; the rules keep that clip's zero gradient above 6.
RELU_LIKE = (nn.ReLU, nn.ReLU6)

class _Rule(NamedTuple):
    """A ReLU backward rule in two parts: `on_signal` maps the signal g_{l+1} arriving at the
    activation's output (and the output a_l, and the clip's ceiling) to the signal handed on, and
    `forward_mask` says whether the forward pass's mask 1[z_l > 0] then applies."""

    on_signal: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    forward_mask: bool


# --- ReLU backward rules (survey Fig. 14) ----------------------------------------------------------
# A rule runs as a hook on the gradient at the activation's output; autograd then applies the
# activation's own derivative, 1[z_l > 0] · 1[z_l < 6] for ReLU6, or for the deconvnet only the clip's
# 1[z_l < 6]. So ReLU6 is treated as a ReLU followed by a clip at 6: the clip keeps its true
# derivative (zero above 6) and the rule applies to the ReLU part, as Captum does when ReLU6 is
# written as ReLU then clamp.

def _positive_part(signal, output, ceiling):
    """1[g_{l+1} > 0] · g_{l+1}."""
    return signal.clamp(min=0)


# g_l = 1[z_l > 0] · 1[g_{l+1} > 0] · g_{l+1}: forward and backward masks together.
_guided_rule = _Rule(_positive_part, forward_mask=True)
# g_l = 1[g_{l+1} > 0] · g_{l+1}: the ReLU applied to the backward signal, blind to the forward pass.
_deconvnet_rule = _Rule(_positive_part, forward_mask=False)


def _rectified_rule(percentile: float, fixed_threshold: float | None = None) -> _Rule:
    """g_l = 1[a_l ⊙ g_{l+1} > τ] · 1[z_l > 0] · g_{l+1}, τ the `percentile` of a_l ⊙ g_{l+1} per image
    (the ⌈q·n/100⌉-th smallest of the n scores; the 0th is −∞, so q = 0 drops nothing), or
    `fixed_threshold` when given."""
    def keep_important(signal, output, ceiling):
        importance = output * signal
        if ceiling < math.inf:
            importance = importance * (output < ceiling)      # the clip passes nothing at 6
        flat = importance.flatten(1)
        rank = min(flat.shape[1], math.ceil(percentile / 100 * flat.shape[1]))
        if fixed_threshold is not None:
            threshold = torch.full_like(flat[:, :1], fixed_threshold)
        elif rank == 0:
            threshold = torch.full_like(flat[:, :1], -math.inf)
        else:
            threshold = flat.kthvalue(rank, dim=1).values[:, None]
        threshold = threshold.view(-1, *[1] * (signal.dim() - 1))
        return signal * (importance > threshold)
    return _Rule(keep_important, forward_mask=True)


class _RuleActivation(nn.Module):
    """A ReLU or ReLU6 in the forward pass whose backward pass follows `rule` (never in-place).

    The rule is a hook on the output's gradient: no Python autograd.Function and nothing saved
    beyond what the activation's derivative keeps, so a rule costs one elementwise pass more than
    the plain gradient.
    """

    def __init__(self, original: nn.Module, rule: _Rule):
        super().__init__()
        self.ceiling = 6.0 if isinstance(original, nn.ReLU6) else math.inf
        self.rule = rule

    def forward(self, inputs):
        clipped = self.ceiling < math.inf
        if self.rule.forward_mask:
            output = F.hardtanh(inputs, 0.0, self.ceiling) if clipped else F.relu(inputs)
        else:
            # Only the clip is differentiated; the cut at zero happens outside autograd, so the
            # backward signal passes whatever the sign of the forward input.
            output = F.hardtanh(inputs, -math.inf, self.ceiling) if clipped else inputs.clone()
            with torch.no_grad():
                output.clamp_(min=0)
        if output.requires_grad:
            # A detached alias: the hook must not hold the tensor it is registered on (a cycle).
            activation, ceiling, on_signal = output.detach(), self.ceiling, self.rule.on_signal
            output.register_hook(lambda signal: on_signal(signal, activation, ceiling))
        return output


@contextlib.contextmanager
def _relu_rule(model: nn.Module, rule: _Rule | None) -> Iterator[None]:
    """Inside, every ReLU-like module of `model` backpropagates with `rule`."""
    if rule is None:
        yield
        return
    with swapped(model, lambda module: isinstance(module, RELU_LIKE), lambda module: _RuleActivation(module, rule)):
        yield


# --- shared mechanics ----------------------------------------------------------------------------

def _input_gradient(model: nn.Module, x: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
    """∂f_c(x)/∂x for each image and the resolved target [N], from one forward and one backward pass."""
    inputs = x.detach().clone().requires_grad_()
    logits = model(inputs)
    target = check_target(target, logits)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), inputs)
    return grad, target


def _gradient_chunks(model, n: int, make_batch: Callable[[slice], torch.Tensor], target: torch.Tensor,
                     batch_size: int | None) -> Iterator[tuple[slice, torch.Tensor]]:
    """(chunk, ∂f_target/∂input) for `n` generated inputs, built and differentiated `batch_size` at a time."""
    for chunk in batches(n, batch_size):
        yield chunk, _input_gradient(model, make_batch(chunk), target[chunk])[0]


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    """The dotted name of `layer`, so it can be found again after the ReLUs have been swapped."""
    module = resolve_layer(model, layer)
    return next(name for name, candidate in model.named_modules() if candidate is module)


def _neuron_gradient(model: nn.Module, x: torch.Tensor, layer: str, channel) -> torch.Tensor:
    """Gradient of the strongest activation of `channel` in `layer`, every other unit set to zero."""
    inputs = x.detach().clone().requires_grad_()
    with capture(model, layer, gradients=False) as store:
        model(inputs)
    activation = store.activation
    if activation.dim() != 4:
        raise ValueError(f"layer: {layer!r} gives output of shape {tuple(activation.shape)}, expected [N, C, H, W]")
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < activation.shape[1]:
        raise ValueError(f"channel: expected an int in [0, {activation.shape[1] - 1}] for layer {layer!r}, "
                         f"got {channel!r}")
    strongest = activation[:, channel].flatten(1).max(dim=1).values
    (grad,) = torch.autograd.grad(strongest.sum(), inputs)
    return grad


def _backpropagate(model, x, target, rule, layer=None, channel=None) -> torch.Tensor:
    """The input signal under a ReLU rule: from the class score, or from one neuron in neuron mode."""
    x = check_input(x)
    if (layer is None) != (channel is None):
        raise ValueError("layer, channel: give both for neuron mode, or neither for a class target")
    if layer is not None and target is not None:
        raise ValueError("target: neuron mode (layer=, channel=) starts from a neuron, not a class; drop target")
    name = None if layer is None else _layer_name(model, layer)
    with preserved(model), _relu_rule(model, rule):
        if name is None:
            return _input_gradient(model, x, target)[0]
        return _neuron_gradient(model, x, name, channel)


# --- the methods ---------------------------------------------------------------------------------

def gradient(model: nn.Module, x: torch.Tensor, target=None, *, abs: bool = False) -> torch.Tensor:
    """Vanilla backpropagation (Simonyan et al., 2013; Baehrens et al., 2010); survey Eq. (4).

    M_c(x) = ∂f_c(x)/∂x: how much the class score changes per unit change of each input value.
    With `abs`, the magnitude |∂f_c/∂x| that Simonyan et al. display.
    """
    grad = _backpropagate(model, x, target, None)
    return grad.abs() if abs else grad


def input_x_gradient(model: nn.Module, x: torch.Tensor, target=None) -> torch.Tensor:
    """Gradient × input (Shrikumar et al., 2017): R = x ⊙ ∂f_c(x)/∂x, a first-order Taylor term per input."""
    return x * gradient(model, x, target)


def guided_backprop(model: nn.Module, x: torch.Tensor, target=None, *, layer=None, channel=None) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al., 2014); survey §2.1.2.2, Fig. 14.

    At each ReLU and ReLU6: g_l = 1[z_l > 0] · 1[g_{l+1} > 0] · g_{l+1} (after ReLU6's clip, whose
    derivative 1[z_l < 6] is kept), for modules used in-place or several times alike. Other activations (SiLU, sigmoid, a functional
    ``F.relu`` in ``forward``) keep their true derivative. With ``layer=`` and ``channel=`` the pass
    starts from that channel's strongest activation in ``layer`` instead of a class score.
    """
    return _backpropagate(model, x, target, _guided_rule, layer, channel)


def deconvnet(model: nn.Module, x: torch.Tensor, target=None, *, layer=None, channel=None) -> torch.Tensor:
    """Deconvolutional network (Zeiler & Fergus, 2014); survey §2.1.2.2, Fig. 13–14.

    At each ReLU and ReLU6: g_l = 1[g_{l+1} > 0] · g_{l+1}, independent of the forward activation
    (ReLU6's clip at 6 keeps its true derivative 1[z_l < 6], as a separate layer would). Other
    activations (SiLU, sigmoid, a functional ``F.relu``) keep their true derivative. Max pooling
    routes the signal through the recorded switches, which is autograd's rule for max pooling. With
    ``layer=`` and ``channel=`` it reconstructs what drives that channel's strongest activation.
    """
    return _backpropagate(model, x, target, _deconvnet_rule, layer, channel)


def rectified_gradient(model: nn.Module, x: torch.Tensor, target=None, *, percentile: float = 98.0,
                       threshold: float | None = None) -> torch.Tensor:
    """RectGrad (Kim et al., 2019); survey Table 1.

    At each ReLU: g_l = 1[a_l ⊙ g_{l+1} > τ] · 1[z_l > 0] · g_{l+1}, with τ the `percentile` of the
    importance scores a_l ⊙ g_{l+1} of that layer for that image, or the fixed `threshold` when
    given. Only units that both fire and push the score up strongly pass the signal on, which
    removes the noise that plain gradients collect from irrelevant units. The limits: percentile 0
    drops nothing (the gradient); threshold 0 keeps the units with a_l ⊙ g_{l+1} > 0, i.e. where
    g_{l+1} > 0 (guided backpropagation). Returns the rectified gradient at the input (multiply by
    ``x`` for a gradient × input style map).
    """
    if not 0 <= percentile < 100:
        raise ValueError(f"percentile: expected a number in [0, 100), got {percentile!r}")
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold: expected a finite number or None, got {threshold!r}")
    return _backpropagate(model, x, target, _rectified_rule(percentile, threshold))


def smoothgrad(model: nn.Module, x: torch.Tensor, target=None, *, method: Callable = gradient, n_samples: int = 25,
               noise_level: float = 0.15, variant: str = "mean", seed: int = 0,
               batch_size: int | None = None) -> torch.Tensor:
    """SmoothGrad (Smilkov et al., 2017); survey §2.1.2.1, item 3.

    M̂_c(x) = 1/n Σ_k M_c(x + ε_k), ε_k ~ N(0, σ²) with σ = noise_level · (max x − min x) per image.
    `variant` "square" averages M_c² (SmoothGrad²) and "var" gives the variance E[M_c²] − E[M_c]²
    (VarGrad). `method` is any function ``method(model, x, target)`` of this module (or a partial of
    one). The noisy copies go through `method` `batch_size` at a time; the noise is drawn from
    `seed` alone, so the result is reproducible.
    """
    x = check_input(x)
    if variant not in ("mean", "square", "var"):
        raise ValueError(f"variant: expected 'mean', 'square' or 'var', got {variant!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples: expected a positive int, got {n_samples!r}")
    if not noise_level >= 0:
        raise ValueError(f"noise_level: expected a number >= 0, got {noise_level!r}")
    with preserved(model):
        target = check_target(target, _logits(model, x))
    n = x.shape[0]
    sigma = noise_level * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    noise = torch.randn((n_samples, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    noisy = (x + noise * sigma.view(1, -1, 1, 1, 1)).flatten(0, 1)     # sample k of image i at k·N + i
    total, total_square = torch.zeros_like(x), torch.zeros_like(x)
    for chunk in batches(n_samples * n, batch_size):
        owners = torch.arange(chunk.start, chunk.stop, device=x.device) % n
        maps = method(model, noisy[chunk], target[owners]).detach()
        total.index_add_(0, owners, maps)
        total_square.index_add_(0, owners, maps.square())
    mean, mean_square = total / n_samples, total_square / n_samples
    return {"mean": mean, "square": mean_square, "var": mean_square - mean.square()}[variant]


QUADRATURE_RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def quadrature(rule: str, steps: int, *, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes α_k in [0, 1] and weights w_k with ∫_0^1 g(α) dα ≈ Σ_k w_k g(α_k); the weights sum to 1.

    The Riemann rules use `steps` equal cells; the trapezoid rule uses `steps` equally spaced nodes
    including both ends (spacing 1/(steps−1)); Gauss–Legendre is exact for polynomials of degree
    2·steps − 1.
    """
    if rule not in QUADRATURE_RULES:
        raise ValueError(f"rule: expected one of {', '.join(QUADRATURE_RULES)}, got {rule!r}")
    minimum = 2 if rule == "riemann_trapezoid" else 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < minimum:
        raise ValueError(f"steps: expected an int >= {minimum} for rule {rule!r}, got {steps!r}")
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        nodes, weights = torch.as_tensor((nodes + 1) / 2), torch.as_tensor(weights / 2)
    elif rule == "riemann_trapezoid":
        nodes, weights = torch.linspace(0, 1, steps), torch.full((steps,), 1 / (steps - 1))
        weights[[0, -1]] /= 2
    else:
        # Nodes built in float32 as Captum builds them: a node that moves by one ulp can flip a ReLU
        # mask on the path and change that gradient visibly.
        first = {"riemann_left": 0.0, "riemann_middle": 0.5 / steps, "riemann_right": 1 / steps}[rule]
        nodes, weights = torch.linspace(first, first + 1 - 1 / steps, steps), torch.full((steps,), 1 / steps)
    return nodes.to(device=device, dtype=dtype), weights.to(device=device, dtype=dtype)


def _baseline_like(baseline, x: torch.Tensor) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline: expected None, a number or a tensor broadcastable to {tuple(x.shape)}, "
                        f"got {type(baseline).__name__}")
    try:
        return check_input(baseline.to(x).expand_as(x), name="baseline")
    except RuntimeError:
        raise ValueError(f"baseline: shape {tuple(baseline.shape)} does not broadcast to x's {tuple(x.shape)}") from None


def _path_gradient_sum(model, n_images: int, points: torch.Tensor, point_at: Callable, target: torch.Tensor,
                       batch_size: int | None, weight_of: Callable) -> torch.Tensor:
    """Σ_k weight_of(k, chunk) ⊙ ∂f_c/∂x at the k-th path point of every image, in chunks.

    Path point k of image i is item k·N + i; `point_at(items)` builds those items on demand.
    """
    total = None
    for chunk, grads in _gradient_chunks(model, len(points) * n_images, point_at,
                                         target.repeat(len(points)), batch_size):
        items = torch.arange(chunk.start, chunk.stop, device=target.device)
        weighted = weight_of(items) * grads
        total = torch.zeros((n_images, *grads.shape[1:]), device=grads.device, dtype=grads.dtype) \
            if total is None else total
        total.index_add_(0, items % n_images, weighted)
    return total


def integrated_gradients(model: nn.Module, x: torch.Tensor, target=None, *, baseline=None, steps: int = 50,
                         rule: str = "riemann_trapezoid", batch_size: int | None = None,
                         return_delta: bool = False):
    """Integrated Gradients (Sundararajan et al., 2017); survey §2.1.2.1, item 2.

    R_i(x) = (x_i − x'_i) · ∫_0^1 ∂f_c(x' + α(x − x'))/∂x_i dα, with `steps` nodes of `rule`
    (see `quadrature`). Completeness: Σ_i R_i = f_c(x) − f_c(x'). With `return_delta`, also returns
    the completeness error Σ_i R_i − (f_c(x) − f_c(x')) per image. `baseline` x' is zero (mid-grey under `data.preprocess`) by default,
    or a number, or a tensor broadcastable to `x`. The path points go through the model
    `batch_size` at a time (all at once when None).
    """
    x = check_input(x)
    baseline = _baseline_like(baseline, x)
    alphas, weights = quadrature(rule, steps, device=x.device, dtype=x.dtype)
    n = x.shape[0]
    with preserved(model):
        logits = _logits(model, x)
        target = check_target(target, logits)
        difference = x - baseline

        def point_items(chunk):
            items = torch.arange(chunk.start, chunk.stop, device=x.device)
            return baseline[items % n] + alphas[items // n].view(-1, 1, 1, 1) * difference[items % n]

        summed = _path_gradient_sum(model, n, alphas, point_items, target, batch_size,
                                    lambda items: weights[items // n].view(-1, 1, 1, 1))
        attributions = difference * summed
        if not return_delta:
            return attributions
        scores = logits.gather(1, target[:, None]).squeeze(1)
        baseline_scores = _logits(model, baseline).gather(1, target[:, None]).squeeze(1)
    return attributions, attributions.sum(dim=(1, 2, 3)) - (scores - baseline_scores)


def blur_integrated_gradients(model: nn.Module, x: torch.Tensor, target=None, *, max_sigma: float = 50.0,
                              steps: int = 100, batch_size: int | None = None):
    """Blur Integrated Gradients (Xu et al., 2020); seed article 002.

    The path runs through scale space instead of a straight line: from the image blurred with a
    Gaussian of width `max_sigma` down to the image itself, γ(σ) = G_σ * x for σ: σ_max → 0. Along it

        R_i = ∫_{σ_max}^{0} ∂f_c(γ(σ))/∂γ_i · ∂γ_i/∂σ dσ
            ≈ Σ_k ∂f_c(γ(σ̄_k))/∂γ_i · (γ_i(σ_{k+1}) − γ_i(σ_k)),

    with `steps` steps evenly spaced in √σ and the gradient at each step's midpoint σ̄_k. The differences
    telescope, so completeness holds against the blurred baseline: Σ_i R_i ≈ f_c(x) − f_c(G_σmax * x),
    exactly for a linear f. No information is added on the way (blurring only removes detail), so no
    baseline has to be chosen.
    """
    x = check_input(x)
    if not max_sigma > 0:
        raise ValueError(f"max_sigma: expected a positive number, got {max_sigma!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    # Even steps in √σ: the image changes fastest at small σ, where fine detail comes back.
    sigmas = max_sigma * torch.linspace(1.0, 0.0, steps + 1, device=x.device, dtype=x.dtype).square()
    midpoints = (sigmas[:-1] + sigmas[1:]) / 2
    n = x.shape[0]
    with preserved(model):
        target = check_target(target, _logits(model, x))

        def point_items(chunk):
            items = torch.arange(chunk.start, chunk.stop, device=x.device)
            return gaussian_blur(x[items % n], midpoints[items // n])

        # Step k ends where step k + 1 starts: each boundary image γ(σ_k) is blurred once and kept
        # while the chunks still need it (at most one chunk's steps plus one).
        boundaries: dict[int, torch.Tensor] = {}

        def step_of(items):
            steps_here = (items // n).tolist()
            for index in [k for k in list(boundaries) if k < steps_here[0]]:
                del boundaries[index]
            for index in range(steps_here[0], steps_here[-1] + 2):
                if index not in boundaries:
                    boundaries[index] = gaussian_blur(x, sigmas[index])
            return torch.stack([boundaries[k + 1][i] - boundaries[k][i]
                                for k, i in zip(steps_here, (items % n).tolist())])

        return _path_gradient_sum(model, n, midpoints, point_items, target, batch_size, step_of)
