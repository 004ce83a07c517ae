"""Using explanations (survey §4): fixing a model with them, and detecting attacks with them.

Two applications of §4.2 ("diagnosing and optimizing networks") that need pieces of their own;
the chapter is ``book/10_applications.ipynb``.

- *Right for the right reasons* (Ross, Hughes & Doshi-Velez, 2017): an explanation becomes part of
  the training loss. `rrr_loss` penalizes the input gradient of the log-probabilities inside an
  annotated region the model should not use; `train_rrr` trains with it; `swap_watermarks` builds
  the test sets that tell whether a net reads the watermark of `data.shapes(..., shortcut=True)`.
- *Detecting adversarial examples from their saliency maps* (survey ref. [88], Gu & Tresp, 2019):
  `saliency_statistics` summarizes a map by a few numbers, and `detection_auc` fits a logistic
  regression on them to tell clean from attacked images and scores it on held-out images.

Weakly supervised localization (§4.3) and attention from explanations (§4.2, refs. [73]/[77])
reuse `vizlib.cam`, `vizlib.evaluation` and `vizlib.attention` as they are.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from . import models
from .data import ImageSet
from .mechanics import channels_last, check_input, check_target, preserved

__all__ = [
    "RRRLoss",
    "rrr_loss",
    "train_rrr",
    "swap_watermarks",
    "SALIENCY_STATISTICS",
    "saliency_statistics",
    "Detection",
    "detection_auc",
]


# --- right for the right reasons -----------------------------------------------------------------

class RRRLoss(NamedTuple):
    """The terms of `rrr_loss`: total = cross_entropy + weight · penalty (scalars, differentiable
    in the model's parameters)."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    penalty: torch.Tensor


def _check_annotation(masks, x: torch.Tensor, *, name: str = "masks") -> torch.Tensor:
    """The annotation A as a float tensor that broadcasts against `x` [N, C, H, W]."""
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor [N, H, W], [N, 1, H, W] or [N, C, H, W], "
                        f"got {type(masks).__name__}")
    n, channels, height, width = x.shape
    annotation = masks[:, None] if masks.dim() == 3 else masks
    if annotation.dim() != 4 or annotation.shape[0] != n or annotation.shape[1] not in (1, channels) \
            or tuple(annotation.shape[2:]) != (height, width):
        raise ValueError(f"{name}: expected one mask per image of the input's size, [{n}, {height}, {width}], "
                         f"[{n}, 1, {height}, {width}] or [{n}, {channels}, {height}, {width}], "
                         f"got shape {tuple(masks.shape)}")
    if annotation.is_complex():
        raise TypeError(f"{name}: expected a bool or real tensor, got {annotation.dtype}")
    annotation = annotation.to(device=x.device, dtype=x.dtype)
    if not torch.isfinite(annotation).all():
        raise ValueError(f"{name}: contains NaN or inf values")
    if (annotation < 0).any():
        raise ValueError(f"{name}: expected weights >= 0 (1 where the model should not look), got a negative value")
    return annotation


def _check_weight(weight) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight: expected a finite number >= 0, got {weight!r}")
    return float(weight)


def _check_labels(target, n: int) -> None:
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.dtype == torch.bool \
            or target.shape != (n,):
        shown = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target: expected an integer tensor of {n} class indices [N], got {shown}")


def rrr_loss(model: nn.Module, x: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, *,
             weight: float = 10.0) -> RRRLoss:
    """The "right for the right reasons" loss (Ross, Hughes & Doshi-Velez, 2017); survey §4.2.

        L = Σ_n CE(f(x_n), y_n) / N  +  λ Σ_n Σ_d ( A_nd · ∂/∂x_nd Σ_k log p̂_k(x_n) )² / N,

    with A the annotation `masks` (1 where the model should *not* look, 0 elsewhere; weights ≥ 0:
    [N, H, W] or [N, 1, H, W] broadcast over the colour channels, or [N, C, H, W]), p̂ the softmax
    of the logits and λ = `weight`. The input gradient of the summed log-probabilities is kept in
    the graph (create_graph), so the penalty trains the parameters by double backpropagation; it is
    computed even under ``torch.no_grad()``. The model runs in the mode it is in (train mode when
    training): the function adds no hooks and changes no flag. Both terms are batch means, so λ does
    not depend on the batch size. Ross et al.'s L2 term on the parameters is the optimizer's weight
    decay in `train_rrr`. Chapter: ``book/10_applications.ipynb``.
    """
    x = check_input(x)
    weight = _check_weight(weight)
    annotation = _check_annotation(masks, x)
    _check_labels(target, len(x))
    with torch.enable_grad():
        inputs = x.detach().requires_grad_()
        logits = model(inputs)
        target = check_target(target, logits)
        log_probabilities = F.log_softmax(logits, dim=1)
        (input_gradient,) = torch.autograd.grad(log_probabilities.sum(), inputs, create_graph=True)
        penalty = (annotation * input_gradient).square().sum() / len(x)
        cross_entropy = F.nll_loss(log_probabilities, target)
        return RRRLoss(cross_entropy + weight * penalty, cross_entropy, penalty)


def train_rrr(model: nn.Module, dataset: ImageSet, *, masks="shortcut_masks", weight: float = 10.0,
              epochs: int = 6, batch_size: int = 64, max_lr: float = 3e-3, weight_decay: float = 1e-4,
              seed: int = 0, reinitialize: bool = True, cache: bool = True, progress: bool = True) -> nn.Module:
    """Train `model` on `dataset` with `rrr_loss` (Ross et al., 2017; survey §4.2).

    The annotation is `masks`: the name of a mask attribute of the data set (by default
    ``"shortcut_masks"``, the watermark's pixels), or a tensor with one mask per image as
    `rrr_loss` takes it. The optimizer, schedule, initialization and caching are those of
    `models.train` (AdamW, OneCycle, parameters re-initialized and batches shuffled from `seed`,
    weights cached under `models.cache_dir()` keyed by the architecture, the data, the annotation
    and the settings); with ``weight=0`` it trains to the same weights as `models.train` with the
    same settings (the tests check it bit for bit on the CPU). ``reinitialize=False`` starts from
    the model's current weights instead (fine-tuning a trained net; the starting weights enter the
    cache key). Each step costs about three times a plain one (double backpropagation). Returns the
    model in eval mode. Chapter: ``book/10_applications.ipynb``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dataset, ImageSet):
        raise TypeError(f"dataset: expected a vizlib.data.ImageSet, got {type(dataset).__name__}")
    if isinstance(masks, str):
        annotation = getattr(dataset, masks, None)
        if not isinstance(annotation, torch.Tensor):
            raise ValueError(f"masks: the data set has no mask attribute {masks!r}; expected the name of one "
                             f"it holds, such as 'shortcut_masks' (data.shapes(..., shortcut=True)), or a tensor")
    else:
        annotation = masks
    _check_annotation(annotation, dataset.images)
    weight = _check_weight(weight)
    for name, value in {"epochs": epochs, "batch_size": batch_size}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    for name, value in {"max_lr": max_lr, "weight_decay": weight_decay}.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    for name, value in {"reinitialize": reinitialize, "cache": cache, "progress": progress}.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    device = next(model.parameters()).device
    with preserved(model), torch.no_grad():        # the number of classes, without touching the model
        num_classes = model(dataset.images[:1].to(device)).shape[-1]
    labels = dataset.labels
    if labels.is_floating_point() or (labels < 0).any() or (labels >= num_classes).any():
        raise ValueError(f"dataset: expected labels in [0, {num_classes}) for a model with {num_classes} outputs")
    settings = dict(weight=weight, epochs=epochs, batch_size=batch_size, max_lr=max_lr, weight_decay=weight_decay,
                    seed=seed)
    start = [] if reinitialize else list(model.state_dict().values())
    key = models.cache_key(dataset.images, labels, annotation, *start,
                           text="rrr" + repr(model) + repr(sorted(settings.items())))
    name = f"{type(model).__name__}-rrr"
    if cache and models.load_cached(model, name, key):
        return model.eval()
    from tqdm import tqdm

    order = torch.Generator().manual_seed(seed)
    if reinitialize:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models._reset_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=weight_decay)
    steps = epochs * -(-len(dataset) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps)
    model.train()
    with tqdm(total=steps, desc=f"training {name}", disable=not progress) as bar, channels_last(model):
        for _ in range(epochs):
            for index in torch.randperm(len(dataset), generator=order).split(batch_size):
                terms = rrr_loss(model, dataset.images[index].to(device), labels[index].to(device),
                                 annotation[index].to(device), weight=weight)
                optimizer.zero_grad(set_to_none=True)
                terms.total.backward()
                optimizer.step()
                schedule.step()
                if progress:
                    bar.set_postfix(cross_entropy=f"{terms.cross_entropy.item():.3f}",
                                    penalty=f"{terms.penalty.item():.2g}", refresh=False)
                bar.update()
    model.eval()
    if cache:
        models.save_cached(model, name, key)
    return model


def swap_watermarks(clean: ImageSet, marked: ImageSet, classes: torch.Tensor) -> ImageSet:
    """`clean`'s images with the watermark of class ``classes[n]`` painted on image n.

    `marked` is the same data drawn with ``shortcut=True`` (it gives each class's corner); `clean`
    the same or other images without the mark. With ``classes = (labels + 1) % 4`` every mark
    points to the wrong class: a net that reads the mark fails, a net that reads the shape does
    not. The result keeps `clean`'s labels, masks and boxes and records the new marks in
    `shortcut_masks`.
    """
    for name, value in {"clean": clean, "marked": marked}.items():
        if not isinstance(value, ImageSet):
            raise TypeError(f"{name}: expected a vizlib.data.ImageSet, got {type(value).__name__}")
    if marked.shortcut_masks is None:
        raise ValueError("marked: expected a data set with shortcut_masks (data.shapes(..., shortcut=True))")
    if marked.images.shape[1:] != clean.images.shape[1:]:
        raise ValueError(f"clean: expected images of the marked set's shape {tuple(marked.images.shape[1:])}, "
                         f"got {tuple(clean.images.shape[1:])}")
    count = len(marked.classes)
    missing = [c for c in range(count) if not (marked.labels == c).any()]
    if missing:
        raise ValueError(f"marked: holds no image of class {missing[0]}, so its watermark is unknown")
    if not isinstance(classes, torch.Tensor) or classes.shape != (len(clean),) or classes.is_floating_point() \
            or classes.dtype == torch.bool:
        raise ValueError(f"classes: expected an integer tensor of {len(clean)} class indices [N], got "
                         f"{tuple(classes.shape) if isinstance(classes, torch.Tensor) else type(classes).__name__}")
    if (classes < 0).any() or (classes >= count).any():
        raise ValueError(f"classes: expected indices in [0, {count}), got {classes.min().item()}..{classes.max().item()}")
    corners = torch.stack([marked.shortcut_masks[marked.labels == c][0] for c in range(count)])
    marks = corners[classes]
    white = torch.ones((), dtype=clean.images.dtype)
    return ImageSet(images=torch.where(marks[:, None], white, clean.images), labels=clean.labels,
                    classes=clean.classes, masks=clean.masks, boxes=clean.boxes, colors=clean.colors,
                    shortcut_masks=marks)


# --- detecting adversarial examples from their saliency --------------------------------------------

SALIENCY_STATISTICS = ("log mass", "entropy", "spread", "top-5% mass")
"""The columns of `saliency_statistics`."""


def saliency_statistics(saliency: torch.Tensor, *, top_fraction: float = 0.05) -> torch.Tensor:
    """A saliency map summarized by four numbers (survey §4.2, ref. [88]): [N, 4], the columns of
    `SALIENCY_STATISTICS`.

    With m_p = Σ_c |R_cp| the map's magnitude at pixel p and q_p = m_p / Σ m its share:

    - log mass: log Σ_p m_p, how strong the evidence is overall;
    - entropy: −Σ_p q_p log q_p / log P, in [0, 1] (1: spread evenly over the P pixels);
    - spread: √(Σ_p q_p ‖p − p̄‖²) / diagonal, the distance of the mass from its centroid p̄;
    - top-k mass: Σ of the largest ⌈`top_fraction` · P⌉ shares, how concentrated the map is.

    `saliency` is [N, C, H, W] or [N, H, W]; a map without any mass raises.
    """
    if not isinstance(saliency, torch.Tensor) or saliency.dim() not in (3, 4) or not saliency.is_floating_point():
        raise ValueError("saliency: expected a float tensor [N, C, H, W] or [N, H, W]")
    if isinstance(top_fraction, bool) or not isinstance(top_fraction, (int, float)) or not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction: expected a number in (0, 1], got {top_fraction!r}")
    magnitude = (saliency.abs().sum(dim=1) if saliency.dim() == 4 else saliency.abs()).detach().double()
    if not torch.isfinite(magnitude).all():
        raise ValueError("saliency: contains NaN or inf values")
    n, height, width = magnitude.shape
    if height * width < 2:
        raise ValueError(f"saliency: expected maps of at least 2 pixels, got {height}×{width}")
    mass = magnitude.flatten(1).sum(dim=1)
    if (mass == 0).any():
        raise ValueError(f"saliency: map {int((mass == 0).nonzero()[0])} is zero everywhere")
    share = magnitude.flatten(1) / mass[:, None]
    entropy = -torch.special.xlogy(share, share).sum(dim=1) / math.log(height * width)
    rows, columns = torch.meshgrid(torch.arange(height, dtype=share.dtype, device=share.device),
                                   torch.arange(width, dtype=share.dtype, device=share.device), indexing="ij")
    positions = torch.stack([rows.flatten(), columns.flatten()], dim=1)           # [P, 2]
    centroid = share @ positions                                                  # [N, 2]
    squared_distance = (positions[None] - centroid[:, None]).square().sum(dim=2)  # [N, P]
    spread = (share * squared_distance).sum(dim=1).sqrt() / math.hypot(height, width)
    k = max(1, math.ceil(top_fraction * height * width - 1e-9))   # 0.05 · 60 is 3.0000000000000004 in floats
    top_mass = share.topk(k, dim=1).values.sum(dim=1)
    return torch.stack([mass.log(), entropy, spread, top_mass], dim=1).float()


class Detection(NamedTuple):
    """What `detection_auc` returns: the fitted detector (a scikit-learn pipeline whose
    ``predict_proba(features)[:, 1]`` is the probability of "attacked"), its ROC AUC on the
    held-out images, and for those images its `scores` and the true `labels` (numpy arrays, the
    clean rows first; ``sklearn.metrics.roc_curve(labels, scores)`` draws the curve), and
    `test_index`, the held-out images' row numbers."""

    detector: object
    auc: float
    scores: object
    labels: object
    test_index: torch.Tensor


def detection_auc(clean: torch.Tensor, adversarial: torch.Tensor, *, test_fraction: float = 0.5,
                  seed: int = 0) -> Detection:
    """Fit a detector of adversarial examples on saliency statistics and score it on held-out
    images (survey §4.2, ref. [88]): a logistic regression on standardized features.

    `clean` and `adversarial` are features [N, F] (e.g. `saliency_statistics`) of the same N
    images before and after the attack, row by row. The images, not the rows, are split by `seed`:
    both versions of an image land on the same side, so the detector is never tested on the twin of
    an image it was trained on. Returns a `Detection`: the fitted pipeline, the ROC AUC
    (`sklearn.metrics.roc_auc_score`) on the held-out images (0.5 is chance, 1 perfect) and the
    held-out scores. Chapter: ``book/10_applications.ipynb``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for name, value in {"clean": clean, "adversarial": adversarial}.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or not value.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor of features [N, F]")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name}: contains NaN or inf values")
    if clean.shape != adversarial.shape:
        raise ValueError(f"adversarial: expected the clean features' shape {tuple(clean.shape)} (the same "
                         f"images, attacked), got {tuple(adversarial.shape)}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    n = len(clean)
    n_test = round(n * test_fraction)
    if not 2 <= n_test <= n - 2:
        raise ValueError(f"test_fraction: {test_fraction} of {n} images leaves fewer than 2 images on a side")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]

    def stacked(index):
        features = torch.cat([clean[index], adversarial[index]]).double().cpu().numpy()
        labels = torch.cat([torch.zeros(len(index)), torch.ones(len(index))]).numpy()
        return features, labels

    detector = make_pipeline(StandardScaler(), LogisticRegression())
    detector.fit(*stacked(train))
    features, labels = stacked(test)
    scores = detector.predict_proba(features)[:, 1]
    return Detection(detector, float(roc_auc_score(labels, scores)), scores, labels, test)
