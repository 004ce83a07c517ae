"""Attention masks: squeeze-excitation, CBAM, and class attention from a helper net's CAM.

Survey §2.1.5 (Fig. 24–28); the chapter is ``book/06_attention.ipynb``.

A network with attention modules computes its own masks: a weight per channel
(`SqueezeExcitation`, `CBAM`) and a weight per location (`CBAM`), each in (0, 1), by which it
rescales a feature map. `attention_maps` reads them out of any model that has such modules
(ours, and torchvision's `SqueezeExcitation` in EfficientNet-B0, MobileNetV3, RegNet).
`AttentionNet` is a small residual net with one module per stage, trained on the shapes set by
`vizlib.models.train`. Class attention (survey §2.1.5, item 3) is different: the mask comes from
a class activation map of a separate helper net (`class_attention_mask`), and a second net is
trained on the masked images (`train_with_class_attention`).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Iterator

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation as TorchvisionSqueezeExcitation

from . import cam, models
from .mechanics import batches, check_input, preserved

__all__ = [
    "SqueezeExcitation",
    "CBAM",
    "attention_modules",
    "recording",
    "attention_maps",
    "ResidualBlock",
    "AttentionNet",
    "CLASS_MAPS",
    "class_attention_mask",
    "ClassAttentionNet",
    "train_with_class_attention",
]


def _hidden_width(channels, reduction) -> int:
    for name, value in (("channels", channels), ("reduction", reduction)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if channels % reduction:
        raise ValueError(f"reduction: channels={channels} is not divisible by reduction={reduction}; "
                         f"the hidden layer of C/r units needs C divisible by r")
    return channels // reduction


def _check_features(x: torch.Tensor, channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a feature map [N, {channels}, H, W], got {shape}")


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018); survey §2.1.5, item 1, Fig. 24.

        z = (1 / HW) Σ_ij u_ij                  squeeze: global average pooling, z ∈ R^C
        s = σ(W₂ δ(W₁ z + b₁) + b₂)             excitation: C → C/r → C, δ = ReLU, σ = sigmoid
        x̃_c = s_c · u_c                          each channel rescaled by its weight s_c ∈ (0, 1)

    Parameters: 2C²/r weights and C/r + C biases. Inside `recording`, `channel_weights` holds s
    [N, C] of the last forward pass; otherwise it is None.
    """

    channel_weights = None

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = _hidden_width(channels, reduction)
        self.channels, self.reduction = channels, reduction
        self.reduce = nn.Linear(channels, hidden)
        self.relu = nn.ReLU()
        self.expand = nn.Linear(hidden, channels)
        self.channel_gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features(x, self.channels)
        weights = self.channel_gate(self.expand(self.relu(self.reduce(x.mean(dim=(2, 3))))))
        return x * weights[:, :, None, None]


class CBAM(nn.Module):
    """Convolutional block attention module (Woo et al., 2018); survey §2.1.5, item 2, Fig. 25–27.

    Channel attention, then spatial attention, as in the paper:

        M_c = σ(MLP(AvgPool(F)) + MLP(MaxPool(F)))          one shared MLP C → C/r → C, [N, C]
        F'  = M_c ⊗ F
        M_s = σ(f^{k×k}([AvgPool_c(F'); MaxPool_c(F')]))      pooled over channels, [N, 1, H, W]
        F'' = M_s ⊗ F'

    f^{k×k} is a convolution from 2 maps to 1, without bias, zero-padded to keep the size.
    Parameters: 2C²/r + C/r + C for the MLP, 2k² for the convolution. Inside `recording`,
    `channel_weights` [N, C] and `spatial_mask` [N, 1, H, W] hold the last forward pass's
    attention; otherwise they are None.
    """

    channel_weights = None
    spatial_mask = None

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        hidden = _hidden_width(channels, reduction)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd positive int (the map keeps its size), got {kernel_size!r}")
        self.channels, self.reduction = channels, reduction
        self.mlp = nn.Sequential(OrderedDict(reduce=nn.Linear(channels, hidden), relu=nn.ReLU(),
                                             expand=nn.Linear(hidden, channels)))
        self.channel_gate = nn.Sigmoid()
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.spatial_gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features(x, self.channels)
        channel_weights = self.channel_gate(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        refined = x * channel_weights[:, :, None, None]
        pooled = torch.cat([refined.mean(dim=1, keepdim=True), refined.amax(dim=1, keepdim=True)], dim=1)
        return refined * self.spatial_gate(self.spatial_conv(pooled))


# The submodule whose output is each kind of attention, per module type. torchvision's
# SqueezeExcitation returns its weights as [N, C, 1, 1]; they are flattened to [N, C].
_GATES = {
    SqueezeExcitation: {"channel": "channel_gate"},
    CBAM: {"channel": "channel_gate", "spatial": "spatial_gate"},
    TorchvisionSqueezeExcitation: {"channel": "scale_activation"},
}
_ATTRIBUTES = {"channel": "channel_weights", "spatial": "spatial_mask"}


def _gates(module: nn.Module) -> dict[str, str] | None:
    """The gates of an attention module, by its class or a base class (so a subclass that
    reorders the steps is read the same way); None for any other module."""
    return next((gates for kind, gates in _GATES.items() if isinstance(module, kind)), None)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The attention modules of `model` by name: `SqueezeExcitation`, `CBAM` and torchvision's
    `SqueezeExcitation`, and their subclasses. A model without any raises a ValueError."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    found = {name: module for name, module in model.named_modules() if _gates(module) is not None}
    if not found:
        raise ValueError(f"model: {type(model).__name__} has no attention modules (expected "
                         f"{', '.join(t.__module__ + '.' + t.__name__ for t in _GATES)}), so it has no attention "
                         f"masks to show; for a class map of any CNN use vizlib.cam")
    return found


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[dict[str, nn.Module]]:
    """Inside, each attention module of `model` holds the attention of its last forward pass:
    `channel_weights` [N, C] and, for CBAM, `spatial_mask` [N, 1, H, W], part of the autograd
    graph when gradients are on. Forward hooks on the gates put them there; on exit (also on an
    exception) the hooks are removed and the attributes deleted. Yields {name: module}.
    """
    modules = attention_modules(model)
    recorded: list[tuple[nn.Module, str]] = []
    handles = []

    def keep(module: nn.Module, attribute: str):
        def hook(gate, inputs, output):
            setattr(module, attribute, output.flatten(1) if attribute == "channel_weights" else output)
        return hook

    try:
        for module in modules.values():
            for kind, gate in _gates(module).items():
                recorded.append((module, _ATTRIBUTES[kind]))
                handles.append(getattr(module, gate).register_forward_hook(keep(module, _ATTRIBUTES[kind])))
        yield modules
    finally:
        for handle in handles:
            handle.remove()
        for module, attribute in recorded:
            module.__dict__.pop(attribute, None)


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """The attention every attention module of `model` computes for `x`, from one forward pass in
    eval mode: {module name: {"channel": [N, C]}} for squeeze-excitation and
    {module name: {"channel": [N, C], "spatial": [N, 1, H, W]}} for CBAM, H × W being the
    module's feature map. A module that runs twice reports its last call. The model is left as
    it was: hooks removed, modes restored, nothing stored on it; ``requires_grad`` is not touched,
    since the pass runs without gradients (flipping it on every parameter would cost more than
    the hooks).
    """
    x = check_input(x)
    with preserved(model, freeze=False), recording(model) as modules:
        model(x)
        maps = {}
        for name, module in modules.items():
            kinds = _gates(module)
            if getattr(module, "channel_weights", None) is None:
                raise ValueError(f"model: the attention module {name!r} did not run in the forward pass")
            maps[name] = {kind: getattr(module, _ATTRIBUTES[kind]) for kind in kinds}
    return maps


class ResidualBlock(nn.Module):
    """conv-BN-ReLU → conv-BN → attention → + shortcut → ReLU (He et al., 2016).

    The attention module rescales the residual branch before the addition, where SE-ResNet
    (Hu et al., 2018, Fig. 3) and CBAM-ResNet (Woo et al., 2018, Fig. 3) put it. The shortcut is
    a strided 1×1 conv + BN when the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, attention: nn.Module | None = None):
        super().__init__()
        self.residual = nn.Sequential(*models.conv_bn_relu(in_channels, out_channels, stride),
                                      *models.conv_bn_relu(out_channels, out_channels)[:2])
        self.attention = attention if attention is not None else nn.Identity()
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.attention(self.residual(x)) + self.shortcut(x))


ATTENTION = ("se", "cbam")


class AttentionNet(nn.Module):
    """A small residual net with an attention module in each stage, for the shapes set.

    stem (3×3 conv-BN-ReLU of stride `stem_stride`) → one `ResidualBlock` per width, the first at
    the stem's resolution, each later one halving it → global average pooling → linear. A stem
    stride of 2 quarters the cost of every later layer (and puts the masks on a grid half as fine). With ``attention=None`` the blocks
    have no attention (the baseline), with "se" a `SqueezeExcitation`, with "cbam" a `CBAM` of
    the given `reduction` (and `kernel_size`). Layers: ``features`` (stem, stage1, stage2, ...;
    the attention modules are ``features.stage<i>.attention``), ``pool``, ``fc``; ``features``
    feeds the pooling, so CAM and Grad-CAM read it. Train with `vizlib.models.train`.
    """

    def __init__(self, attention: str | None = None, *, widths=(16, 32, 64), reduction: int = 4,
                 kernel_size: int = 7, stem_stride: int = 1, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        if attention is not None and attention not in ATTENTION:
            raise ValueError(f"attention: expected None, 'se' or 'cbam', got {attention!r}")
        widths = tuple(widths)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths: expected a non-empty sequence of positive ints, got {widths!r}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride: expected 1 or 2, got {stem_stride!r}")
        self.attention = attention
        layers = OrderedDict(stem=nn.Sequential(*models.conv_bn_relu(in_channels, widths[0], stem_stride)))
        channels = widths[0]
        for i, width in enumerate(widths):
            module = {None: lambda: None, "se": lambda: SqueezeExcitation(width, reduction),
                      "cbam": lambda: CBAM(width, reduction, kernel_size)}[attention]()
            layers[f"stage{i + 1}"] = ResidualBlock(channels, width, stride=1 if i == 0 else 2, attention=module)
            channels = width
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


# ----------------------------------------------------------------------------
# Class attention: a helper net's class map as a mask on the image
# ----------------------------------------------------------------------------

CLASS_MAPS = {"cam": cam.cam, "grad_cam": cam.grad_cam, "grad_cam_plus_plus": cam.grad_cam_plus_plus,
              "layer_cam": cam.layer_cam}


def class_attention_mask(model: nn.Module, x: torch.Tensor, target=None, *, layer, method: str = "grad_cam",
                         threshold: float = 0.5, batch_size: int | None = 256) -> torch.Tensor:
    """Class attention as a mask (survey §2.1.5, item 3; Li et al., 2018; Fukui et al., 2019):

        M = 1[ L̂^c ≥ θ ],   L̂^c = the class map of `model` for class c at `layer`, upsampled
                               bilinearly to the input and min-max scaled to [0, 1] per image.

    `method` picks the map from `CLASS_MAPS` (Grad-CAM by default); `target` None means the
    class `model` predicts. Returns a bool mask [N, 1, H, W]; an image whose map is constant has
    no evidence anywhere and gets an empty mask. Images are processed `batch_size` at a time.
    """
    x = check_input(x)
    if method not in CLASS_MAPS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, CLASS_MAPS))}, got {method!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold: expected a fraction of the map's range in (0, 1], got {threshold!r}")
    if isinstance(target, torch.Tensor) and target.numel() not in (1, len(x)):
        raise ValueError(f"target: expected {len(x)} class indices (one per image), got {target.numel()}")
    masks = []
    for chunk in batches(len(x), batch_size):
        chunk_target = target[chunk] if isinstance(target, torch.Tensor) and target.numel() > 1 else target
        saliency = CLASS_MAPS[method](model, x[chunk], chunk_target, layer=layer, normalize=True)
        masks.append(saliency >= threshold)
    return torch.cat(masks)


class ClassAttentionNet(nn.Module):
    """`classifier` applied to the image masked by `helper`'s class attention: the pixels where
    `class_attention_mask` is False are set to `fill` (0 is black for the shapes set, whose
    pixels lie in [0, 1]; it is mid-grey for EfficientNet-Lite0's normalised input). The helper's
    map is computed for the class the helper predicts, so training and test see the same masks.
    """

    def __init__(self, helper: nn.Module, classifier: nn.Module, *, layer, method: str = "grad_cam",
                 threshold: float = 0.5, fill: float = 0.0):
        super().__init__()
        self.helper, self.classifier = helper, classifier
        self.layer, self.method, self.threshold, self.fill = layer, method, threshold, fill

    def masked(self, x: torch.Tensor, batch_size: int | None = 256) -> torch.Tensor:
        """`x` with the pixels outside the helper's class attention set to `fill`."""
        mask = class_attention_mask(self.helper, x, layer=self.layer, method=self.method, threshold=self.threshold,
                                    batch_size=batch_size)
        return torch.where(mask, x, torch.as_tensor(self.fill, dtype=x.dtype, device=x.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.masked(x))


def train_with_class_attention(helper: nn.Module, classifier: nn.Module, dataset, *, layer, method: str = "grad_cam",
                               threshold: float = 0.5, fill: float = 0.0, **settings) -> ClassAttentionNet:
    """Train `classifier` on `dataset`'s images masked by the class attention of the trained
    `helper` (see `ClassAttentionNet`), with `vizlib.models.train` and its `settings`.

    The masked images enter the training cache key, so a different helper, map or threshold
    trains anew. Returns the helper and the trained classifier as one `ClassAttentionNet`, in
    eval mode.
    """
    images, labels = models._images_and_labels(dataset)
    attended = ClassAttentionNet(helper, classifier, layer=layer, method=method, threshold=threshold, fill=fill)
    device = next((parameter.device for parameter in helper.parameters()), images.device)
    with preserved(helper):
        masked = attended.masked(images.to(device)).to(images.device)
    models.train(classifier, (masked, labels), **settings)
    return attended.eval()
