"""Relevance propagation: LRP, deep Taylor decomposition and DeepLIFT (survey §2.1.2.3–2.1.2.5).

These methods send a conserved quantity back through the network instead of a gradient. All of
them are implemented as a *modified gradient*: each layer is swapped, for the duration of one call,
for a module with the same forward value whose backward pass follows the method's rule, so one
forward and one backward pass give the whole map. Under the convention used throughout, the
relevance of a tensor ``a`` is ``a ⊙ g``, with ``g`` the modified gradient arriving at ``a``:

- a linear layer z = W a + b propagates g_in = W'ᵀ (g_out ⊙ z / s(z')), with W' and the
  denominator z' chosen by the rule, so that R_in = a ⊙ W'ᵀ (R_out / s(z')) (Eq. 14–23);
- a ReLU or ReLU6 passes relevance through unchanged, a max-pool hands it to the winner, average
  pooling, flattening and padding are linear maps whose true gradient is the z-rule;
- an addition written in ``forward`` (a residual ``x + block(x)``) passes g to both summands,
  so R_x = x ⊙ g and R_block = block(x) ⊙ g split the relevance in proportion to the summands.

BatchNorm that directly follows a convolution is folded into it (new tensors; the model's own
parameters are never touched). A layer type without a rule raises an error naming the layer.

All functions take ``x`` [N, C, H, W] and ``target`` (an int, a LongTensor [N] or None for the
predicted class) and return a tensor shaped like ``x`` with no grad history, on the device of ``x``.
The chapter is book/03_lrp.ipynb.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from .backprop import _baseline_like
from .mechanics import check_input, check_target, preserved, swapped
from .models import SamePad2d

__all__ = [
    "deeplift",
    "DEEPLIFT_ACTIVATIONS",
]

# Elementwise activations DeepLIFT rescales; max-pooling has its own rule (Shrikumar et al., 2017).
DEEPLIFT_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus)
# Linear maps (in eval mode) whose true gradient is already the right propagation.
LINEAR_MAPS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d, nn.AvgPool2d,
               nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
               nn.Identity, nn.ZeroPad2d, SamePad2d)
# |Δx| below which DeepLIFT's multiplier Δy/Δx falls back to the gradient, as in Captum.
DEEPLIFT_EPS = 1e-10


# --- shared mechanics ----------------------------------------------------------------------------

def _with_gradient_of(value: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
    """A tensor equal to `value` in the forward pass whose gradient flows through `path`."""
    return path + (value - path).detach()


def _check_supported(model: nn.Module, supported: tuple, method: str) -> None:
    """Raise a TypeError naming the first leaf layer that `method` has no rule for."""
    for name, module in model.named_modules():
        if next(module.children(), None) is None and not isinstance(module, supported):
            names = ", ".join(sorted({kind.__name__ for kind in supported}))
            raise TypeError(f"model: layer {name!r} is a {type(module).__name__}, for which {method} has no rule; "
                            f"supported layer types: {names}")


def _non_inplace(module: nn.Module) -> nn.Module:
    """A copy of an activation module that does not overwrite its input."""
    function = copy.copy(module)
    if hasattr(function, "inplace"):
        function.inplace = False
    return function


def _delta(pair: torch.Tensor) -> torch.Tensor:
    """For a batch [x; x'] of 2N items: Δ = x − x', repeated for both halves."""
    inputs, references = pair.chunk(2)
    difference = inputs - references
    return torch.cat([difference, difference])


def _gather_pooled(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """values[n, c, indices[n, c, i, j]] over each flattened feature map: what a max-pool picked."""
    return values.flatten(2).gather(2, indices.flatten(2)).view_as(indices)


# --- DeepLIFT ------------------------------------------------------------------------------------

class _RescaleActivation(nn.Module):
    """An elementwise activation whose gradient is DeepLIFT's multiplier m = Δy/Δx.

    The batch holds the inputs and their references, [x; x']; both halves get the same multiplier.
    Where |Δx| < 1e-10 the multiplier is the ordinary derivative (Captum's convention).
    """

    def __init__(self, activation: nn.Module):
        super().__init__()
        self.activation = _non_inplace(activation)

    def forward(self, inputs):
        outputs = self.activation(inputs)
        delta_in, delta_out = _delta(inputs.detach()), _delta(outputs.detach())
        small = delta_in.abs() < DEEPLIFT_EPS
        multiplier = delta_out / torch.where(small, torch.ones_like(delta_in), delta_in)
        return _with_gradient_of(outputs, torch.where(small, outputs, inputs * multiplier))


class _RescaleMaxPool(nn.Module):
    """Max-pooling under DeepLIFT: Δy = max(y, y') − y' goes to x's winner, y − max(y, y') to the
    reference's winner, and each input's multiplier is its share divided by its Δx, so Σ m Δx = Δy
    holds exactly for every window (the rule Captum defines for max-pooling)."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.pool = pool

    def forward(self, inputs):
        pool = self.pool
        outputs, indices = F.max_pool2d(inputs, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                        pool.ceil_mode, return_indices=True)
        n = inputs.shape[0] // 2
        output, reference = outputs.detach().chunk(2)
        top = torch.maximum(output, reference)
        delta_in = _delta(inputs.detach())[:n]
        # Where Δx = 0 an input's share is 0 in every window it wins (x_p = x'_p bounds both
        # maxima), so its multiplier may be 0.
        small = delta_in.abs() < DEEPLIFT_EPS
        scaled = inputs[:n] * torch.where(small, torch.zeros_like(delta_in), 1 / delta_in.masked_fill(small, 1))
        shares = (_gather_pooled(scaled, indices[:n]) * (top - reference)
                  + _gather_pooled(scaled, indices[n:]) * (output - top))
        return _with_gradient_of(outputs, torch.cat([shares, outputs[n:]]))


def _deeplift_module(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.MaxPool2d):
        return _RescaleMaxPool(module)
    return _RescaleActivation(module)


def deeplift(model: nn.Module, x: torch.Tensor, target=None, *, baseline=0.0, rule: str = "rescale",
             return_delta: bool = False):
    """DeepLIFT with the rescale rule (Shrikumar et al., 2017); survey §2.1.2.5.

    R_i = (x_i − x'_i) · m_i, where the multipliers m obey the chain rule and each nonlinearity
    y = f(x) gets m = Δy/Δx = (f(x) − f(x')) / (x − x') instead of its derivative (max-pooling
    splits Δy between the winners of x and x'). Summation-to-delta: Σ_i R_i = f_c(x) − f_c(x').
    `baseline` x' is a number (0.0: every input at the normalised value 0) or a tensor
    broadcastable to `x`. With `return_delta`, also returns Σ_i R_i − (f_c(x) − f_c(x')) per image,
    Captum's convergence delta. Linear layers (conv, linear, BatchNorm in eval mode, average
    pooling, flatten, padding, an addition in ``forward``) keep their gradient.
    """
    x = check_input(x)
    if rule != "rescale":
        raise ValueError(f"rule: expected 'rescale' (the rule implemented), got {rule!r}")
    baseline = _baseline_like(baseline, x)
    _check_supported(model, DEEPLIFT_ACTIVATIONS + LINEAR_MAPS + (nn.MaxPool2d,), "deeplift")
    n = x.shape[0]
    nonlinear = DEEPLIFT_ACTIVATIONS + (nn.MaxPool2d,)
    with preserved(model), swapped(model, lambda module: isinstance(module, nonlinear), _deeplift_module):
        inputs = torch.cat([x, baseline]).detach().requires_grad_()
        logits = model(inputs)
        target = check_target(target, logits[:n])
        scores = logits.gather(1, target.repeat(2)[:, None]).squeeze(1)
        (multipliers,) = torch.autograd.grad(scores[:n].sum(), inputs)
    attributions = (x - baseline).detach() * multipliers[:n]
    if not return_delta:
        return attributions
    return attributions, attributions.sum(dim=(1, 2, 3)) - (scores[:n] - scores[n:]).detach()
