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
from .mechanics import batchnorm_pairs, check_input, check_target, fold_batchnorm, preserved, swapped
from .models import SamePad2d

__all__ = [
    "lrp",
    "deep_taylor",
    "deeplift",
    "RULES",
    "FIRST_LAYER_RULES",
    "COMPOSITES",
    "INITS",
    "CONVENTIONS",
    "LRP_LAYERS",
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
    """For a batch [x; x'] of 2N items: Δ = x − x' (N items)."""
    inputs, references = pair.chunk(2)
    return inputs - references


def _gather_pooled(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """values[n, c, indices[n, c, i, j]] over each flattened feature map: what a max-pool picked."""
    return values.flatten(2).gather(2, indices.flatten(2)).view_as(indices)


# --- LRP: the rules (survey Eq. 18–23) -----------------------------------------------------------
# Each rule maps (layer, input a, output z) to a "gradient path": a tensor whose gradient w.r.t. a,
# times the upstream g = R_out / z, is the rule's R_in / a. Every path has the form z'·(z / s(z'))
# with the ratio detached: z' is the rule's modified pre-activation and s its stabilized denominator,
# so that R_in = a ⊙ W'ᵀ (R_out / s(z')).

RULES = ("zero", "epsilon", "gamma", "alpha_beta", "zplus")
FIRST_LAYER_RULES = ("zbox", "wsquare", "flat")
INITS = ("logit", "contrastive", "softmax_gradient")
CONVENTIONS = ("zennit", "captum")
# The stabilizer of the rules other than ε: zennit's default, and Captum's STABILITY_FACTOR.
STABILIZERS = {"zennit": 1e-6, "captum": 1e-9}


def _ratio(z: torch.Tensor, denominator: torch.Tensor, stabilizer: float) -> torch.Tensor:
    """z / s(d), s(d) = d + stabilizer · sign(d) with sign(0) = +1 (zennit's and Captum's
    stabilizer); 0 where s(d) is exactly 0, which happens only with stabilizer 0 where z = 0 too."""
    denominator = denominator.detach()
    stabilized = denominator + torch.where(denominator >= 0, stabilizer, -stabilizer)
    if stabilizer == 0:
        stabilized = stabilized.masked_fill(stabilized == 0, 1.0)
    return z.detach() / stabilized


def _positive(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clamp(min=0)


def _negative(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clamp(max=0)


def _signed_parts(layer, a, weight_of_positive, weight_of_negative, bias):
    """Σ_i a_i⁺ w_i + Σ_i a_i⁻ w'_i + b: inputs split by sign, each with its own weights; the
    negative inputs are skipped where there are none (after a ReLU)."""
    if not (a < 0).any():
        return layer.affine(a, weight_of_positive, bias)
    return layer.affine(_positive(a), weight_of_positive, bias) + layer.affine(_negative(a), weight_of_negative, None)


def _epsilon_output(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """ε rule (Eq. 14–17 with a stabilizer): z' = z, s = z + ε sign(z); ε = 0 is LRP-0.

    W' = W, so the layer's own backward pass is the rule once the arriving gradient is scaled by
    z / s(z) = |z| / (|z| + ε): a hook does that on z, and a view of z goes on, which keeps the
    relevance of the output tensor (z ⊙ its gradient) unscaled. No extra pass over the activations
    is needed.
    """
    if z.requires_grad:
        if epsilon > 0:
            magnitude = z.detach().abs()
            ratio = magnitude.div_(magnitude + epsilon)
        else:
            ratio = _ratio(z, z, epsilon)
        z.register_hook(lambda gradient: gradient * ratio)
    return z.view_as(z)


def _gamma_path(layer, a, z, options):
    """γ rule, generalised to signed inputs as in zennit: positive outputs use
    z' = Σ a⁺ (w + γw⁺) + a⁻ (w + γw⁻) + b + γb⁺, negative outputs the mirror image."""
    gamma, weight, bias, stabilizer = options["gamma"], layer.weight, layer.bias, options["stabilizer"]
    if options["convention"] == "captum":
        # Captum: w + γw⁺ for every input, the bias unchanged, one denominator for both signs.
        modified = layer.affine(a, weight + gamma * _positive(weight), bias)
        return modified * _ratio(z, modified, stabilizer)
    raised = weight + gamma * _positive(weight)
    lowered = weight + gamma * _negative(weight)
    favoured = _signed_parts(layer, a, raised, lowered, bias + gamma * _positive(bias))
    opposed = _signed_parts(layer, a, lowered, raised, bias + gamma * _negative(bias))
    return torch.where(z > 0, favoured * _ratio(z, favoured, stabilizer), opposed * _ratio(z, opposed, stabilizer))


def _alpha_beta_path(layer, a, z, options):
    """αβ rule, Eq. (18): R_j = Σ_k (α z⁺_jk / z⁺_k − β z⁻_jk / z⁻_k) R_k, with
    z⁺ = Σ a⁺w⁺ + a⁻w⁻ + b⁺ (the positive contributions) and z⁻ = Σ a⁺w⁻ + a⁻w⁺ + b⁻."""
    alpha, beta, weight, bias, stabilizer = (options["alpha"], options["beta"], layer.weight, layer.bias,
                                             options["stabilizer"])
    if options["convention"] == "captum":
        # Captum's Alpha1_Beta0_Rule: w⁺ for every input and the bias unchanged.
        modified = layer.affine(a, _positive(weight), bias)
        return modified * _ratio(z, modified, stabilizer)
    positive = _signed_parts(layer, a, _positive(weight), _negative(weight), _positive(bias))
    path = positive * _ratio(z, positive, stabilizer)
    if alpha != 1:
        path = alpha * path
    if beta:
        negative = _signed_parts(layer, a, _negative(weight), _positive(weight), _negative(bias))
        path = path - beta * negative * _ratio(z, negative, stabilizer)
    return path


def _zbox_path(layer, chunks, z, options):
    """z^B rule (Montavon et al., 2017) for inputs bounded by l ≤ x ≤ h:
    R_i = Σ_j (x_i w_ij − l_i w⁺_ij − h_i w⁻_ij) / Σ_i (…) R_j; the three inputs arrive as chunks."""
    x, low, high = chunks
    weight = layer.weight
    box = (layer.affine(x, weight, None) - layer.affine(low, _positive(weight), None)
           - layer.affine(high, _negative(weight), None))
    return box * _ratio(z, box, options["stabilizer"])


def _wsquare_path(layer, chunks, z, options):
    """w² rule (Montavon et al., 2017): R_i = Σ_j w_ij² / Σ_i w_ij² R_j, blind to the input (zennit
    squares the bias too)."""
    ones = chunks[1]
    square = layer.affine(ones, layer.weight ** 2, layer.bias ** 2)
    return square * _ratio(z, square, options["stabilizer"])


def _flat_path(layer, chunks, z, options):
    """Flat rule (Lapuschkin et al., 2019): every input in a unit's receptive field gets an equal share."""
    ones = chunks[1]
    flat = layer.affine(ones, torch.ones_like(layer.weight), None)
    return flat * _ratio(z, flat, options["stabilizer"])


_HIDDEN_PATHS = {"gamma": _gamma_path, "alpha_beta": _alpha_beta_path, "zplus": _alpha_beta_path}
_FIRST_PATHS = {"zbox": _zbox_path, "wsquare": _wsquare_path, "flat": _flat_path}


# --- LRP: canonizers, i.e. the modules swapped in for one call -----------------------------------

class _Propagation:
    """What the swapped-in modules of one call share: the batch size, and the rule options."""

    def __init__(self, n: int, options: dict):
        self.n, self.options = n, options


class _RuleLayer(nn.Module):
    """A Conv1d/Conv2d/Linear, with the BatchNorm that follows it folded in, whose output value is
    unchanged and whose backward pass follows its LRP rule."""

    def __init__(self, layer: nn.Module, batchnorm: nn.Module | None, rule: str, propagation: _Propagation):
        super().__init__()
        self.layer, self.rule, self.propagation = layer, rule, propagation
        self.weight, self.bias = fold_batchnorm(layer, batchnorm)
        self.output = None

    def affine(self, inputs, weight, bias):
        if isinstance(self.layer, nn.Linear):
            return F.linear(inputs, weight, bias)
        return self.layer._conv_forward(inputs, weight, bias)

    def forward(self, inputs):
        n, options = self.propagation.n, self.propagation.options
        if self.rule in _FIRST_PATHS:
            chunks = inputs.chunk(inputs.shape[0] // n)
            z = self.affine(chunks[0], self.weight, self.bias)
            path = _FIRST_PATHS[self.rule](self, chunks, z, options)
        elif inputs.shape[0] != n:
            raise RuntimeError(f"first_layer: a {type(self.layer).__name__} ran before the first layer; the "
                               f"first-layer rule goes to the first Conv/Linear registered, which must run first")
        else:
            z = self.affine(inputs, self.weight, self.bias)
            if self.rule in ("zero", "epsilon"):
                self.output = _epsilon_output(z, options["epsilon"])
                return self.output
            path = _HIDDEN_PATHS[self.rule](self, inputs, z, options)
        self.output = _with_gradient_of(z, path)
        return self.output


class _FoldedBatchNorm(nn.Module):
    """Stands in for a BatchNorm folded into the layer before it: passes that layer's output on.

    It checks that its input is that output, so a BatchNorm that is not applied right after its
    neighbour in ``forward`` raises instead of giving a silently wrong map.
    """

    def __init__(self, name: str, layer: _RuleLayer):
        super().__init__()
        self.name, self.layer = name, layer

    def forward(self, inputs):
        if inputs is not self.layer.output:
            raise TypeError(f"model: BatchNorm {self.name!r} is registered after a {type(self.layer.layer).__name__} "
                            f"but does not take its output in forward, so it cannot be folded into it")
        return inputs


class _PassThrough(nn.Module):
    """A ReLU or ReLU6 through which relevance passes unchanged: R_in = R_out (never in-place).

    The gradient becomes f(a)/a where a > 0, so that a ⊙ g_in = f(a) ⊙ g_out; for ReLU this is the
    true derivative, for ReLU6 it also carries relevance past the clip at 6.
    """

    def __init__(self, activation: nn.Module):
        super().__init__()
        self.activation = _non_inplace(activation)

    def forward(self, inputs):
        if isinstance(self.activation, nn.ReLU):
            return self.activation(inputs)
        return _ClippedPassThrough.apply(inputs, self.activation.min_val, self.activation.max_val)


class _ClippedPassThrough(torch.autograd.Function):
    """y = clamp(a, 0, ceiling) with gradient y / a (0 where a ≤ 0): relevance passes the clip."""

    @staticmethod
    def forward(ctx, inputs, floor, ceiling):
        outputs = inputs.clamp(floor, ceiling)
        ctx.save_for_backward(inputs, outputs)
        return outputs

    @staticmethod
    def backward(ctx, gradient):
        inputs, outputs = ctx.saved_tensors
        # outputs is 0 wherever inputs <= 0, so the clamp below only avoids 0 / 0.
        scale = outputs / inputs.clamp(min=torch.finfo(inputs.dtype).tiny)
        return scale.mul_(gradient), None, None


class _StabilizedPool(nn.Module):
    """A pooling layer under Captum's convention: the rule's stabilizer also divides its output,
    R_in = a ⊙ ∂y/∂aᵀ (R_out / s(y))."""

    def __init__(self, pool: nn.Module, stabilizer: float):
        super().__init__()
        self.pool, self.stabilizer = pool, stabilizer

    def forward(self, inputs):
        outputs = self.pool(inputs)
        return _with_gradient_of(outputs, outputs * _ratio(outputs, outputs, self.stabilizer))


RULE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
POOLS = (nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
LRP_LAYERS = RULE_LAYERS + POOLS + (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Flatten, nn.Dropout,
                                    nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.ZeroPad2d, SamePad2d)

# zennit's composites of the same names: (rules by layer type, first-layer rule).
COMPOSITES = {
    "epsilon_plus_flat": ({nn.Conv1d: "zplus", nn.Conv2d: "zplus", nn.Linear: "epsilon"}, "flat"),
    "epsilon_gamma_box": ({nn.Conv1d: "gamma", nn.Conv2d: "gamma", nn.Linear: "epsilon"}, "zbox"),
}


def _batchnorm_pairs(model: nn.Module) -> dict[int, nn.Module]:
    """`mechanics.batchnorm_pairs`, every BatchNorm of the model in a pair; `_FoldedBatchNorm`
    checks at run time that each BatchNorm really takes its neighbour's output."""
    pairs, names = batchnorm_pairs(model), {id(module): name for name, module in model.named_modules()}
    folded = {id(batchnorm) for batchnorm in pairs.values()}
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and id(module) not in folded:
            raise TypeError(f"model: BatchNorm {names[id(module)]!r} does not follow a convolution or linear layer "
                            f"in its parent, so LRP cannot fold it")
    return pairs


def _layer_rules(model: nn.Module, rule: str, composite, first_layer: str | None) -> dict[int, str]:
    """{id of each Conv/Linear: its rule}: `rule`, overridden by the composite's entry for the layer's
    name or type, and by the first-layer rule at the first Conv/Linear registered."""
    rules_by_key, composite_first = {}, None
    if isinstance(composite, str):
        if composite not in COMPOSITES:
            raise ValueError(f"composite: expected one of {', '.join(COMPOSITES)} or a dict, got {composite!r}")
        rules_by_key, composite_first = COMPOSITES[composite]
    elif isinstance(composite, dict):
        rules_by_key = composite
    elif composite is not None:
        raise TypeError(f"composite: expected a name, a dict or None, got {type(composite).__name__}")
    for key, value in rules_by_key.items():
        if value not in RULES:
            raise ValueError(f"composite: the rule {value!r} for {key!r} is not one of {', '.join(RULES)}")
    first_layer = first_layer if first_layer is not None else composite_first
    rules = {}
    for name, module in model.named_modules():
        if not isinstance(module, RULE_LAYERS) or id(module) in rules:
            continue
        chosen = rules_by_key.get(name)
        if chosen is None:
            chosen = next((value for key, value in rules_by_key.items()
                           if isinstance(key, type) and isinstance(module, key)), rule)
        rules[id(module)] = first_layer if first_layer is not None and not rules else chosen
    if not rules:
        raise TypeError("model: has no Conv1d, Conv2d or Linear layer to propagate relevance through")
    return rules


def _initial_relevance(init: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """R at the output layer [N, K]: Eq. (24) the target logit, (25) CLRP's contrast with the other
    classes, (26) SGLRP's softmax gradient ∂ŷ_t/∂z_n."""
    one_hot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    score = logits.gather(1, target[:, None])
    if init == "logit":
        return one_hot * score
    if init == "contrastive":
        return score * (one_hot - (1 - one_hot) / (logits.shape[1] - 1))
    probabilities = logits.softmax(dim=1)
    return probabilities.gather(1, target[:, None]) * (one_hot - probabilities)


def _bound(value, x: torch.Tensor, name: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{name}: the zbox rule needs the input's bounds low and high (numbers or tensors "
                         f"broadcastable to x), e.g. low=-127/128, high=1.0 for vizlib.data.preprocess")
    return _baseline_like(value, x)


def _first_layer_inputs(first_rule: str | None, x: torch.Tensor, low, high) -> torch.Tensor:
    """The batch sent through the model: x, with the chunks the first-layer rule reads appended
    (the bounds for z^B, ones for w² and flat), so that padding before the first layer treats
    them like x."""
    if first_rule == "zbox":
        return torch.cat([x, _bound(low, x, "low"), _bound(high, x, "high")])
    if first_rule in ("wsquare", "flat"):
        return torch.cat([x, torch.ones_like(x)])
    return x


def lrp(model: nn.Module, x: torch.Tensor, target=None, *, rule: str = "epsilon", epsilon: float = 1e-6,
        gamma: float = 0.25, alpha: float = 1.0, beta: float = 0.0, first_layer: str | None = None, low=None,
        high=None, composite=None, init: str = "logit", return_layers: bool = False,
        convention: str = "zennit"):
    """Layer-wise relevance propagation (Bach et al., 2015); survey §2.1.2.3, Eq. (14)–(26).

    The target's score is redistributed layer by layer, R_j = Σ_k (z'_jk / s(z'_k)) R_k, so that
    Σ_i R_i = f_c(x) up to what biases and stabilizers absorb (Eq. 14–15). `rule` sets z' at every
    Conv/Linear: ``"zero"`` (z_jk = a_j w_jk), ``"epsilon"`` (s = z + ε sign z), ``"gamma"``
    (w + γw⁺), ``"alpha_beta"`` (Eq. 18, α − β = 1), ``"zplus"`` (α = 1, β = 0, Eq. 20–23).
    `first_layer` (``"zbox"`` with `low`/`high`, ``"wsquare"``, ``"flat"``) overrides it at the first
    layer; `composite` (``"epsilon_plus_flat"``, ``"epsilon_gamma_box"`` or a dict from layer type
    or name to rule) sets rules per layer. `init`: ``"logit"`` (Eq. 24), ``"contrastive"`` (CLRP,
    Eq. 25 as the survey writes it), ``"softmax_gradient"`` (SGLRP, Eq. 26). With `return_layers`,
    also returns {module name: relevance of that module's input tensor} (the last call of a module
    used several times; a tensor that also feeds a residual skip carries the skip's share too).

    `convention`: ``"zennit"`` follows Montavon et al. (2019) as zennit does: γ and αβ split signed
    inputs and modify the bias along with the weights; the stabilizer of non-ε rules is 1e-6;
    pooling and residual additions split relevance exactly in proportion. ``"captum"`` reproduces
    Captum's LRP: γ and α1β0 modify the weights for every input and keep the bias, the stabilizer
    is 1e-9, and pooling layers divide by their stabilized output (ε under the ε rule).
    """
    x = check_input(x)
    for name, value, valid in (("rule", rule, RULES), ("init", init, INITS), ("convention", convention, CONVENTIONS)):
        if value not in valid:
            raise ValueError(f"{name}: expected one of {', '.join(valid)}, got {value!r}")
    if first_layer is not None and first_layer not in FIRST_LAYER_RULES:
        raise ValueError(f"first_layer: expected None or one of {', '.join(FIRST_LAYER_RULES)}, got {first_layer!r}")
    if rule == "alpha_beta" and (alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-12):
        raise ValueError(f"alpha, beta: expected alpha - beta = 1 with both >= 0, got alpha={alpha}, beta={beta}")
    if convention == "captum" and rule == "alpha_beta" and (alpha, beta) != (1.0, 0.0):
        raise ValueError("alpha, beta: Captum's convention has only Alpha1_Beta0; use alpha=1, beta=0")
    rule_alpha, rule_beta = (1.0, 0.0) if rule == "zplus" else (alpha, beta)
    _check_supported(model, LRP_LAYERS, "lrp")
    rules = _layer_rules(model, rule, composite, first_layer)
    first_rule = next((value for value in rules.values() if value in FIRST_LAYER_RULES), None)
    pairs = _batchnorm_pairs(model)
    stabilizer = STABILIZERS[convention]
    propagation = _Propagation(x.shape[0], {"epsilon": 0.0 if rule == "zero" else epsilon, "gamma": gamma,
                                            "alpha": rule_alpha, "beta": rule_beta, "stabilizer": stabilizer,
                                            "convention": convention})
    inputs = _first_layer_inputs(first_rule, x, low, high).detach().requires_grad_()
    pool_stabilizer = propagation.options["epsilon"] if rule in ("zero", "epsilon") else stabilizer
    names = {id(module): name for name, module in model.named_modules()}
    layer_names = [name for name in names.values() if name]
    rule_layers: dict[int, _RuleLayer] = {}

    def replace(module):
        if isinstance(module, RULE_LAYERS):
            rule_layers[id(module)] = _RuleLayer(module, pairs.get(id(module)), rules[id(module)], propagation)
            return rule_layers[id(module)]
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            layer = next(layer for layer_id, layer in rule_layers.items() if pairs.get(layer_id) is module)
            return _FoldedBatchNorm(names[id(module)], layer)
        if isinstance(module, POOLS):
            return _StabilizedPool(module, pool_stabilizer)
        return _PassThrough(module)

    def select(module):
        return isinstance(module, RULE_LAYERS + (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6)) or (
            convention == "captum" and isinstance(module, POOLS))

    recorded: dict[str, torch.Tensor] = {}
    handles = []
    with preserved(model), swapped(model, select, replace):
        try:
            if return_layers:
                for name in layer_names:
                    handles.append(model.get_submodule(name).register_forward_pre_hook(
                        lambda module, args, name=name: recorded.__setitem__(name, args[0])))
            logits = model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        target = check_target(target, logits)
        relevance = _initial_relevance(init, logits.detach(), target)
        start = torch.where(logits == 0, 0.0, relevance / logits.detach().masked_fill(logits == 0, 1.0))
        tensors = [inputs, *recorded.values()]
        gradients = torch.autograd.grad(logits, tensors, grad_outputs=start, allow_unused=True)
    relevances = [_relevance_of(tensor, gradient, x.shape[0]) for tensor, gradient in zip(tensors, gradients)]
    if not return_layers:
        return relevances[0]
    return relevances[0], dict(zip(recorded, relevances[1:]))


def _relevance_of(tensor: torch.Tensor, gradient: torch.Tensor | None, n: int) -> torch.Tensor:
    """a ⊙ g, summed over the chunks a first-layer rule appended to the batch."""
    relevance = tensor.detach() * gradient if gradient is not None else torch.zeros_like(tensor)
    return relevance.view(-1, n, *relevance.shape[1:]).sum(0).detach()


def deep_taylor(model: nn.Module, x: torch.Tensor, target=None, *, input_rule: str = "zbox", low=None, high=None):
    """Deep Taylor decomposition (Montavon et al., 2017); survey §2.1.2.4, Eq. (27).

    Each ReLU unit is expanded to first order around a root point on its zero set: choosing the
    root on the positive-weight segment gives the z⁺ rule in the hidden layers, R_i = Σ_j
    a_i w⁺_ij / Σ_i a_i w⁺_ij R_j; at the input the root must stay in the pixel box l ≤ x ≤ h,
    which gives z^B (``input_rule="zbox"``, needs `low`, `high`), or it may be any point for
    unbounded inputs, which gives w² (``"wsquare"``). The answer is "what makes this a cat":
    Σ_i R_i = f_c(x) up to the relevance that biases absorb.
    """
    if input_rule not in ("zbox", "wsquare"):
        raise ValueError(f"input_rule: expected 'zbox' or 'wsquare', got {input_rule!r}")
    return lrp(model, x, target, rule="zplus", first_layer=input_rule, low=low, high=high)


# --- DeepLIFT ------------------------------------------------------------------------------------

class _RescaleActivation(nn.Module):
    """An elementwise activation whose gradient is DeepLIFT's multiplier m = Δy/Δx.

    The batch holds the inputs and their references, [x; x']. Only the first half needs multipliers:
    the score differentiated is that of x, so no gradient reaches the references, which keep their
    own. Where |Δx| < 1e-10 the multiplier is the ordinary derivative (Captum's convention).
    """

    def __init__(self, activation: nn.Module):
        super().__init__()
        self.activation = _non_inplace(activation)

    def forward(self, inputs):
        outputs = self.activation(inputs)
        n = inputs.shape[0] // 2
        delta_in, delta_out = _delta(inputs.detach()), _delta(outputs.detach())
        small = delta_in.abs() < DEEPLIFT_EPS
        multiplier = delta_out / delta_in.masked_fill(small, 1.0)
        rescaled = torch.where(small, outputs[:n], inputs[:n] * multiplier)
        return _with_gradient_of(outputs, torch.cat([rescaled, outputs[n:]]))


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
        delta_in = _delta(inputs.detach())
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
