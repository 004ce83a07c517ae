"""Evaluating saliency maps (survey §3.1): against ground truth, against the model, and by
randomization.

Ground truth. Weakly supervised localization (Zhou et al., 2016; survey §3.1.2 (1)): threshold a
map, box its largest connected region, and count a hit when the box overlaps the true box with
IoU > 0.5. Boxes are (x0, y0, x1, y1) with x1 and y1 exclusive, as `vizlib.data.shapes` gives them.
The pointing game (Zhang et al., 2018; §3.1.2 (2)), relevance mass and relevance rank (Arras et
al., 2022) compare a map with an object mask [N, H, W].

Faithfulness to the model. Deletion and insertion (Petsiuk et al., 2018), sensitivity-n (Ancona et
al., 2018), infidelity and max-sensitivity (Yeh et al., 2019) and the keep-top test of the survey's
§5.1 (4) perturb the input and watch the score; the perturbed images are made chunk by chunk and
forwarded `batch_size` at a time (`mechanics.scores_in_batches`), so memory stays bounded.

Randomization (Adebayo et al., 2018; §3.1.2 (3)): `model_randomization` re-initializes layers of a
copy of the model, `data_randomization` trains a net on permuted labels; a map that stays the same
does not explain the model.

Maps are [N, 1, H, W] or [N, C, H, W]; the channels of a map are reduced by their sum, so a
pixel's relevance is the sum of its colour channels' relevances. `leaderboard` runs the book's
methods (`vizlib.registry`) through any of these metrics.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.ndimage
import scipy.stats
import torch
from torch import nn

from .mechanics import batches, check_input, check_target, observed, preserved, scores_in_batches

__all__ = [
    "localize",
    "box_iou",
    "localization_accuracy",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "instance_peaks",
    "multiple_objects",
    "class_mean",
    "Curve",
    "deletion",
    "insertion",
    "keep_top",
    "sensitivity_n",
    "infidelity",
    "max_sensitivity",
    "noise_perturbation",
    "Randomization",
    "model_randomization",
    "data_randomization",
    "map_similarities",
    "leaderboard",
    "to_markdown",
]


def localize(saliency: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """The bounding box of the largest connected region where saliency > threshold × its max.

    `saliency`: one map [H, W] or a batch [N, H, W] / [N, 1, H, W]. Returns LongTensor [4] or
    [N, 4] of (x0, y0, x1, y1), x1 and y1 exclusive. Regions are 8-connected. A map with no
    positive value has no region and gets the empty box (0, 0, 0, 0).
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold: expected a fraction of the maximum in [0, 1), got {threshold!r}")
    maps = _as_maps(saliency)
    boxes = torch.tensor(np.array([_largest_region_box(m, threshold) for m in maps], dtype=np.int64).reshape(-1, 4))
    return boxes[0] if saliency.dim() == 2 else boxes


def _as_maps(saliency: torch.Tensor) -> np.ndarray:
    if not isinstance(saliency, torch.Tensor):
        raise TypeError(f"saliency: expected a torch.Tensor, got {type(saliency).__name__}")
    if saliency.dim() == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.dim() == 2:
        saliency = saliency[None]
    if saliency.dim() != 3:
        raise ValueError(f"saliency: expected [H, W], [N, H, W] or [N, 1, H, W], got shape {tuple(saliency.shape)}")
    return saliency.detach().cpu().double().numpy()


def _largest_region_box(saliency: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    peak = saliency.max()
    if not peak > 0:
        return 0, 0, 0, 0
    regions, count = scipy.ndimage.label(saliency > threshold * peak, structure=np.ones((3, 3)))
    largest = 1 + np.argmax(np.bincount(regions.ravel(), minlength=count + 1)[1:])
    rows, cols = np.nonzero(regions == largest)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def box_iou(boxes: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Intersection over union of corresponding boxes [N, 4] (or [4]), (x0, y0, x1, y1) exclusive; [N]."""
    boxes, other = torch.as_tensor(boxes).reshape(-1, 4).double(), torch.as_tensor(other).reshape(-1, 4).double()
    if len(boxes) != len(other):
        raise ValueError(f"boxes: expected as many boxes as other, got {len(boxes)} and {len(other)}")

    def area(b):
        return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)

    corner_low, corner_high = torch.maximum(boxes[:, :2], other[:, :2]), torch.minimum(boxes[:, 2:], other[:, 2:])
    intersection = (corner_high - corner_low).clamp(min=0).prod(dim=1)
    union = area(boxes) + area(other) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), 0)


def localization_accuracy(saliency: torch.Tensor, boxes: torch.Tensor, *, threshold: float = 0.2,
                          min_iou: float = 0.5) -> float:
    """Fraction of maps whose `localize` box has IoU > `min_iou` with the true box (Zhou et al., 2016)."""
    return (box_iou(localize(saliency, threshold), boxes) > min_iou).double().mean().item()


# --- maps and masks -------------------------------------------------------------------------------

def _pixel_maps(saliency, name: str = "saliency") -> torch.Tensor:
    """`saliency` [N, 1, H, W], [N, C, H, W] or [N, H, W] as one value per pixel [N, H, W]: the sum of
    the channels."""
    if hasattr(saliency, "map") and not isinstance(saliency, torch.Tensor):
        saliency = saliency.map
    if not isinstance(saliency, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [N, C, H, W], got {type(saliency).__name__}")
    if saliency.dim() == 4:
        saliency = saliency.sum(dim=1)
    if saliency.dim() != 3:
        raise ValueError(f"{name}: expected [N, 1, H, W], [N, C, H, W] or [N, H, W], got shape "
                         f"{tuple(saliency.shape)}")
    if not torch.isfinite(saliency).all():
        raise ValueError(f"{name}: contains NaN or inf values")
    return saliency.detach().float()


def _check_masks(masks, maps: torch.Tensor, name: str = "masks") -> torch.Tensor:
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name}: expected a bool tensor [N, H, W], got {type(masks).__name__}")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if tuple(masks.shape) != tuple(maps.shape):
        raise ValueError(f"{name}: expected one mask per map of the maps' size {tuple(maps.shape)}, got shape "
                         f"{tuple(masks.shape)}")
    masks = masks.to(device=maps.device, dtype=torch.bool)
    empty = ~masks.flatten(1).any(dim=1)
    if empty.any():
        raise ValueError(f"{name}: mask {int(empty.nonzero()[0])} is empty; every map needs an object to point at")
    return masks


def pointing_game(saliency, masks: torch.Tensor, *, tolerance: float = 15) -> torch.Tensor:
    """The pointing game (Zhang et al., 2018; survey §3.1.2 (2)): a hit when the map's maximum lies
    on the object or within `tolerance` pixels (Euclidean) of it. The first maximum in raster order
    is taken. Returns bool [N]; the accuracy is its mean, #hits / (#hits + #misses)."""
    maps = _pixel_maps(saliency)
    masks = _check_masks(masks, maps)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance: expected a number of pixels >= 0, got {tolerance!r}")
    peak = maps.flatten(1).argmax(dim=1).cpu()
    distance = torch.from_numpy(np.stack([scipy.ndimage.distance_transform_edt(~m) for m in masks.cpu().numpy()]))
    return (distance.flatten(1).gather(1, peak[:, None])[:, 0] <= tolerance).to(maps.device)


def relevance_mass(saliency, masks: torch.Tensor) -> torch.Tensor:
    """Relevance mass accuracy (Arras et al., 2022): the share of the positive relevance that lies
    inside the mask, Σ_{p ∈ mask} R⁺_p / Σ_p R⁺_p; 0 for a map without positive relevance. [N]."""
    maps = _pixel_maps(saliency)
    masks = _check_masks(masks, maps)
    positive = maps.clamp(min=0).flatten(1).double()
    total = positive.sum(dim=1)
    inside = (positive * masks.flatten(1)).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=1e-300), 0).float()


def relevance_rank(saliency, masks: torch.Tensor) -> torch.Tensor:
    """Relevance rank accuracy (Arras et al., 2022): with K = |mask|, the share of the K most relevant
    pixels that lie inside the mask. Ties are broken by raster position. [N]."""
    maps = _pixel_maps(saliency)
    masks = _check_masks(masks, maps)
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    size = masks.flatten(1).sum(dim=1, keepdim=True)
    return ((ranks < size) & masks.flatten(1)).sum(dim=1).float() / size[:, 0].float()


def instance_peaks(saliency, instance_masks: torch.Tensor) -> torch.Tensor:
    """Each instance's share of the map's peak: max of the map on the instance's pixels divided by
    the map's global maximum, [N, K] for instance masks [N, K, H, W] (`data.mosaics`); 0 for a map
    without a positive value."""
    maps = _pixel_maps(saliency)
    if not isinstance(instance_masks, torch.Tensor) or instance_masks.dim() != 4:
        raise ValueError("instance_masks: expected a bool tensor [N, K, H, W]")
    instances = instance_masks.shape[1]
    masks = _check_masks(instance_masks.transpose(0, 1).flatten(0, 1), maps.repeat(instances, 1, 1),
                         name="instance_masks")
    inside = torch.where(masks, maps.repeat(instances, 1, 1), -torch.inf).flatten(1).amax(dim=1)
    peak = maps.flatten(1).amax(dim=1).repeat(instances)
    share = torch.where(peak > 0, inside / peak.clamp(min=1e-30), 0).clamp(min=0)
    return share.reshape(instances, -1).T


def multiple_objects(saliency, instance_masks: torch.Tensor, *, ratio: float = 0.5) -> torch.Tensor:
    """The survey's multiple-objects criterion (§3.1.1) as a number: the share of a class's
    instances that the map finds, an instance counting as found when its peak reaches `ratio` of
    the map's maximum (`instance_peaks`). [N]; 1 when every instance is found."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio: expected a number in (0, 1], got {ratio!r}")
    return (instance_peaks(saliency, instance_masks) >= ratio).float().mean(dim=1)


def class_mean(values: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean over classes of each class's mean of `values` [N] (labels [N]), as Zhang et al.
    (2018) average the pointing game: every class counts the same, however many images it has."""
    values = torch.as_tensor(values).double().reshape(-1)
    labels = torch.as_tensor(labels, device=values.device).reshape(-1)
    if values.shape != labels.shape:
        raise ValueError(f"labels: expected one label per value ({values.numel()}), got {labels.numel()}")
    return torch.stack([values[labels == c].nanmean() for c in labels.unique()]).nanmean().item()


# --- scores along perturbation paths --------------------------------------------------------------

@dataclass(frozen=True)
class Curve:
    """A score curve of `deletion`, `insertion` or `keep_top`.

    fractions: the share of pixels removed (inserted, kept) [S]; scores: the target score at each
    fraction [N, S]; predictions: the predicted class at each fraction [N, S]; target: [N].
    auc: the area under the curve by the trapezoidal rule [N]; recovered: predictions == target.
    """

    fractions: torch.Tensor
    scores: torch.Tensor
    predictions: torch.Tensor
    target: torch.Tensor

    @property
    def auc(self) -> torch.Tensor:
        return torch.trapezoid(self.scores, self.fractions.to(self.scores), dim=-1)

    @property
    def recovered(self) -> torch.Tensor:
        return self.predictions == self.target[:, None]


class _Predictions:
    """Keeps the predicted class of every input a model scores: called as a forward hook."""

    def __init__(self):
        self.seen = []

    def __call__(self, module, inputs, outputs):
        self.seen.append(outputs.argmax(dim=-1))


def _scores_and_predictions(model, n: int, make_batch, target, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """`scores_in_batches` and the predicted class of each input. An nn.Module is observed
    (`mechanics.observed`), so its fast inference copy still scores; a black box is wrapped."""
    predictions = _Predictions()
    if isinstance(model, nn.Module):
        with observed(model, predictions):
            scores = scores_in_batches(model, n, make_batch, target, **options)
    else:
        def recorded(inputs):
            outputs = model(inputs)
            predictions(model, (inputs,), outputs)
            return outputs

        scores = scores_in_batches(recorded, n, make_batch, target, **options)
    return scores, torch.cat(predictions.seen)


@torch.no_grad()
def _logits_and_target(model, x: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
    with preserved(model):
        logits = model(x)
    return logits, check_target(target, logits)


def _tie_ranks(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, how many pixels of its map are strictly more salient (low) and at least as
    salient (high): tied pixels share the ranks low..high. [N, P] each."""
    flat = -maps.flatten(1).contiguous()
    ordered = flat.sort(dim=1).values
    return (torch.searchsorted(ordered, flat, right=False).float(),
            torch.searchsorted(ordered, flat, right=True).float())


def _check_fractions(fractions) -> torch.Tensor:
    fractions = torch.as_tensor(fractions, dtype=torch.float32).reshape(-1)
    if fractions.numel() == 0 or not torch.isfinite(fractions).all() or (fractions < 0).any() or (fractions > 1).any():
        raise ValueError(f"fractions: expected fractions in [0, 1], got {fractions.tolist()}")
    return fractions


def _path(model, x, saliency, target, fractions, baseline, *, insert: bool, softmax: bool, batch_size,
          progress: bool, description: str) -> Curve:
    """Scores of x with the most salient fraction f of its pixels replaced by `baseline` (or, with
    `insert`, of the baseline with those pixels taken from x). Tied pixels are replaced in part:
    at f·P removed pixels a tie group spanning ranks low..high is blended by
    clamp((f·P − low) / (high − low), 0, 1), the mean over all orders of the ties for a linear model."""
    from .perturbation import fill

    x = check_input(x)
    maps = _pixel_maps(saliency)
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"saliency: expected one map of the input's size {tuple(x.shape[2:])} per image, got "
                         f"{tuple(saliency.shape)}")
    fractions = _check_fractions(fractions).to(x.device)
    _, target = _logits_and_target(model, x, target)
    low, high = (rank.to(x.device) for rank in _tie_ranks(maps.to(x.device)))
    filled = fill(x, baseline)
    start, end = (filled, x) if insert else (x, filled)
    steps, pixels = len(fractions), low.shape[1]

    def make_batch(chunk: slice) -> torch.Tensor:
        index = torch.arange(chunk.start, chunk.stop, device=x.device)
        image, step = index // steps, index % steps
        removed = fractions[step, None] * pixels
        weights = ((removed - low[image]) / (high[image] - low[image])).clamp(0, 1).view(-1, 1, *x.shape[2:])
        return start[image] + weights * (end[image] - start[image])

    scores, predictions = _scores_and_predictions(model, len(x) * steps, make_batch, target.repeat_interleave(steps),
                                                  batch_size=batch_size, softmax=softmax, progress=progress,
                                                  description=description)
    return Curve(fractions.cpu(), scores.view(len(x), steps), predictions.view(len(x), steps), target)


def _fractions(steps: int) -> torch.Tensor:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    return torch.linspace(0, 1, steps + 1)


def deletion(model, x: torch.Tensor, saliency, target=None, *, steps: int = 50, baseline=0.0, softmax: bool = True,
             batch_size: int | str | None = "auto", progress: bool = False) -> Curve:
    """Deletion (Petsiuk et al., 2018): the target score as the most salient pixels are replaced by
    `baseline` (a number, a tensor or a fill of `perturbation.fill`), in `steps` equal steps from none
    to all. A faithful map makes the score fall fast: a low `auc` is good. Ties: see `insertion`."""
    return _path(model, x, saliency, target, _fractions(steps), baseline, insert=False, softmax=softmax,
                 batch_size=batch_size, progress=progress, description="deletion")


def insertion(model, x: torch.Tensor, saliency, target=None, *, steps: int = 50, baseline="blur",
              softmax: bool = True, batch_size: int | str | None = "auto", progress: bool = False) -> Curve:
    """Insertion (Petsiuk et al., 2018): the target score as the most salient pixels of x are pasted
    into the `baseline` image (by default x blurred, σ = 10 px); a high `auc` is good.

    Pixels of equal saliency are inserted (deleted) together, blended in proportion, so a map with
    ties gives one curve whatever order the ties would be broken in; a constant map gives the
    straight path between the baseline and x."""
    return _path(model, x, saliency, target, _fractions(steps), baseline, insert=True, softmax=softmax,
                 batch_size=batch_size, progress=progress, description="insertion")


def keep_top(model, x: torch.Tensor, saliency, target=None, *, fractions=(0.01, 0.05, 0.1, 0.2, 0.5),
             baseline=0.0, softmax: bool = True, batch_size: int | str | None = "auto") -> Curve:
    """The completeness test of the survey's §5.1 (4): keep only the top `fractions` of the evidence
    (the rest replaced by `baseline`) and ask whether the prediction is recovered from the explanation
    alone. `Curve.recovered` [N, S] says whether the kept pixels alone are classified as `target`."""
    return _path(model, x, saliency, target, fractions, baseline, insert=True, softmax=softmax,
                 batch_size=batch_size, progress=False, description="keep top")


def _check_count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def sensitivity_n(model, x: torch.Tensor, saliency, target=None, *, n: int, samples: int = 100, baseline=0.0,
                  seed: int = 0, softmax: bool = False, batch_size: int | str | None = "auto") -> torch.Tensor:
    """Sensitivity-n (Ancona et al., 2018): Pearson's correlation, over `samples` random sets S of `n`
    pixels, between Σ_{p ∈ S} R_p and the drop f_c(x) − f_c(x with S set to `baseline`). 1 for a
    linear model explained by its contributions w ⊙ (x − baseline). [N]."""
    from .perturbation import fill

    x = check_input(x)
    maps = _pixel_maps(saliency).to(x.device)
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"saliency: expected one map of the input's size {tuple(x.shape[2:])} per image")
    pixels = maps[0].numel()
    _check_count(n, "n")
    if n > pixels:
        raise ValueError(f"n: expected at most the {pixels} pixels of the image, got {n}")
    _check_count(samples, "samples", 2)
    logits, target = _logits_and_target(model, x, target)
    full = logits.softmax(-1) if softmax else logits
    full = full.gather(1, target[:, None])[:, 0]
    generator = torch.Generator().manual_seed(seed)
    subsets = torch.stack([torch.rand(samples, pixels, generator=generator).topk(n, dim=1).indices
                           for _ in range(len(x))]).to(x.device)                      # [N, samples, n]
    sums = maps.flatten(1).gather(1, subsets.flatten(1)).view(len(x), samples, n).sum(-1).double()
    filled = fill(x, baseline)

    def make_batch(chunk: slice) -> torch.Tensor:
        index = torch.arange(chunk.start, chunk.stop, device=x.device)
        image = index // samples
        removed = torch.zeros(len(index), pixels, dtype=torch.bool, device=x.device)
        removed.scatter_(1, subsets.view(-1, n)[index], True)
        return torch.where(removed.view(-1, 1, *x.shape[2:]), filled[image], x[image])

    scores = scores_in_batches(model, len(x) * samples, make_batch, target.repeat_interleave(samples),
                               batch_size=batch_size, softmax=softmax)
    drops = (full[:, None] - scores.view(len(x), samples)).double()
    a, b = sums - sums.mean(1, keepdim=True), drops - drops.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).float()


# --- infidelity and max-sensitivity (Yeh et al., 2019) --------------------------------------------

class _Seeded:
    """Run a block under torch's global generator seeded with `seed` (None: as it is), restoring it."""

    def __init__(self, seed, device):
        self.seed, self.devices = seed, [device] if device.type == "cuda" else []

    def __enter__(self):
        if self.seed is None:
            return
        self.fork = torch.random.fork_rng(devices=self.devices)
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self.seed is not None:
            self.fork.__exit__(*exc)


def _samples_per_chunk(n_images: int, n_samples: int, batch_size) -> int:
    """Captum's `max_examples_per_batch` rule: batch_size // N copies of each image per chunk."""
    return n_samples if batch_size is None else min(max(batch_size // n_images, 1), n_samples)


def _chunks(n_images: int, n_samples: int, batch_size):
    per_chunk, done = _samples_per_chunk(n_images, n_samples, batch_size), 0
    while done < n_samples:
        yield min(per_chunk, n_samples - done)
        done += per_chunk


def noise_perturbation(std: float) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Yeh et al.'s noisy baseline: I ~ N(0, std²) per input value; returns (I, x − I), Captum's
    convention for `infidelity`'s `perturb`."""
    if not std > 0:
        raise ValueError(f"std: expected a positive number, got {std!r}")

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(inputs.shape, dtype=inputs.dtype).to(inputs.device) * std
        return noise, inputs - noise

    return perturb


def infidelity(model, x: torch.Tensor, saliency, target=None, *, perturb, n_perturb_samples: int = 10,
               normalize: bool = False, batch_size: int | None = None, seed: int | None = 0) -> torch.Tensor:
    """Infidelity (Yeh et al., 2019): E_I[(Iᵀ R − (f_c(x) − f_c(x − I)))²] over perturbations I.

    ``perturb(inputs)`` returns (I, inputs − I) for a batch of copies of x (Captum's convention);
    `n_perturb_samples` perturbations per image are drawn, `batch_size` // N copies per chunk
    (Captum's `max_examples_per_batch`), under torch's global generator seeded with `seed`. A map
    [N, 1, H, W] counts for every channel. With `normalize`, R is first scaled by the β that
    minimizes the error, so the score ignores the map's scale. f_c is the raw output. [N]; equal to
    `captum.metrics.infidelity` with the same `perturb`.
    """
    x = check_input(x)
    attribution = _attribution_like(saliency, x)
    _check_count(n_perturb_samples, "n_perturb_samples")
    logits, target = _logits_and_target(model, x, target)
    full = logits.gather(1, target[:, None])[:, 0]
    n = len(x)
    sums = [torch.zeros(n, device=x.device) for _ in range(3)]
    with _Seeded(seed, x.device), torch.no_grad():
        for k in _chunks(n, n_perturb_samples, batch_size):
            perturbation, perturbed = perturb(x.repeat_interleave(k, dim=0))
            if perturbation.shape != perturbed.shape or perturbed.shape[1:] != x.shape[1:]:
                raise ValueError("perturb: expected (perturbation, perturbed input), both shaped like the inputs")
            scores = scores_in_batches(model, n * k, lambda chunk: perturbed[chunk], target.repeat_interleave(k),
                                       batch_size=None)
            drops = (full.repeat_interleave(k) - scores).view(n, k)
            dots = (attribution.repeat_interleave(k, dim=0) * perturbation).flatten(1).sum(1).view(n, k)
            if normalize:
                sums[0] += dots.pow(2).sum(-1)
                sums[1] += (dots * drops).sum(-1)
                sums[2] += drops.pow(2).sum(-1)
            else:
                sums[0] += (dots - drops).pow(2).sum(-1)
    if normalize:
        beta = sums[1] / torch.where(sums[0] != 0, sums[0], torch.ones_like(sums[0]))
        return (beta * beta * sums[0] - 2 * beta * sums[1] + sums[2]) / n_perturb_samples
    return sums[0] / n_perturb_samples


def _attribution_like(saliency, x: torch.Tensor) -> torch.Tensor:
    if hasattr(saliency, "map") and not isinstance(saliency, torch.Tensor):
        saliency = saliency.map
    if not isinstance(saliency, torch.Tensor) or saliency.dim() != 4 or saliency.shape[0] != x.shape[0] \
            or saliency.shape[2:] != x.shape[2:] or saliency.shape[1] not in (1, x.shape[1]):
        shape = tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency).__name__
        raise ValueError(f"saliency: expected [N, 1, H, W] or [N, C, H, W] matching x {tuple(x.shape)}, got {shape}")
    return saliency.detach().to(x).expand_as(x)


def _uniform_perturbation(inputs: torch.Tensor, radius: float) -> torch.Tensor:
    """Captum's default for `sensitivity_max`: x + U(−radius, radius) per value, drawn on the CPU."""
    return inputs + torch.FloatTensor(inputs.size()).uniform_(-radius, radius).to(inputs.device)


def _explanation(explain, model, x, target) -> torch.Tensor:
    result = explain(model, x, target)
    return (result.map if hasattr(result, "map") and not isinstance(result, torch.Tensor) else result).detach()


def max_sensitivity(explain: Callable, model, x: torch.Tensor, target=None, *, perturb=None, radius: float = 0.02,
                    n_perturb_samples: int = 10, norm="fro", batch_size: int | None = None,
                    seed: int | None = 0) -> torch.Tensor:
    """Max-sensitivity (Yeh et al., 2019): max over perturbed inputs y of ‖Φ(y) − Φ(x)‖ / ‖Φ(x)‖.

    ``explain(model, x, target)`` is the method (a ``functools.partial`` fixes its options); every
    perturbed copy is explained for the same `target` (by default the class predicted for x).
    ``perturb(inputs, radius)`` (or ``perturb(inputs)``) returns perturbed copies; the default adds
    uniform noise in [−radius, radius], as Captum's. The norm is ``torch.norm``'s `p` = `norm`; a zero
    map divides by 1. Chunks and seed as in `infidelity`. [N]; equal to
    `captum.metrics.sensitivity_max` with the same perturbations.
    """
    import inspect

    x = check_input(x)
    _check_count(n_perturb_samples, "n_perturb_samples")
    if not radius >= 0:
        raise ValueError(f"radius: expected a number >= 0, got {radius!r}")
    perturb = _uniform_perturbation if perturb is None else perturb
    with_radius = len(inspect.signature(perturb).parameters) > 1
    _, target = _logits_and_target(model, x, target)
    n = len(x)
    with _Seeded(seed, x.device):
        original = _explanation(explain, model, x, target).flatten(1)
        scale = torch.norm(original, p=norm, dim=1)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        result = None
        for k in _chunks(n, n_perturb_samples, batch_size):
            inputs = x.repeat_interleave(k, dim=0)
            perturbed = perturb(inputs, radius) if with_radius else perturb(inputs)
            maps = _explanation(explain, model, perturbed, target.repeat_interleave(k)).flatten(1)
            change = torch.norm(original.repeat_interleave(k, dim=0) - maps, p=norm, dim=1)
            worst = (change / scale.repeat_interleave(k)).view(n, k).max(dim=1).values
            result = worst if result is None else torch.maximum(result, worst)
    return result


# --- randomization (Adebayo et al., 2018) ---------------------------------------------------------

def map_similarities(maps, other) -> dict[str, torch.Tensor]:
    """Adebayo et al.'s four similarities of two batches of maps, image by image, each [N]:
    ``"spearman"`` of the signed maps (channels summed), ``"spearman_abs"`` and ``"ssim"`` of
    the importances |R| (`robustness.map_similarity`), and ``"hog"``: Pearson's correlation of the
    histograms of oriented gradients (8 × 8 cells) of the importances scaled to [0, 1]."""
    import skimage.feature

    from .robustness import map_similarity

    first, second = _pixel_maps(maps, "maps"), _pixel_maps(other, "other")
    if first.shape != second.shape:
        raise ValueError(f"other: expected maps of the same shape as maps, got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    a, b = first.flatten(1).double().cpu().numpy(), second.flatten(1).double().cpu().numpy()
    spearman = torch.tensor([scipy.stats.spearmanr(p, q).statistic if p.std() > 0 and q.std() > 0 else math.nan
                             for p, q in zip(a, b)])
    shared = map_similarity(first[:, None].abs(), second[:, None].abs())
    height, width = first.shape[1:]
    cell = (max(height // 8, 2), max(width // 8, 2))

    def hog(image):
        image = np.abs(image).reshape(height, width)
        return skimage.feature.hog(image / max(image.max(), 1e-300), pixels_per_cell=cell, cells_per_block=(1, 1))

    hogs = [(hog(p), hog(q)) for p, q in zip(a, b)]
    correlation = torch.tensor([np.corrcoef(p, q)[0, 1] if p.std() > 0 and q.std() > 0 else math.nan
                                for p, q in hogs])
    return {"spearman": spearman.float(), "spearman_abs": shared["spearman"].cpu(),
            "ssim": shared["ssim"].cpu(), "hog": correlation.float()}


@dataclass(frozen=True)
class Randomization:
    """What `model_randomization` and `data_randomization` return.

    steps: what was randomized at each step (layer names, top-down for "cascading"); original: the
    map of the unchanged model [N, ...]; maps: the map after each step [L, N, ...]; similarity:
    {"spearman", "spearman_abs", "ssim", "hog"} → [L, N] (see `map_similarities`); details: extra
    numbers (accuracies for `data_randomization`).
    """

    steps: tuple[str, ...]
    original: torch.Tensor
    maps: torch.Tensor
    similarity: dict[str, torch.Tensor]
    details: dict = field(default_factory=dict)


def _state(model: nn.Module) -> tuple:
    from .mechanics import hook_count

    tensors = {name: value.detach().clone() for name, value in model.state_dict(keep_vars=True).items()}
    flags = [(module.training, ) for module in model.modules()] + [(p.requires_grad,) for p in model.parameters()]
    return tensors, flags, hook_count(model)


def _check_unchanged(model: nn.Module, state: tuple, culprit: str) -> None:
    tensors, flags, hooks = _state(model)
    same = (tensors.keys() == state[0].keys()
            and all(torch.equal(tensors[k], state[0][k]) for k in tensors) and flags == state[1] and hooks == state[2])
    if not same:
        raise RuntimeError(f"{culprit} modified the model (parameters, buffers, modes or hooks); "
                           "the randomization tests need the original model unchanged")


def _reinitialize(module: nn.Module, name: str, seed: int) -> None:
    resettable = [m for m in module.modules() if hasattr(m, "reset_parameters")]
    if not resettable:
        raise ValueError(f"layers: {name!r} has no parameters to re-initialize")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in resettable:
            m.reset_parameters()


def _default_layers(model: nn.Module) -> list[str]:
    names = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return names[::-1]


def model_randomization(explain: Callable, model: nn.Module, x: torch.Tensor, target=None, *,
                        order: str = "cascading", layers=None, seed: int = 0) -> Randomization:
    """The model-parameter randomization test (Adebayo et al., 2018; survey §3.1.2 (3)).

    On a deep copy of `model`, `layers` (dotted names; by default every Conv2d and Linear) are
    re-initialized by their own `reset_parameters` (seed `seed` + step) from the top down:
    "cascading" keeps the earlier re-initializations, "independent" re-initializes one layer at a
    time. After each step the map of `target` (by default the class the original model predicts) is
    compared with the original one. A method whose map survives the destruction of the model does
    not explain it. The model passed in stays bit-identical; an `explain` that modifies it raises.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module to copy, got {type(model).__name__}")
    if order not in ("cascading", "independent"):
        raise ValueError(f"order: expected 'cascading' or 'independent', got {order!r}")
    x = check_input(x)
    names = _default_layers(model) if layers is None else [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("layers: expected at least one layer to randomize")
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            from .mechanics import resolve_layer
            resolve_layer(model, name)
    state = _state(model)
    _, target = _logits_and_target(model, x, target)
    original = _explanation(explain, model, x, target)
    _check_unchanged(model, state, "explain")
    randomized, maps = copy.deepcopy(model), []
    for step, name in enumerate(names):
        if order == "independent" and step:
            randomized = copy.deepcopy(model)
        _reinitialize(randomized.get_submodule(name), name, seed + step)
        maps.append(_explanation(explain, randomized, x, target))
    _check_unchanged(model, state, "model_randomization")
    return _randomization(names, original, maps)


def _randomization(names, original, maps, details=None) -> Randomization:
    similarity = [map_similarities(m, original) for m in maps]
    return Randomization(tuple(names), original, torch.stack(maps),
                         {key: torch.stack([s[key] for s in similarity]) for key in similarity[0]}, details or {})


def data_randomization(explain: Callable, make_model: Callable[[], nn.Module], dataset, x: torch.Tensor,
                       target=None, *, seed: int = 0, **train_options) -> Randomization:
    """The data randomization test (Adebayo et al., 2018; survey §3.1.2 (3)).

    Two nets from `make_model()` are trained with `models.train` (deterministic, cached): one on
    `dataset`, one on its labels permuted (by `seed`), which it can only memorize. Both explain `x`
    for `target` (by default the class the first net predicts). A method whose map is the same for
    both does not depend on what the net learned. `details` holds both nets' accuracy on `dataset`
    with its true labels and the permuted net's accuracy on the labels it was trained on.
    """
    from . import models
    from .data import ImageSet

    if not isinstance(dataset, ImageSet):
        raise TypeError(f"dataset: expected a vizlib.data.ImageSet, got {type(dataset).__name__}")
    x = check_input(x)
    permutation = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    permuted = ImageSet(images=dataset.images, labels=dataset.labels[permutation], classes=dataset.classes)
    trained = models.train(make_model().to(x.device), dataset, seed=seed, progress=False, **train_options)
    memorized = models.train(make_model().to(x.device), permuted, seed=seed, progress=False, **train_options)
    _, target = _logits_and_target(trained, x, target)
    details = {"accuracy, true labels": models.accuracy(trained, dataset),
               "accuracy of the permuted net, true labels": models.accuracy(memorized, dataset),
               "accuracy of the permuted net, permuted labels": models.accuracy(memorized, permuted)}
    return _randomization(["labels permuted"], _explanation(explain, trained, x, target),
                          [_explanation(explain, memorized, x, target)], details)


# --- the leaderboard ------------------------------------------------------------------------------

class _PassCounter:
    """Counts the images `model` forwards, and those whose output is backpropagated: an observer
    (`mechanics.observed`), so the perturbation methods keep their fast inference copy."""

    def __init__(self):
        self.forwards = self.backwards = 0

    def __call__(self, module, inputs, output):
        count = output.shape[0]
        self.forwards += count
        if output.requires_grad:
            output.register_hook(lambda grad: self._backward(count))

    def _backward(self, count):
        self.backwards += count


def _metric_pointing(ctx):
    return pointing_game(ctx["saliency"], ctx["masks"], tolerance=round(15 * ctx["x"].shape[-1] / 224)).float()


def _metric_localization(ctx):
    maps = _pixel_maps(ctx["saliency"]).clamp(min=0)
    return (box_iou(localize(maps), ctx["boxes"]) > 0.5).float()


METRICS: dict[str, Callable[[dict], torch.Tensor]] = {
    "pointing game": _metric_pointing,
    "relevance mass": lambda ctx: relevance_mass(ctx["saliency"], ctx["masks"]),
    "relevance rank": lambda ctx: relevance_rank(ctx["saliency"], ctx["masks"]),
    "multiple objects": lambda ctx: multiple_objects(ctx["saliency"], ctx["instance_masks"]),
    "localization": _metric_localization,
    "shortcut mass": lambda ctx: relevance_mass(ctx["saliency"], ctx["shortcut_masks"]),
    "deletion AUC": lambda ctx: deletion(ctx["model"], ctx["x"], ctx["saliency"], ctx["target"], steps=16,
                                         batch_size=ctx["batch_size"]).auc,
    "insertion AUC": lambda ctx: insertion(ctx["model"], ctx["x"], ctx["saliency"], ctx["target"], steps=16,
                                           batch_size=ctx["batch_size"]).auc,
    "infidelity": lambda ctx: infidelity(ctx["model"], ctx["x"], ctx["saliency"], ctx["target"],
                                         perturb=noise_perturbation(0.1), normalize=True,
                                         batch_size=ctx["batch_size"]),
    "max-sensitivity": lambda ctx: max_sensitivity(ctx["explain"], ctx["model"], ctx["x"], ctx["target"],
                                                   n_perturb_samples=3, batch_size=len(ctx["x"])),
}
"""The leaderboard's metrics with their fixed settings: the pointing game with Zhang et al.'s 15 px
scaled to the image (15 at 224 px), localization of the positive part, deletion (baseline 0) and
insertion (blur) in 16 steps of the softmax score, normalized infidelity with Gaussian noise of
σ = 0.1, max-sensitivity over 3 uniform perturbations of radius 0.02; "shortcut mass" is the
relevance mass on a data set's `shortcut_masks`; "multiple objects" the share of instances found
(half the map's peak) on `data.mosaics`."""


def to_markdown(frame, digits: int = 3) -> str:
    """A DataFrame of `leaderboard` (or any) as a Markdown table, floats to `digits` significant
    digits, the index as the first column (for files such as benchmarks/leaderboard.md)."""
    frame = frame.reset_index() if frame.index.name else frame

    def cell(value):
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def leaderboard(methods, data, metrics, *, model: nn.Module, setting: str, target=None,
                batch_size: int = 8, average: str = "images", options: dict | None = None, progress: bool = False):
    """Run the named `methods` of `vizlib.registry` over `data` and score each with `metrics`.

    `data` is a `vizlib.data.ImageSet` (its masks, boxes and shortcut masks feed the ground-truth
    metrics; the target is its label unless `target` is given) or an image batch [N, C, H, W]
    (the target is the predicted class). `metrics` are names of `METRICS`, or a dict {name:
    function(context) → [N]} where context holds model, x, saliency, target, explain, masks,
    boxes, shortcut_masks, instance_masks and batch_size. `setting` picks the registry's defaults
    ("lite0" or "shapes"); `options` maps a method's name to keyword arguments that replace some of
    those defaults (``{"occlusion": {"stride": 8}}``). Images go through each method `batch_size` at
    a time. Returns a pandas
    DataFrame indexed by method: its family and survey section, every metric's mean ("images": over
    the images; "classes": `class_mean` over the targets' classes, Zhang et al.'s protocol) and
    standard deviation over the images, and the cost per image: seconds, forward and backward
    passes (counted by a hook on `model`).
    """
    import pandas
    from tqdm.auto import tqdm

    from . import registry

    if isinstance(metrics, (list, tuple)):
        unknown = [name for name in metrics if name not in METRICS]
        if unknown:
            raise KeyError(f"metrics: unknown {unknown}; known: {', '.join(METRICS)}")
        metrics = {name: METRICS[name] for name in metrics}
    if average not in ("images", "classes"):
        raise ValueError(f"average: expected 'images' or 'classes', got {average!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    x = data.images if hasattr(data, "images") else data
    x = check_input(x).to(next(model.parameters()).device)
    labels = getattr(data, "labels", None)
    target = check_target(target if target is not None else labels, _logits_and_target(model, x, None)[0])
    truth = {name: getattr(data, name, None) for name in ("masks", "boxes", "shortcut_masks", "instance_masks")}
    methods, options = list(methods), dict(options or {})
    for name, overrides in options.items():
        if name not in methods:
            raise KeyError(f"options: {name!r} is not one of the methods {methods}")
        if not isinstance(overrides, dict):
            raise TypeError(f"options[{name!r}]: expected a dict of keyword arguments, got {type(overrides).__name__}")
    rows = []
    for name in tqdm(methods, disable=not progress, desc="leaderboard"):
        method = registry.method(name)

        def explain(net, inputs, classes, method=method, overrides=options.get(name, {})):
            return method(net, inputs, classes, setting=setting, **overrides)

        counter, start, maps = _PassCounter(), time.perf_counter(), []
        with observed(model, counter):
            for chunk in batches(len(x), batch_size):
                maps.append(_explanation(explain, model, x[chunk], target[chunk]))
        seconds = (time.perf_counter() - start) / len(x)
        saliency = torch.cat(maps)
        context = dict(model=model, x=x, saliency=saliency, target=target, explain=explain, batch_size=64, **truth)
        row = {"method": name, "family": method.family, "section": method.section}
        for metric, function in metrics.items():
            values = function(context).double()
            row[metric] = values.nanmean().item() if average == "images" else class_mean(values, target)
            row[f"{metric} sd"] = values.std().item() if len(values) > 1 else 0.0
        row.update({"s / image": seconds, "forwards / image": counter.forwards / len(x),
                    "backwards / image": counter.backwards / len(x)})
        rows.append(row)
    return pandas.DataFrame(rows).set_index("method")
