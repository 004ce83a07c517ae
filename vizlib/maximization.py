"""Activation maximization: the input a unit or a class wants most.

Survey §2.1.4, Eq. (31)–(33) and Fig. 21–23; the chapter is ``book/05_maximization.ipynb``.

Instead of explaining one image, we search for one. The network stays fixed and the image x is
optimized by gradient ascent on an objective, minus penalties that keep x looking natural:

    x* = argmax_x  f(x) − Σ_r λ_r R_r(x).

The pieces are separate and orthogonal, as in lucid (Olah et al., 2017):

- objectives (`class_logit`, `class_log_prob`, `channel`, `neuron`, `direction`, `diversity`,
  `dream`, `match`) say what f is; they compose: ``channel("blocks.5", 3) - 0.5 * diversity(...)``;
- regularizers are penalties R (`l2`, `mean_prior`, `total_variation`) or projections applied
  to the image between steps (`blur_every`, `clip`);
- parameterizations (`PixelImage`, `FourierImage`, `DecorrelatedImage`, `GeneratorImage`) say
  which variables are optimized and how they map to the image;
- transforms (`pad`, `jitter`, `random_scale`, `random_rotate`) are random changes applied
  before each forward pass, so the image must work under all of them.

`maximize` puts them together; `deep_dream`, `invert` and `dgn_am` are instances of it.
`top_activating_patches` finds the dataset images that drive a channel most, and
`train_generator` trains the image prior of DGN-AM. Images are always in the model's input
space; for EfficientNet-Lite0 that is (pixel − 127) / 128, so 0 is mid-grey.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import MEAN, STD, gaussian_blur
from .mechanics import capture, check_input, check_target, preserved, resolve_layer
from .models import cache_key, load_cached, save_cached

__all__ = [
    "Objective",
    "class_logit",
    "class_log_prob",
    "channel",
    "neuron",
    "direction",
    "diversity",
    "dream",
    "match",
    "Penalty",
    "Projection",
    "l2",
    "mean_prior",
    "total_variation",
    "blur_every",
    "clip",
    "COLOR_CORRELATION_SVD_SQRT",
    "PixelImage",
    "FourierImage",
    "DecorrelatedImage",
    "GeneratorImage",
    "pad",
    "jitter",
    "random_scale",
    "random_rotate",
    "standard_transforms",
    "Maximized",
    "maximize",
    "deep_dream",
    "invert",
    "TopPatches",
    "top_activating_patches",
    "Generator",
    "train_generator",
    "dgn_am",
]

# The valid range of EfficientNet-Lite0's input: pixel 0 and pixel 255 after (pixel − 127) / 128.
PIXEL_LOW, PIXEL_HIGH = (0 - MEAN) / STD, (255 - MEAN) / STD


# ----------------------------------------------------------------------------
# Objectives
# ----------------------------------------------------------------------------


class Objective:
    """A differentiable score of the network's response, one value per image, to be maximized.

    ``score(activations, output)`` receives {layer: activation} for the `layers` it names and the
    model's output, and returns a tensor [N]. Objectives add, subtract, negate and scale by numbers.
    """

    def __init__(self, score: Callable[[dict, torch.Tensor], torch.Tensor], layers: Sequence = (),
                 name: str = "objective"):
        self.score, self.layers, self.name = score, tuple(dict.fromkeys(layers)), name

    def __call__(self, activations: dict, output: torch.Tensor) -> torch.Tensor:
        return self.score(activations, output)

    def __add__(self, other):
        if isinstance(other, numbers.Real) and other == 0:   # sum([...]) starts from 0
            return self
        other = _as_objective(other, "+")
        return Objective(lambda a, o: self(a, o) + other(a, o), self.layers + other.layers,
                         f"{self.name} + {other.name}")

    __radd__ = __add__

    def __neg__(self):
        return Objective(lambda a, o: -self(a, o), self.layers, f"-({self.name})")

    def __sub__(self, other):
        return self + (-_as_objective(other, "-"))

    def __rsub__(self, other):
        return _as_objective(other, "-") - self

    def __mul__(self, factor):
        if not isinstance(factor, numbers.Real) or isinstance(factor, bool):
            raise TypeError(f"an objective can only be scaled by a number, got {type(factor).__name__}")
        return Objective(lambda a, o: factor * self(a, o), self.layers, f"{factor:g} * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, divisor):
        return self * (1.0 / divisor)

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _as_objective(other, operation: str) -> Objective:
    if not isinstance(other, Objective):
        raise TypeError(f"objective {operation} {type(other).__name__}: expected another objective")
    return other


def _per_image_index(index, n: int, name: str) -> torch.Tensor | int:
    """An int, or a LongTensor [n] giving one index per image of the batch."""
    if isinstance(index, numbers.Integral) and not isinstance(index, bool):
        return int(index)
    index = torch.as_tensor(index)
    if index.is_floating_point() or index.dtype == torch.bool or index.dim() != 1:
        raise TypeError(f"{name}: expected an int or one int per image, got {index!r}")
    if len(index) != n:
        raise ValueError(f"{name}: expected one index per image ({n}), got {len(index)}")
    return index.long()


def _channel_slice(activation: torch.Tensor, layer, k, name: str = "channel") -> torch.Tensor:
    """activation[:, k] for one channel k, or activation[i, k_i] for one channel per image: [N, ...]."""
    if activation.dim() < 2:
        raise ValueError(f"layer: {layer!r} gives an activation of shape {tuple(activation.shape)}, "
                         f"expected [N, C, ...]")
    k = _per_image_index(k, activation.shape[0], name)
    channels = activation.shape[1]
    worst = k if isinstance(k, int) else (k.min().item() if k.min() < 0 else k.max().item())
    if not 0 <= worst < channels:
        raise ValueError(f"{name}: index {worst} is out of range for layer {layer!r} with {channels} channels")
    if isinstance(k, int):
        return activation[:, k]
    return activation[torch.arange(len(k), device=activation.device), k.to(activation.device)]


def class_logit(c) -> Objective:
    """The logit y_c of class `c` (an int, or one class per image)."""
    def score(_, output):
        target = check_target(_per_image_index(c, output.shape[0], "c"), output)
        return output.gather(1, target[:, None])[:, 0]
    return Objective(score, name=f"class_logit({c})")


def class_log_prob(c) -> Objective:
    """ln p(c | x) = log-softmax of the logits: the first term of the survey's Eq. (31)."""
    def score(_, output):
        target = check_target(_per_image_index(c, output.shape[0], "c"), output)
        return output.log_softmax(dim=-1).gather(1, target[:, None])[:, 0]
    return Objective(score, name=f"class_log_prob({c})")


def channel(layer, k) -> Objective:
    """The mean activation of channel `k` of `layer` over all positions (lucid's "channel")."""
    return Objective(lambda a, _: _channel_slice(a[layer], layer, k).flatten(1).mean(1), [layer],
                     f"channel({layer!r}, {k})")


def neuron(layer, k, y=None, x=None) -> Objective:
    """One unit: channel `k` of `layer` at row `y`, column `x` (the centre position by default)."""
    def score(activations, _):
        maps = _channel_slice(activations[layer], layer, k)
        if maps.dim() != 3:
            raise ValueError(f"layer: neuron needs a feature map [N, C, H, W], got {tuple(activations[layer].shape)}")
        height, width = maps.shape[1:]
        row, column = height // 2 if y is None else y, width // 2 if x is None else x
        if not (0 <= row < height and 0 <= column < width):
            raise ValueError(f"y, x: position ({row}, {column}) is outside the {height}×{width} map of {layer!r}")
        return maps[:, row, column]
    return Objective(score, [layer], f"neuron({layer!r}, {k}, {y}, {x})")


def direction(layer, vector) -> Objective:
    """A direction v in the channel space of `layer`: the mean over positions of ⟨v, a_{:,y,x}⟩ / ‖v‖."""
    vector = torch.as_tensor(vector, dtype=torch.float32).flatten()

    def score(activations, _):
        activation = activations[layer]
        if activation.shape[1] != len(vector):
            raise ValueError(f"vector: expected {activation.shape[1]} entries for {layer!r}, got {len(vector)}")
        unit = (vector / vector.norm()).to(activation)
        return torch.einsum("nc...,c->n...", activation, unit).flatten(1).mean(1)
    return Objective(score, [layer], f"direction({layer!r})")


def diversity(layer) -> Objective:
    """Minus the mean cosine similarity of each image's Gram matrix G = A Aᵀ at `layer` to those of
    the other images in the batch (Olah et al., 2017): adding it pushes the batch apart in style."""
    def score(activations, _):
        activation = activations[layer]
        n = activation.shape[0]
        if n < 2:
            raise ValueError("diversity: needs a batch of at least 2 images (shape[0] >= 2)")
        flat = activation.flatten(2)
        grams = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
        similarity = grams @ grams.T
        return -(similarity.sum(1) - similarity.diagonal()) / (n - 1)
    return Objective(score, [layer], f"diversity({layer!r})")


def dream(layer) -> Objective:
    """DeepDream's objective: the mean squared activation of `layer`, ‖A‖² / size (Mordvintsev et al., 2015)."""
    return Objective(lambda a, _: a[layer].flatten(1).square().mean(1), [layer], f"dream({layer!r})")


def match(layer, target: torch.Tensor) -> Objective:
    """Minus the normalised distance −‖A(x) − A₀‖² / ‖A₀‖² to a code A₀ of `layer`: maximizing it
    inverts the representation (Mahendran & Vedaldi, 2015)."""
    target = target.detach()

    def score(activations, _):
        activation = activations[layer]
        if activation.shape[1:] != target.shape[1:]:
            raise ValueError(f"target: code of shape {tuple(target.shape)} does not match {layer!r}'s "
                             f"activation {tuple(activation.shape)}")
        reference = target.to(activation).expand_as(activation)
        return -(activation - reference).flatten(1).square().sum(1) / reference.flatten(1).square().sum(1)
    return Objective(score, [layer], f"match({layer!r})")


# ----------------------------------------------------------------------------
# Regularizers
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Penalty:
    """λ R(x): subtracted from the objective; `value(image)` returns R per image, [N]."""

    name: str
    weight: float
    value: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Projection:
    """An operation on the image applied after every `every`-th step (blurring, clipping)."""

    name: str
    every: int
    apply: Callable[[torch.Tensor], torch.Tensor]


def _check_positive(value, name: str, *, integer: bool = False, zero: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if not isinstance(value, kind) or isinstance(value, bool) or value < 0 or (value == 0 and not zero):
        expected = "int" if integer else "number"
        raise ValueError(f"{name}: expected a {'non-negative' if zero else 'positive'} {expected}, got {value!r}")


def l2(weight: float) -> Penalty:
    """λ ‖x‖², summed over pixels: the survey's Eq. (31), Fig. 23 row 2."""
    _check_positive(weight, "weight", zero=True)
    return Penalty("l2", weight, lambda x: x.flatten(1).square().sum(1))


def mean_prior(x_mean: torch.Tensor, weight: float) -> Penalty:
    """λ ‖x − x_mean‖²: stay near the data set's mean image (the survey's Fig. 23 row 3)."""
    _check_positive(weight, "weight", zero=True)
    x_mean = check_input(x_mean if x_mean.dim() == 4 else x_mean[None], name="x_mean").detach()

    def value(x):
        if x_mean.shape[1:] != x.shape[1:]:
            raise ValueError(f"x_mean: shape {tuple(x_mean.shape)} does not match the image {tuple(x.shape)}")
        return (x - x_mean.to(x)).flatten(1).square().sum(1)
    return Penalty("mean_prior", weight, value)


def total_variation(weight: float, beta: float = 2.0) -> Penalty:
    """λ Σ_ij ((x_{i,j+1} − x_ij)² + (x_{i+1,j} − x_ij)²)^{β/2} (Mahendran & Vedaldi, 2015):
    penalizes high frequencies; β < 1 would favour piecewise-constant images."""
    _check_positive(weight, "weight", zero=True)
    _check_positive(beta, "beta")

    def value(x):
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        squared = dx.square() + dy.square()
        # (·)^{β/2} has an infinite slope at 0 for β < 2: a tiny floor keeps the gradient finite.
        return (squared if beta == 2 else (squared + 1e-8) ** (beta / 2)).flatten(1).sum(1)
    return Penalty(f"total_variation(β={beta:g})", weight, value)


def blur_every(n: int, sigma: float) -> Projection:
    """Gaussian blur of standard deviation `sigma` pixels after every n-th step (Yosinski et al., 2015)."""
    _check_positive(n, "n", integer=True)
    _check_positive(sigma, "sigma")
    return Projection(f"blur_every({n}, {sigma:g})", n, lambda x: gaussian_blur(x, sigma))


def clip(low: float = PIXEL_LOW, high: float = PIXEL_HIGH) -> Projection:
    """Clamp the image to the valid pixel range after every step; the defaults are the range of
    EfficientNet-Lite0's input (pixels 0 and 255); use ``clip(0, 1)`` for the small nets."""
    if not low < high:
        raise ValueError(f"low, high: expected low < high, got {low} and {high}")
    return Projection(f"clip({low:.3g}, {high:.3g})", 1, lambda x: x.clamp(low, high))


# ----------------------------------------------------------------------------
# Parameterizations: the variables optimized, and the image they make
# ----------------------------------------------------------------------------

# The square root of ImageNet's RGB colour covariance, from lucid (Olah et al., 2017,
# lucid/optvis/param/color.py): colour = M z with decorrelated z, M = this / max column norm.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                           [0.27, 0.00, -0.05],
                                           [0.27, -0.09, 0.03]])


class PixelImage:
    """The pixels themselves, initialised with N(0, sd²)."""

    def __init__(self, shape, *, sd: float = 0.01, generator: torch.Generator | None = None, device=None):
        self.pixels = (torch.randn(shape, generator=generator) * sd).to(device).requires_grad_()

    def parameters(self) -> list[torch.Tensor]:
        return [self.pixels]

    def image(self) -> torch.Tensor:
        return self.pixels

    @torch.no_grad()
    def set_image(self, image: torch.Tensor) -> None:
        self.pixels.copy_(image)


def _frequencies(height: int, width: int) -> torch.Tensor:
    """|f| of each coefficient of a real 2-D FFT of a height×width image, in cycles per pixel."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    return (fx.square() + fy.square()).sqrt()


class FourierImage:
    """The image as its 2-D Fourier spectrum, scaled by 1/f (Olah et al., 2017).

    x = irfft2(s ⊙ z) with s_f = 1 / max(|f|, 1/max(H, W))^decay and z the (real, imaginary)
    parameters. Natural images have amplitude ∝ 1/f, so with this scaling every frequency moves
    at the same rate in z and gradient steps no longer favour high-frequency noise.
    """

    def __init__(self, shape, *, sd: float = 0.01, decay: float = 1.0, generator: torch.Generator | None = None,
                 device=None):
        n, c, height, width = shape
        self.size = (height, width)
        frequencies = _frequencies(height, width)
        self.scale = (1.0 / frequencies.clamp(min=1.0 / max(height, width)) ** decay).to(device)
        spectrum_shape = (n, c, *frequencies.shape, 2)
        self.spectrum = (torch.randn(spectrum_shape, generator=generator) * sd).to(device).requires_grad_()

    def parameters(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def image(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        return torch.fft.irfft2(spectrum, s=self.size, norm="ortho")

    @torch.no_grad()
    def set_image(self, image: torch.Tensor) -> None:
        spectrum = torch.fft.rfft2(image, norm="ortho") / self.scale
        self.spectrum.copy_(torch.view_as_real(spectrum))


class DecorrelatedImage:
    """Colour decorrelation (Olah et al., 2017): the optimized channels are ImageNet's principal
    colour components, mixed into RGB by `colour_matrix` (COLOR_CORRELATION_SVD_SQRT normalised to a
    largest column norm of 1) on top of a spatial parameterization (`PixelImage` or `FourierImage`)."""

    def __init__(self, spatial):
        self.spatial = spatial
        self.colour_matrix = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()

    def parameters(self) -> list[torch.Tensor]:
        return self.spatial.parameters()

    def _mix(self, image: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        if image.shape[1] != 3:
            raise ValueError(f"decorrelate: colour decorrelation needs 3 channels, got {image.shape[1]}; "
                             f"pass decorrelate=False")
        return torch.einsum("ij,njhw->nihw", matrix.to(image), image)

    def image(self) -> torch.Tensor:
        return self._mix(self.spatial.image(), self.colour_matrix)

    @torch.no_grad()
    def set_image(self, image: torch.Tensor) -> None:
        self.spatial.set_image(self._mix(image, torch.linalg.inv(self.colour_matrix)))


class GeneratorImage:
    """The image G(v) of a code v through a trained generator (DGN-AM, Nguyen et al., 2016).

    The code starts at the data's mean code plus N(0, sd²) noise and is kept inside the box
    [code_low, code_high] the training codes occupied, so that G stays on familiar ground.
    """

    def __init__(self, generator: "Generator", n: int = 1, *, sd: float = 0.1,
                 seed_generator: torch.Generator | None = None, device=None):
        self.generator = generator
        noise = torch.randn((n, generator.code_size), generator=seed_generator) * sd
        spread = (generator.code_high - generator.code_low).cpu()
        self.code = (generator.code_mean.cpu() + noise * spread).to(device).requires_grad_()

    def parameters(self) -> list[torch.Tensor]:
        return [self.code]

    def image(self) -> torch.Tensor:
        return self.generator(self.code)

    @torch.no_grad()
    def constrain(self) -> None:
        self.code.copy_(self.code.clamp(self.generator.code_low, self.generator.code_high))

    def set_image(self, image: torch.Tensor) -> None:
        raise ValueError("regularizers: blur_every and clip change the image, and a generator's image cannot "
                         "be mapped back to its code; use penalties with a GeneratorImage")


def _parameterize(parameterization, decorrelate: bool, shape, generator, device):
    if not isinstance(parameterization, str):
        if not all(hasattr(parameterization, name) for name in ("parameters", "image", "set_image")):
            raise TypeError("parameterization: expected 'pixels', 'fft' or an object with parameters(), image() "
                            f"and set_image(), got {type(parameterization).__name__}")
        return parameterization
    kinds = {"pixels": PixelImage, "fft": FourierImage}
    if parameterization not in kinds:
        raise ValueError(f"parameterization: expected 'pixels' or 'fft', got {parameterization!r}")
    if decorrelate and shape[1] != 3:
        raise ValueError(f"decorrelate: colour decorrelation needs 3 channels, got shape {tuple(shape)}; "
                         f"pass decorrelate=False")
    spatial = kinds[parameterization](shape, generator=generator, device=device)
    return DecorrelatedImage(spatial) if decorrelate else spatial


# ----------------------------------------------------------------------------
# Transforms: random changes the image must survive
# ----------------------------------------------------------------------------


def _choice(values: Sequence, generator: torch.Generator):
    return values[torch.randint(len(values), (1,), generator=generator).item()]


@dataclass(frozen=True)
class pad:
    """Pad by `width` pixels of `value` on every side (0 is mid-grey for EfficientNet-Lite0)."""

    width: int
    value: float = 0.0

    def __call__(self, x, generator):
        return F.pad(x, [self.width] * 4, value=self.value)


@dataclass(frozen=True)
class jitter:
    """Crop `d` pixels at a random offset: the image shifts by up to d pixels each step."""

    d: int

    def __call__(self, x, generator):
        dy, dx = torch.randint(self.d + 1, (2,), generator=generator).tolist()
        return x[..., dy: dy + x.shape[-2] - self.d, dx: dx + x.shape[-1] - self.d]


@dataclass(frozen=True)
class random_scale:
    """Resize by a factor drawn from `scales` (bilinear)."""

    scales: tuple

    def __call__(self, x, generator):
        factor = _choice(self.scales, generator)
        size = [max(1, round(side * factor)) for side in x.shape[-2:]]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class random_rotate:
    """Rotate by an angle in degrees drawn from `angles`, about the centre (zeros fill the corners)."""

    angles: tuple

    def __call__(self, x, generator):
        angle = math.radians(_choice(self.angles, generator))
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def standard_transforms() -> list:
    """Lucid's robustness transforms for 224×224 images (Olah et al., 2017): pad 12, jitter 8,
    scale by 0.9–1.1, rotate by −10°…10°, jitter 4."""
    return [pad(12), jitter(8), random_scale(tuple(1 + (i - 5) / 50 for i in range(11))),
            random_rotate(tuple(range(-10, 11)) + 5 * (0,)), jitter(4)]


def _transforms(transforms) -> list:
    if transforms is None:
        return []
    if isinstance(transforms, str):
        if transforms != "standard":
            raise ValueError(f"transforms: expected 'standard', None or a list of transforms, got {transforms!r}")
        return standard_transforms()
    transforms = list(transforms)
    if not all(callable(transform) for transform in transforms):
        raise TypeError("transforms: expected callables transform(x, generator) -> x")
    return transforms


# ----------------------------------------------------------------------------
# Optimization
# ----------------------------------------------------------------------------


@dataclass
class Maximized:
    """What `maximize` found: `image` [N, C, H, W] in the model's input space; `history` [steps, N],
    the objective minus the penalties at each step (on the transformed image that step saw);
    `final` [N], the objective alone on the returned image, without transforms."""

    image: torch.Tensor
    history: torch.Tensor
    final: torch.Tensor


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _respond(model: nn.Module, objective: Objective, x: torch.Tensor) -> torch.Tensor:
    """The objective's values [N] for images `x`, capturing the layers it reads."""
    with contextlib.ExitStack() as stack:
        stores = {layer: stack.enter_context(capture(model, layer, gradients=False)) for layer in objective.layers}
        output = model(x)
        values = objective({layer: store.activation for layer, store in stores.items()}, output)
    if not isinstance(values, torch.Tensor) or values.shape != (x.shape[0],):
        raise ValueError(f"objective: {objective.name} must return one value per image, shape [{x.shape[0]}], "
                         f"got {getattr(values, 'shape', type(values).__name__)}")
    return values


def _check_shape(shape) -> tuple[int, ...]:
    if (not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 4
            or not all(isinstance(side, numbers.Integral) and side > 0 for side in shape)):
        raise ValueError(f"shape: expected four positive ints (N, C, H, W), got {shape!r}")
    return tuple(int(side) for side in shape)


def maximize(model: nn.Module, objective: Objective, *, shape=(1, 3, 224, 224), steps: int = 256,
             lr: float = 0.05, regularizers: Sequence = (), parameterization="fft", decorrelate: bool = True,
             transforms="standard", init: torch.Tensor | None = None, seed: int = 0,
             progress: bool = False) -> Maximized:
    """Activation maximization (Erhan et al., 2009; Simonyan et al., 2014); survey §2.1.4, Eq. (31).

        x* = argmax_x  f(T(x)) − Σ_r λ_r R_r(x),

    with f the `objective`, T a random draw of the `transforms` at each step, R_r the penalties
    among `regularizers`, and x = P(θ) made by the `parameterization` ("pixels", "fft", or an object
    such as `GeneratorImage`), optimized over θ with Adam(lr) for `steps` steps. Projections among
    the regularizers act on the image between steps and are mapped back to θ exactly. `init`
    starts from an image instead of noise. Seeded by `seed`; runs on the model's device; the model
    is left unchanged.
    """
    from tqdm.auto import tqdm

    if not isinstance(objective, Objective):
        raise TypeError(f"objective: expected an Objective (e.g. channel('blocks.5', 3)), got "
                        f"{type(objective).__name__}")
    _check_positive(steps, "steps", integer=True)
    _check_positive(lr, "lr")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    penalties = [r for r in regularizers if isinstance(r, Penalty)]
    projections = [r for r in regularizers if isinstance(r, Projection)]
    if len(penalties) + len(projections) != len(regularizers):
        raise TypeError("regularizers: expected penalties (l2, mean_prior, total_variation) and projections "
                        "(blur_every, clip)")
    if init is not None:
        shape = tuple(check_input(init, name="init").shape)
    shape = _check_shape(shape)
    for layer in objective.layers:
        resolve_layer(model, layer)
    transforms = _transforms(transforms)
    device = _model_device(model)
    random = torch.Generator().manual_seed(int(seed))
    image_of = _parameterize(parameterization, decorrelate, shape, random, device)
    if init is not None:
        image_of.set_image(init.to(device))

    def total(x: torch.Tensor) -> torch.Tensor:
        seen = x
        for transform in transforms:
            seen = transform(seen, random)
        value = _respond(model, objective, seen)
        for penalty in penalties:
            value = value - penalty.weight * penalty.value(x)
        return value

    history = []
    with preserved(model):
        with torch.no_grad():
            try:
                _respond(model, objective, image_of.image())
            except RuntimeError as error:
                raise ValueError(f"shape: images of shape {tuple(image_of.image().shape)} do not fit the model "
                                 f"({str(error).splitlines()[0]})") from error
        optimizer = torch.optim.Adam(image_of.parameters(), lr=lr)
        for step in tqdm(range(steps), disable=not progress, desc=objective.name, leave=False):
            values = total(image_of.image())
            if not values.requires_grad:
                raise ValueError(f"objective: {objective.name} is not differentiable with respect to the image "
                                 f"(its value does not require grad)")
            optimizer.zero_grad(set_to_none=True)
            (-values.sum()).backward()
            optimizer.step()
            if hasattr(image_of, "constrain"):
                image_of.constrain()
            due = [projection for projection in projections if (step + 1) % projection.every == 0]
            if due:
                with torch.no_grad():
                    x = image_of.image()
                    for projection in due:
                        x = projection.apply(x)
                    image_of.set_image(x)
            history.append(values.detach())
        with torch.no_grad():
            image = image_of.image().detach()
            final = _respond(model, objective, image)
    return Maximized(image=image, history=torch.stack(history).cpu(), final=final.cpu())


def deep_dream(model: nn.Module, x: torch.Tensor, layer, *, steps: int = 10, lr: float = 0.01,
               octaves: int = 4, octave_scale: float = 1.4, jitter_by: int = 16,
               valid_range=(PIXEL_LOW, PIXEL_HIGH), seed: int = 0, progress: bool = False) -> Maximized:
    """DeepDream (Mordvintsev et al., 2015): amplify what `layer` already sees in the photo `x`.

    Gradient ascent on ‖A_layer(x)‖² / size from the photo, octave by octave: the image is dreamt
    at `octaves` sizes growing by `octave_scale`, and the detail added at one size is upsampled
    into the next. Pixels, jitter by `jitter_by`, clipped to `valid_range`; `history` holds every
    octave's steps in order.
    """
    x = check_input(x)
    _check_positive(octaves, "octaves", integer=True)
    if not isinstance(octave_scale, numbers.Real) or octave_scale <= 1:
        raise ValueError(f"octave_scale: expected a number > 1, got {octave_scale!r}")
    height, width = x.shape[-2:]
    sizes = [(round(height / octave_scale ** i), round(width / octave_scale ** i)) for i in reversed(range(octaves))]
    detail, histories = torch.zeros_like(x[..., : sizes[0][0], : sizes[0][1]]), []
    for octave, size in enumerate(sizes):
        base = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
        result = maximize(model, dream(layer), steps=steps, lr=lr, init=base + detail, parameterization="pixels",
                          decorrelate=False, transforms=[pad(jitter_by), jitter(jitter_by)],
                          regularizers=[clip(*valid_range)], seed=seed + octave, progress=progress)
        detail = result.image.to(x) - base
        histories.append(result.history)
    return Maximized(image=result.image, history=torch.cat(histories), final=result.final)


def invert(model: nn.Module, x: torch.Tensor, layer, *, steps: int = 200, lr: float = 0.05,
           regularizers: Sequence | None = None, parameterization="fft", decorrelate: bool = True,
           transforms=None, seed: int = 0, progress: bool = False) -> Maximized:
    """The natural pre-image of `layer`'s code of `x` (Mahendran & Vedaldi, 2015; 2016).

        x̂ = argmin_x' ‖Φ(x') − Φ(x)‖² / ‖Φ(x)‖² + λ R_TV(x'),

    from noise, so x̂ shows what the code keeps and nothing of what it discards. The default
    regularizers are total_variation(weight 1e-4) and clip to Lite0's valid pixel range; `final`
    is minus the normalised distance reached.
    """
    x = check_input(x)
    with torch.no_grad():
        code = _capture_once(model, x, layer)
    if regularizers is None:
        regularizers = (total_variation(1e-4), clip())
    return maximize(model, match(layer, code), shape=tuple(x.shape), steps=steps, lr=lr, regularizers=regularizers,
                    parameterization=parameterization, decorrelate=decorrelate, transforms=transforms, seed=seed,
                    progress=progress)


def _capture_once(model: nn.Module, x: torch.Tensor, layer) -> torch.Tensor:
    with preserved(model), capture(model, layer, gradients=False) as store:
        model(x.to(_model_device(model)))
    return store.activation


# ----------------------------------------------------------------------------
# The data set's own answer: top-activating images and patches
# ----------------------------------------------------------------------------


@dataclass
class TopPatches:
    """The k images that drive a channel most, best first: `indices` into the data set [k], the
    channel's peak activation `values` [k] at `positions` (row, column) [k, 2] of the feature map,
    `boxes` (x0, y0, x1, y1) [k, 4] of the input pixels that peak depends on, and those `patches`."""

    indices: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    boxes: torch.Tensor
    patches: list


def top_activating_patches(model: nn.Module, images: torch.Tensor, layer, channel: int, *, k: int = 9,
                           batch_size: int = 64) -> TopPatches:
    """The images of a data set that activate `channel` of `layer` most (Zeiler & Fergus, 2014).

    An image's activation is the channel's maximum over positions. Its patch is the bounding box of
    the input pixels on which that maximal unit depends (non-zero gradient), i.e. the unit's
    receptive field, clipped to the image and shrunk where the network ignores pixels.
    """
    images = check_input(images, name="images")
    _check_positive(k, "k", integer=True)
    _check_positive(batch_size, "batch_size", integer=True)
    if k > len(images):
        raise ValueError(f"k: asked for {k} images from a data set of {len(images)}")
    device = _model_device(model)
    peaks, where = [], []
    with preserved(model), torch.no_grad():
        for start in range(0, len(images), batch_size):
            activation = _capture_once(model, images[start: start + batch_size], layer)
            maps = _channel_slice(activation, layer, channel)
            if maps.dim() != 3:
                raise ValueError(f"layer: needs a feature map [N, C, H, W], got {tuple(activation.shape)}")
            value, flat = maps.flatten(1).max(1)
            peaks.append(value)
            where.append(torch.stack([flat // maps.shape[2], flat % maps.shape[2]], 1))
    peaks, where = torch.cat(peaks).cpu(), torch.cat(where).cpu()
    values, indices = peaks.topk(k)
    positions = where[indices]

    top = images[indices].to(device).clone().requires_grad_()
    with preserved(model), capture(model, layer, gradients=False) as store:
        model(top)
        units = store.activation[torch.arange(k, device=device), channel, positions[:, 0], positions[:, 1]]
        gradient, = torch.autograd.grad(units.sum(), top)
    depends = gradient.detach().abs().sum(1).cpu() > 0
    boxes = []
    for mask in depends:
        rows, columns = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        boxes.append([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1] if len(rows) else
                     [0, 0, mask.shape[1], mask.shape[0]])
    boxes = torch.tensor(boxes, dtype=torch.long)
    patches = [images[i][:, y0:y1, x0:x1] for i, (x0, y0, x1, y1) in zip(indices.tolist(), boxes.tolist())]
    return TopPatches(indices=indices, values=values, positions=positions, boxes=boxes, patches=patches)


# ----------------------------------------------------------------------------
# DGN-AM: a learned image prior (survey Eq. 32–33)
# ----------------------------------------------------------------------------


class Generator(nn.Module):
    """G: a code v (the target CNN's feature vector) → an image in [0, 1], size×size.

    Linear → [2w, size/4, size/4] → two ×2 transposed convolutions → sigmoid. The buffers
    `code_mean`, `code_low`, `code_high` record the codes of the training set: where DGN-AM starts
    and the box it keeps the code in.
    """

    def __init__(self, code_size: int, out_channels: int = 1, size: int = 28, width: int = 16):
        super().__init__()
        if size % 4:
            raise ValueError(f"size: expected a multiple of 4, got {size}")
        self.code_size, self.side = code_size, size // 4
        self.fc = nn.Linear(code_size, 2 * width * self.side ** 2)
        self.up = nn.Sequential(
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, out_channels, 4, stride=2, padding=1), nn.Sigmoid())
        for name in ("code_mean", "code_low", "code_high"):
            self.register_buffer(name, torch.zeros(code_size))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.up(self.fc(code).view(len(code), -1, self.side, self.side))


def _discriminator(in_channels: int, size: int) -> nn.Module:
    """D: image → logit of "real" (two strided convolutions and a linear layer)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, 1))


def train_generator(encoder: nn.Module, dataset, layer, *, epochs: int = 10, batch_size: int = 64,
                    lr: float = 2e-3, image_weight: float = 20.0, feature_weight: float = 1.0,
                    adversarial_weight: float = 0.02, width: int = 16, seed: int = 0, cache: bool = True,
                    progress: bool = True) -> Generator:
    """Train DGN-AM's generator (Nguyen et al., 2016; Dosovitskiy & Brox, 2016); survey Eq. (32)–(33).

    The code of an image x is v = Φ(x), the flattened activation of `encoder`'s `layer`. G learns
    to invert it, x_f = G(v), against a discriminator D:

        loss_D = −ln D(x) − ln(1 − D(x_f))                                        (32)
        loss_G = −λ_adv ln D(x_f) + λ₁ mean(x − x_f)² + λ₂ ‖v − Φ(x_f)‖² / ‖v‖²    (33)

    (the non-saturating form of Eq. (33)'s ln(1 − D_f); λ₁ = `image_weight`, λ₂ = `feature_weight`,
    λ_adv = `adversarial_weight`). `dataset` has images in [0, 1] (e.g. `data.digits()`); labels
    are not used. The encoder is frozen and left unchanged. Deterministic under `seed`, and cached
    under `models.cache_dir()` keyed by a hash of the encoder's weights, the data and the settings.

    The defaults suit `data.digits(28)` with a small GAPNet as encoder (the chapter's): with
    λ₁ = 1 the feature term wins and G draws one blob that merely matches the codes (held-out
    reconstruction MSE 0.050); λ₁ = 20 gives recognizable digits (0.013). Ten epochs take about
    10 s on one CPU core.
    """
    from tqdm import tqdm

    images = dataset.images if hasattr(dataset, "images") else dataset
    images = check_input(images, name="dataset")
    for name, value in {"epochs": epochs, "batch_size": batch_size, "width": width}.items():
        _check_positive(value, name, integer=True)
    device = _model_device(encoder)
    with torch.no_grad():
        codes = torch.cat([_capture_once(encoder, images[i: i + 256], layer).flatten(1)
                           for i in range(0, len(images), 256)]).cpu()
    size, channels = images.shape[-1], images.shape[1]
    if images.shape[-2] != size:
        raise ValueError(f"dataset: expected square images, got {tuple(images.shape[-2:])}")
    generator, discriminator = Generator(codes.shape[1], channels, size, width), _discriminator(channels, size)
    settings = dict(layer=str(layer), epochs=epochs, batch_size=batch_size, lr=lr, image_weight=image_weight,
                    feature_weight=feature_weight, adversarial_weight=adversarial_weight, seed=seed)
    key = cache_key(images, *encoder.state_dict().values(),
                    text=repr(generator) + repr(discriminator) + repr(sorted(settings.items())))
    generator.code_mean.copy_(codes.mean(0))
    generator.code_low.copy_(codes.min(0).values)
    generator.code_high.copy_(codes.max(0).values)
    generator.to(device)
    if cache and load_cached(generator, "Generator", key):
        return generator.eval()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator.fc.reset_parameters()
        for module in [*generator.up, *discriminator]:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    discriminator.to(device)
    shuffle = torch.Generator().manual_seed(seed)
    optimizers = [torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999)) for net in (generator, discriminator)]
    real, fake = torch.ones(batch_size, 1, device=device), torch.zeros(batch_size, 1, device=device)
    steps = epochs * -(-len(images) // batch_size)
    bar = tqdm(total=steps, desc="training the generator", disable=not progress)
    generator.train()
    with preserved(encoder):
        for _ in range(epochs):
            for index in torch.randperm(len(images), generator=shuffle).split(batch_size):
                x, v = images[index].to(device), codes[index].to(device)
                x_f = generator(v)
                loss_d = (F.binary_cross_entropy_with_logits(discriminator(x), real[: len(x)])
                          + F.binary_cross_entropy_with_logits(discriminator(x_f.detach()), fake[: len(x)]))
                optimizers[1].zero_grad(set_to_none=True)
                loss_d.backward()
                optimizers[1].step()
                with capture(encoder, layer, gradients=False) as store:
                    encoder(x_f)
                v_f = store.activation.flatten(1)
                loss_g = (adversarial_weight * F.binary_cross_entropy_with_logits(discriminator(x_f), real[: len(x)])
                          + image_weight * (x - x_f).square().mean()
                          + feature_weight * ((v - v_f).square().sum(1) / v.square().sum(1).clamp(min=1e-8)).mean())
                optimizers[0].zero_grad(set_to_none=True)
                loss_g.backward()
                optimizers[0].step()
                bar.set_postfix(loss_d=f"{loss_d.item():.2f}", loss_g=f"{loss_g.item():.3f}", refresh=False)
                bar.update()
    bar.close()
    generator.eval()
    if cache:
        save_cached(generator, "Generator", key)
    return generator


def dgn_am(model: nn.Module, generator: Generator, target, *, n: int | None = None, steps: int = 200,
           lr: float = 0.05, regularizers: Sequence = (), seed: int = 0, progress: bool = False) -> Maximized:
    """DGN-AM (Nguyen et al., 2016), survey Fig. 22 step 3: maximize ln p(c | G(v)) over the code v,
    not the pixels, so the image stays one the generator can draw. `target` is a class or one class
    per image; `n` images (default: one per target). The generator is left unchanged."""
    if n is None:
        n = 1 if isinstance(target, numbers.Integral) else len(target)
    device = _model_device(model)
    random = torch.Generator().manual_seed(int(seed))
    with preserved(generator):
        codes = GeneratorImage(generator, n, seed_generator=random, device=device)
        return maximize(model, class_log_prob(target), shape=(n, generator.up[-2].out_channels,
                                                               4 * generator.side, 4 * generator.side),
                        steps=steps, lr=lr, regularizers=regularizers, parameterization=codes, transforms=None,
                        seed=seed, progress=progress)
