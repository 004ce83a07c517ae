"""vizlib: from-scratch PyTorch implementations of CNN visualization methods.

The companion library of the book "Seeing inside CNNs". Import a family module and call a
method: ``from vizlib import models, data, viz``.
"""
from .mechanics import (activations, capture, check_input, check_target, device, preserved, resolve_layer,
                        scores_in_batches, swapped)

__version__ = "0.1.0"

__all__ = [
    "activations",
    "capture",
    "check_input",
    "check_target",
    "device",
    "preserved",
    "resolve_layer",
    "scores_in_batches",
    "swapped",
]
