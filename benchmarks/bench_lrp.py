"""Benchmark rows for the relevance chapter: vizlib's LRP and DeepLIFT against Captum on a VGG-style
net (conv/ReLU/max-pool, 64×64), and LRP on EfficientNet-Lite0 against one raw forward+backward pass.
Captum's LRP cannot run on Lite0 (no rule for ReLU6), so that row has the raw limit as reference."""
from __future__ import annotations

import warnings

import captum.attr as ca
import torch
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import nn

from timing import timings
from vizlib import lrp

TARGET = 282          # tiger cat


class VGGStyle(nn.Module):
    """conv/ReLU/max-pool stages, functional flatten (Captum's LRP has no rule for nn.Flatten)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        layers, channels = [], 3
        for width in (32, 64, 128):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                       nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(128 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def rows(model, image, repeats):
    warnings.filterwarnings("ignore", module="captum")
    vgg = VGGStyle().eval().to(image.device)
    small = torch.nn.functional.interpolate(image, size=64, mode="bilinear", align_corners=False)

    def captum_lrp():
        for module in vgg.modules():
            if next(module.children(), None) is None:
                module.rule = EpsilonRule(1e-6)
        return ca.LRP(vgg).attribute(small, target=3)

    def raw_forward_backward():
        inputs = image.clone().requires_grad_()
        model(inputs)[:, TARGET].sum().backward()

    cases = [
        ("lrp epsilon, VGG-style 64x64", lambda: lrp.lrp(vgg, small, 3, convention="captum"), captum_lrp),
        ("deeplift, VGG-style 64x64", lambda: lrp.deeplift(vgg, small, 3),
         lambda: ca.DeepLift(vgg).attribute(small, target=3)),
        ("lrp epsilon, Lite0 vs raw f+b", lambda: lrp.lrp(model, image, TARGET), raw_forward_backward),
        ("lrp eps+flat, Lite0 vs raw f+b", lambda: lrp.lrp(model, image, TARGET, composite="epsilon_plus_flat"),
         raw_forward_backward),
        ("deeplift, Lite0 vs raw f+b", lambda: lrp.deeplift(model, image, TARGET), raw_forward_backward),
    ]
    return [(name, timings(ours, repeats), timings(reference, repeats)) for name, ours, reference in cases]
