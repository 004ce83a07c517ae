"""Class activation maps: CAM, Grad-CAM, Guided Grad-CAM, Grad-CAM++, Score-CAM, Smooth Grad-CAM++, LayerCAM.

Survey §2.1.3, Eq. (28)–(30) and Table 2; the chapter is ``book/04_cam.ipynb``.

Every method here weights the channels A_k of one convolutional layer and adds them up,

    L^c = ReLU(Σ_k α_k^c A_k),

and the methods differ only in the weights α_k^c (LayerCAM weights each location instead).
They share one calling convention:

- ``layer``: a module, a dotted name (``"blocks.15"``), or a list of them; a list gives a list
  with one map per layer, all from the same forward and backward pass (see `fuse`).
- ``target``: class index (int or LongTensor [N]); None means the predicted class.
- ``relu=True`` applies the final ReLU of Eq. (28)/(29); ``relu=False`` keeps negative evidence.
- ``size="input"`` returns [N, 1, H, W] at the input's resolution, upsampled with
  ``interpolation`` ("bilinear", or "nearest" as Captum does); ``size=None`` returns the raw
  [N, 1, h, w] map at the layer's resolution; a pair (H, W) gives that size.
- ``normalize=True`` min-max scales each map to [0, 1], image by image.

Hooks are always removed, the model's mode and ``requires_grad`` flags are restored, and
everything runs on the device of ``x``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .mechanics import capture, check_input, check_target, preserved, scores_in_batches

__all__ = [
    "cam",
    "grad_cam",
    "guided_grad_cam",
    "grad_cam_plus_plus",
    "score_cam",
    "score_cam_weights",
    "smooth_grad_cam_plus_plus",
    "layer_cam",
    "fuse",
]


# ----------------------------------------------------------------------------
# Shared mechanics
# ----------------------------------------------------------------------------


@dataclass
class _Pass:
    """What one forward (and backward) pass saw: per layer A and ∂y^c/∂A, the classes c, the logits."""

    activations: list[torch.Tensor]
    gradients: list[torch.Tensor] | None
    target: torch.Tensor
    logits: torch.Tensor


def _as_list(layer) -> list:
    return list(layer) if isinstance(layer, (list, tuple)) else [layer]


def _layer_pass(model: nn.Module, x: torch.Tensor, target, layers: list, *, gradients: bool = True) -> _Pass:
    """Activations A of each layer for `x` and, with `gradients`, ∂y^c/∂A from one backward pass
    of the summed target scores (images do not interact in eval mode, so each gets its own)."""
    x = check_input(x)
    with contextlib.ExitStack() as stack:
        stack.enter_context(preserved(model))
        stack.enter_context(torch.set_grad_enabled(gradients))
        stores = [stack.enter_context(capture(model, layer, gradients=gradients)) for layer in layers]
        if gradients:
            stack.enter_context(_graph_starts_at(store.module for store in stores))
        logits = model(x.detach())
        target = check_target(target, logits)
        for layer, store in zip(layers, stores):
            _check_feature_map(layer, store.activation)
        if gradients:
            logits.gather(1, target[:, None]).sum().backward()
            if any(store.gradient is None for store in stores):
                raise ValueError("layer: the target score does not depend on this layer's output")
    return _Pass(activations=[store.activation.detach() for store in stores],
                 gradients=[store.gradient for store in stores] if gradients else None,
                 target=target, logits=logits.detach())


@contextlib.contextmanager
def _graph_starts_at(modules):
    """Make the autograd graph start at the given layers, so that backward stops there instead of
    running on to the input: the parameters are frozen, so a layer output that does not already
    require grad (no earlier given layer feeds it) is replaced by a detached copy that does."""

    def start_graph(module, inputs, output):
        if isinstance(output, torch.Tensor) and not output.requires_grad:
            return output.detach().requires_grad_()
        return None

    # prepend: the copy must be what `capture`'s own hook records and attaches its gradient hook to.
    handles = [module.register_forward_hook(start_graph, prepend=True) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_feature_map(layer, activation: torch.Tensor | None) -> None:
    name = layer if isinstance(layer, str) else type(layer).__name__
    if activation is None:
        raise ValueError(f"layer {name!r}: it did not run in the forward pass")
    if activation.dim() != 4:
        raise ValueError(f"layer {name!r}: its output has shape {tuple(activation.shape)}, but class activation "
                         f"maps need a 4-D feature map [N, C, h, w]; pick a convolutional layer")


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Σ_k α_k A_k for weights [N, C] (one per channel) or [N, C, h, w] (one per location): [N, 1, h, w]."""
    if weights.dim() == 2:
        weights = weights[:, :, None, None]
    return (weights * activations).sum(dim=1, keepdim=True)


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map [.., h, w] scaled to [0, 1] on its own; a constant map becomes zeros."""
    low, high = maps.amin(dim=(-2, -1), keepdim=True), maps.amax(dim=(-2, -1), keepdim=True)
    span = high - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1), 0)


def _resize(maps: torch.Tensor, size, x: torch.Tensor, interpolation: str) -> torch.Tensor:
    if size is None:
        return maps
    if isinstance(size, str) and size != "input":
        raise ValueError(f"size: expected 'input', None or a pair (H, W), got {size!r}")
    size = tuple(x.shape[-2:]) if size == "input" else tuple(size)
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation: expected 'bilinear' or 'nearest', got {interpolation!r}")
    if interpolation == "bilinear":
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(maps, size=size, mode="nearest")


def _finish(layer, maps: list[torch.Tensor], x: torch.Tensor, *, relu: bool, size, interpolation: str,
            normalize: bool):
    """Final ReLU, resizing and normalization of each layer's map; one map, or a list for a list of layers."""
    finished = []
    for saliency in maps:
        saliency = _resize(saliency.clamp(min=0) if relu else saliency, size, x, interpolation)
        finished.append(_min_max(saliency) if normalize else saliency)
    return finished if isinstance(layer, (list, tuple)) else finished[0]


def _grad_cam_maps(seen: _Pass) -> list[torch.Tensor]:
    """Σ_k α_k A_k with α_k the spatial mean of ∂y^c/∂A_k, per layer, before ReLU and resizing."""
    return [_weighted_sum(gradient.mean(dim=(2, 3)), activations)
            for activations, gradient in zip(seen.activations, seen.gradients)]


def _grad_cam_plus_plus_weights(activations, gradient, gradient_2, gradient_3) -> torch.Tensor:
    """Grad-CAM++'s channel weights from ∂S/∂A and its 2nd and 3rd powers, for the exponential
    Y = exp(S) of the score S (Chattopadhyay et al. 2018, Eq. 19; exp(S) > 0 is a common factor, dropped):

        α_kij = g²_kij / (2 g²_kij + Σ_ab A_kab g³_kij),   w_k = Σ_ij α_kij ReLU(g_kij).
    """
    denominator = 2 * gradient_2 + activations.sum(dim=(2, 3), keepdim=True) * gradient_3
    # α is set to 0 where the denominator vanishes: where g = 0 (0/0, as the paper does) and where
    # g = −2/ΣA, which is negative for a channel of non-negative activations, so ReLU(g) = 0 there anyway.
    alpha = torch.where(denominator != 0, gradient_2 / torch.where(denominator != 0, denominator, 1), 0)
    return (alpha * gradient.clamp(min=0)).sum(dim=(2, 3))


# ----------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------


def cam(model: nn.Module, x: torch.Tensor, target=None, *, layer, fc: nn.Linear | None = None, relu: bool = True,
        size="input", interpolation: str = "bilinear", normalize: bool = False):
    """CAM (Zhou et al., 2016); survey Eq. (28), Fig. 18.

        L^c = ReLU(Σ_k w_k^c A_k),  w^c = row c of the linear layer after global average pooling.

    `layer` must be the one global average pooling reads, so that y^c = w^c · GAP(A) + b^c.
    `fc` defaults to the model's last nn.Linear; the identity is checked, and a model without a
    GAP + linear head after `layer` gets an error pointing to `grad_cam`.
    """
    layers = _as_list(layer)
    seen = _layer_pass(model, x, target, layers, gradients=False)
    fc = _linear_head(model, fc)
    maps = []
    for name, activations in zip(layers, seen.activations):
        _check_gap_linear_head(name, activations, fc, seen.logits)
        maps.append(_weighted_sum(fc.weight[seen.target].detach(), activations))
    return _finish(layer, maps, x, relu=relu, size=size, interpolation=interpolation, normalize=normalize)


def _linear_head(model: nn.Module, fc: nn.Linear | None) -> nn.Linear:
    if fc is None:
        linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
        if not linears:
            raise ValueError("cam: the model has no nn.Linear layer; CAM needs a global-average-pooling + linear "
                             "head. Use grad_cam, which works for any architecture.")
        fc = linears[-1]
    if not isinstance(fc, nn.Linear):
        raise TypeError(f"fc: expected an nn.Linear, got {type(fc).__name__}")
    return fc


@torch.no_grad()
def _check_gap_linear_head(layer, activations: torch.Tensor, fc: nn.Linear, logits: torch.Tensor) -> None:
    """Raise unless logits = fc(GAP(A)): only then are fc's rows the CAM weights of `layer`."""
    pooled = activations.mean(dim=(2, 3))
    if pooled.shape[1] != fc.in_features or not torch.allclose(
            fc(pooled.to(fc.weight.dtype)), logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max())):
        name = layer if isinstance(layer, str) else type(layer).__name__
        raise ValueError(f"cam: the model's output is not a linear layer of the global average pool of layer "
                         f"{name!r}, so CAM is not defined there. CAM needs a GAP + linear head right after "
                         f"the layer; use grad_cam, which generalises CAM to any architecture and layer.")


def grad_cam(model: nn.Module, x: torch.Tensor, target=None, *, layer, relu: bool = True, size="input",
             interpolation: str = "bilinear", normalize: bool = False):
    """Grad-CAM (Selvaraju et al., 2017); survey Eq. (29)–(30), Fig. 19.

        α_k^c = (1/Z) Σ_ij ∂y^c/∂A_kij,   L^c = ReLU(Σ_k α_k^c A_k),

    with y^c the logit of class c and Z = h·w. On a GAP + linear head α_k^c = w_k^c / Z, so
    Grad-CAM is CAM divided by the spatial size.
    """
    maps = _grad_cam_maps(_layer_pass(model, x, target, _as_list(layer)))
    return _finish(layer, maps, x, relu=relu, size=size, interpolation=interpolation, normalize=normalize)


def guided_grad_cam(model: nn.Module, x: torch.Tensor, target=None, *, layer, interpolation: str = "bilinear"):
    """Guided Grad-CAM (Selvaraju et al., 2017): guided backpropagation (Springenberg et al., 2015)
    times the Grad-CAM map upsampled to the input, pixel by pixel. Returns maps shaped like `x`.

    The Grad-CAM factor keeps its ReLU, as in the paper and in Captum's GuidedGradCam.
    """
    from .backprop import guided_backprop  # the gradients chapter's method, loaded only when needed

    seen = _layer_pass(model, x, target, _as_list(layer))
    guided = guided_backprop(model, x, seen.target)
    maps = [guided * _resize(saliency.clamp(min=0), "input", x, interpolation) for saliency in _grad_cam_maps(seen)]
    return maps if isinstance(layer, (list, tuple)) else maps[0]


def grad_cam_plus_plus(model: nn.Module, x: torch.Tensor, target=None, *, layer, relu: bool = True,
                       size="input", interpolation: str = "bilinear", normalize: bool = False):
    """Grad-CAM++ (Chattopadhyay et al., 2018); survey §2.1.3 item 1 after Eq. (30).

    The weight of channel k sums the positive gradients with pixel-wise coefficients α_kij, in the
    closed form for an exponential of the score (g = ∂y^c/∂A):

        α_kij = g²_kij / (2 g²_kij + Σ_ab A_kab g³_kij),   w_k = Σ_ij α_kij ReLU(g_kij),
        L^c = ReLU(Σ_k w_k A_k).

    Unlike Grad-CAM's plain mean, small regions with strong gradients count fully, which helps
    when a class appears several times in one image.
    """
    seen = _layer_pass(model, x, target, _as_list(layer))
    maps = [_weighted_sum(_grad_cam_plus_plus_weights(activations, gradient, gradient ** 2, gradient ** 3),
                          activations)
            for activations, gradient in zip(seen.activations, seen.gradients)]
    return _finish(layer, maps, x, relu=relu, size=size, interpolation=interpolation, normalize=normalize)


def score_cam_weights(model: nn.Module, x: torch.Tensor, target=None, *, layer, baseline: torch.Tensor | None = None,
                      batch_size: int | str | None = "auto", progress: bool = False):
    """Score-CAM's channel weights [N, C] (Wang et al., 2020, Eq. 5): how much each channel, used as
    a mask on the image, raises the softmax probability of the target class above a baseline:

        H_k = s(Up(A_k)),   α_k^c = softmax(f(x ∘ H_k))_c − softmax(f(x_b))_c,

    Up = bilinear upsampling to the input, s = min-max scaling to [0, 1], x_b = `baseline`
    (zeros by default). Costs one forward pass per channel and image, in batches of `batch_size`.
    A list of layers gives a list of weights.
    """
    seen = _layer_pass(model, x, target, _as_list(layer), gradients=False)
    weights = _score_increases(model, x, seen, baseline, batch_size, progress)
    return weights if isinstance(layer, (list, tuple)) else weights[0]


def _score_increases(model, x, seen: _Pass, baseline, batch_size, progress) -> list[torch.Tensor]:
    baseline = torch.zeros_like(x) if baseline is None else baseline.to(x).expand_as(x)
    baseline_scores = scores_in_batches(model, len(x), lambda chunk: baseline[chunk], seen.target,
                                        batch_size=batch_size, softmax=True)
    weights = []
    for activations in seen.activations:
        n, channels = activations.shape[:2]

        def masked_images(chunk: slice, activations=activations, channels=channels) -> torch.Tensor:
            index = torch.arange(chunk.start, chunk.stop, device=x.device)
            image, channel = index // channels, index % channels
            masks = _resize(activations[image, channel][:, None], "input", x, "bilinear")
            return x[image] * _min_max(masks)

        # Masks are built chunk by chunk: all N·C of them at input size would not fit in memory.
        scores = scores_in_batches(model, n * channels, masked_images, seen.target.repeat_interleave(channels),
                                   batch_size=batch_size, softmax=True, progress=progress,
                                   description="Score-CAM masks")
        weights.append(scores.view(n, channels) - baseline_scores[:, None])
    return weights


def score_cam(model: nn.Module, x: torch.Tensor, target=None, *, layer, baseline: torch.Tensor | None = None,
              batch_size: int | str | None = "auto", relu: bool = True, size="input", interpolation: str = "bilinear",
              normalize: bool = False, progress: bool = False):
    """Score-CAM (Wang et al., 2020); survey §2.1.3 item 2 after Eq. (30), Fig. 20.

        L^c = ReLU(Σ_k α_k^c A_k),  α_k^c from `score_cam_weights`: no gradients, one masked
        forward pass per channel.
    """
    seen = _layer_pass(model, x, target, _as_list(layer), gradients=False)
    weights = _score_increases(model, x, seen, baseline, batch_size, progress)
    maps = [_weighted_sum(w, a) for w, a in zip(weights, seen.activations)]
    return _finish(layer, maps, x, relu=relu, size=size, interpolation=interpolation, normalize=normalize)


def smooth_grad_cam_plus_plus(model: nn.Module, x: torch.Tensor, target=None, *, layer, samples: int = 25,
                              noise_level: float = 0.15, seed: int = 0, relu: bool = True, size="input",
                              interpolation: str = "bilinear", normalize: bool = False):
    """Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with each gradient power averaged over
    `samples` noisy copies x + ε, ε ~ N(0, σ²), σ = noise_level · (max x − min x) per image, as in
    SmoothGrad (Smilkov et al., 2017):

        α_kij = E[g²] / (2 E[g²] + Σ_ab A_kab E[g³]),   w_k = Σ_ij α_kij ReLU(E[g]),

    with A from the clean image. `seed` makes the noise reproducible.
    """
    x = check_input(x)
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: expected a positive int, got {samples!r}")
    layers = _as_list(layer)
    clean = _layer_pass(model, x, target, layers, gradients=False)
    sigma = noise_level * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
    # Each image draws its own noise from `seed`, so its map does not depend on the rest of the batch.
    noise = torch.stack([torch.randn((samples, *x.shape[1:]), generator=torch.Generator().manual_seed(seed))
                         for _ in range(len(x))], dim=1).to(x) * sigma[:, None, None, None]   # [S, N, C, H, W]
    moments = [[0.0, 0.0, 0.0] for _ in layers]   # running E[g], E[g²], E[g³] per layer
    for sample_noise in noise:
        noisy = _layer_pass(model, x + sample_noise, clean.target, layers)
        for layer_moments, gradient in zip(moments, noisy.gradients):
            for power in range(3):
                layer_moments[power] = layer_moments[power] + gradient ** (power + 1) / samples
    maps = [_weighted_sum(_grad_cam_plus_plus_weights(activations, *layer_moments), activations)
            for activations, layer_moments in zip(clean.activations, moments)]
    return _finish(layer, maps, x, relu=relu, size=size, interpolation=interpolation, normalize=normalize)


def layer_cam(model: nn.Module, x: torch.Tensor, target=None, *, layer, relu: bool = True, size="input",
              interpolation: str = "bilinear", normalize: bool = False):
    """LayerCAM (Jiang et al., 2021): each location weighted by its own positive gradient,

        L^c = ReLU(Σ_k ReLU(∂y^c/∂A_k) ⊙ A_k),

    so a location counts only where it raises the score; unlike Grad-CAM's channel mean this stays
    sharp at shallow layers. Combine the maps of several layers with `fuse`.
    """
    seen = _layer_pass(model, x, target, _as_list(layer))
    maps = [_weighted_sum(gradient.clamp(min=0), activations)
            for activations, gradient in zip(seen.activations, seen.gradients)]
    return _finish(layer, maps, x, relu=relu, size=size, interpolation=interpolation, normalize=normalize)


def fuse(maps: list[torch.Tensor], *, gamma: float | None = 2.0, size=None,
         interpolation: str = "bilinear") -> torch.Tensor:
    """One map from the maps of several layers (LayerCAM, Jiang et al. 2021, Eq. 6–7):
    each map is scaled by tanh(γ · M / max M) per image, then they are fused by their pixel-wise
    maximum. Maps of different sizes are resized to `size` (default: the largest). `gamma=None`
    min-max scales instead of the tanh.

    LayerCAM applies the tanh only to shallow layers; here every map is scaled alike, so that the
    result does not depend on which layers one calls shallow.
    """
    if not maps:
        raise ValueError("maps: expected a non-empty list of maps [N, 1, h, w]")
    size = size or max((tuple(m.shape[-2:]) for m in maps), key=lambda hw: hw[0] * hw[1])
    resized = [_resize(m, size, m, interpolation) for m in maps]
    if gamma is None:
        scaled = [_min_max(m) for m in resized]
    else:
        scaled = [torch.tanh(gamma * m / m.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-12)) for m in resized]
    return torch.stack(scaled).amax(dim=0)
