"""vizlib: from-scratch PyTorch implementations of CNN visualization methods.

The companion library of the book "Seeing inside CNNs". Import a family module and call a
method: ``from vizlib import models, data, viz``; or call any method by name through the registry:
``vizlib.explain(model, x, "grad_cam", target)``, and list them with ``vizlib.methods()``.
"""
from .mechanics import (activations, capture, check_input, check_target, device, observed, preserved,
                        resolve_layer, scores_in_batches, swapped)

__version__ = "0.1.0"

__all__ = [
    "explain",
    "methods",
    "activations",
    "capture",
    "check_input",
    "check_target",
    "device",
    "observed",
    "preserved",
    "resolve_layer",
    "scores_in_batches",
    "swapped",
]


def __getattr__(name: str):
    # The registry imports every family module (and, through vizlib.data, scikit-image); load it on
    # first use only, so that ``import vizlib`` stays as cheap as its mechanics.
    if name in ("explain", "methods"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'vizlib' has no attribute {name!r}")
