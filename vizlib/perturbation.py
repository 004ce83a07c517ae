"""Perturbation methods: change part of the input (the cause), watch the class score (the effect).

Survey §2.1.1. Occlusion, leave-one-out, RISE and prediction difference analysis treat the model as a
black box: `model` may be any callable mapping images [M, C, H, W] to scores [M, K], with no modules,
hooks or gradients. The perturbed copies are generated chunk by chunk and forwarded `batch_size`
at a time (`mechanics.scores_in_batches`), so memory stays bounded however many copies a method
needs; the default "auto" measures the model's cheapest batch size once per process.
Meaningful perturbation learns its mask by gradient descent, so it needs a differentiable model.
Chapter: book/01_perturbation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import BLACK, MID_GREY, gaussian_blur
from .mechanics import batches, check_input, check_target, preserved, resolve_batch_size, scores_in_batches

__all__ = [
    "FILLS",
    "fill",
    "gaussian_blur",
    "inpaint",
    "occlusion",
    "leave_one_out",
    "grid_segments",
    "superpixels",
    "rise",
    "prediction_difference",
    "blur_pyramid",
    "blur_by_mask",
    "meaningful_perturbation",
    "PERTURBATIONS",
    "LearnedMask",
    "rise_masks",
]

NAMED_VALUES = {"mid-grey": MID_GREY, "black": BLACK}   # normalised values with names (data.py)
FILLS = (*NAMED_VALUES, "mean", "blur", "noise", "inpaint")
BLUR_SIGMA = 10.0   # σ0 of Fong & Vedaldi (2017), in pixels of a 224×224 image


def fill(x: torch.Tensor, baseline, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """What replaces the removed pixels: an image shaped like `x`.

    `baseline` is a number, a tensor broadcastable to `x`, or one of
    "mid-grey" (0: pixel 127 under `data.preprocess`; the same as baseline=0),
    "black" (`data.BLACK` = -127/128: pixel 0),
    "mean" (each image's own per-channel mean colour, the survey's μ0 in Eq. (1); not 0),
    "blur" (the image under a Gaussian blur of σ0 = 10 px),
    "noise" (Gaussian noise with each image's per-channel mean and standard deviation, as in the
    survey's ref. [42]; drawn from `generator`).
    "inpaint" depends on which pixels are removed, so it has no single fill image: see `occlusion`.
    """
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(x), x.shape)
        except RuntimeError:
            raise ValueError(f"baseline: shape {tuple(baseline.shape)} does not broadcast to x's shape "
                             f"{tuple(x.shape)}") from None
    if baseline in NAMED_VALUES:
        return torch.full_like(x, NAMED_VALUES[baseline])
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if baseline == "blur":
        return gaussian_blur(x, BLUR_SIGMA)
    if baseline == "noise":
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x.mean(dim=(2, 3), keepdim=True) + x.std(dim=(2, 3), keepdim=True) * noise
    raise ValueError(f"baseline: expected a number, a tensor or one of {', '.join(map(repr, FILLS))}; "
                     f"got {baseline!r}")


def inpaint(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """`images` [B, C, H, W] with the pixels under `masks` [B, 1, H, W] (True = fill) replaced by
    biharmonic inpainting from their surroundings (scikit-image's `inpaint_biharmonic`)."""
    from skimage.restoration import inpaint_biharmonic

    filled = [inpaint_biharmonic(image.permute(1, 2, 0).cpu().double().numpy(), mask[0].cpu().numpy(),
                                 channel_axis=-1)
              for image, mask in zip(images, masks)]
    return torch.from_numpy(np.stack(filled)).permute(0, 3, 1, 2).to(images)


def _remover(x: torch.Tensor, baseline, seed: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """remove(which, masks): copies of the images x[which] whose pixels under `masks` [B, 1, H, W]
    (True = remove) are replaced by the fill that `baseline` names."""
    if isinstance(baseline, str) and baseline == "inpaint":
        return lambda which, masks: inpaint(x[which], masks)
    filler = fill(x, baseline, generator=torch.Generator().manual_seed(seed))
    return lambda which, masks: torch.where(masks, filler[which], x[which])


def _scores_and_target(model, x: torch.Tensor, target, *, softmax: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The unperturbed scores y^c = f^c(x) [N] (probabilities p^c with `softmax`) and the target
    classes c [N]."""
    with torch.no_grad(), preserved(model):
        logits = model(x)
    target = check_target(target, logits)
    scores = logits.softmax(dim=-1) if softmax else logits
    return scores.gather(1, target[:, None]).squeeze(1), target


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name}: expected values >= 1, got {value!r}")
    return pair


def occlusion(model, x: torch.Tensor, target=None, *, window=(16, 16), stride=8, baseline=0.0,
              batch_size: int | str | None = "auto", seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus, 2014); survey §2.1.1, item 1 (simple perturbation).

    A window of `window` = (h, w) pixels, covering all channels, slides over the image with
    `stride`; each placement k removes the window (fill: `baseline`, see `fill`; the default 0 is
    mid-grey) and records the drop of the logit  d_k = y^c(x) - y^c(x with window k removed).  Pixel u receives the mean drop of the
    windows that cover it:  R(u) = Σ_k d_k [u ∈ W_k] / Σ_k [u ∈ W_k].
    Windows start at 0, s, 2s, ... until one reaches the last row/column; the last one is cut off
    at the border when the stride does not divide the image evenly, so every pixel is covered.
    This is exactly Captum's `Occlusion` with sliding_window_shapes=(C, h, w), strides=(C, s, s).
    baseline="inpaint" fills each window by biharmonic inpainting from its surroundings, our
    offline stand-in for the generative fills of the survey's Fig. 7 (Captum has no equivalent).
    Returns the map shaped like `x` (the same value in every channel).
    """
    x = check_input(x)
    (h, w), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    height, width = x.shape[-2:]
    if h > height or w > width:
        raise ValueError(f"window: {h}×{w} is larger than the image, {height}×{width}")
    if (sh > h and h < height) or (sw > w and w < width):   # a window spanning the whole side moves never
        raise ValueError(f"stride: {sh}×{sw} is larger than the window {h}×{w}; pixels between windows "
                         "would never be occluded")
    original, target = _scores_and_target(model, x, target)
    rows, cols = math.ceil((height - h) / sh) + 1, math.ceil((width - w) / sw) + 1
    n, windows = x.shape[0], rows * cols
    remove = _remover(x, baseline, seed)
    ys, xs = torch.arange(height, device=x.device), torch.arange(width, device=x.device)

    def perturbed(chunk: slice) -> torch.Tensor:
        index = torch.arange(chunk.start, chunk.stop, device=x.device)
        top, left = (index % windows) // cols * sh, (index % windows) % cols * sw
        in_rows = (ys >= top[:, None]) & (ys < top[:, None] + h)
        in_cols = (xs >= left[:, None]) & (xs < left[:, None] + w)
        return remove(index // windows, (in_rows[:, :, None] & in_cols[:, None, :])[:, None])

    scores = scores_in_batches(model, n * windows, perturbed, target.repeat_interleave(windows),
                               batch_size=batch_size, progress=progress, description="occlusion")
    drops = (original.repeat_interleave(windows) - scores.to(x.device)).view(n, 1, rows, cols)
    # Σ_k d_k [u ∈ W_k] is a transposed convolution of the drops with a box; cropping it to the
    # image cuts off the windows that run past the border.
    box = torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)
    summed = F.conv_transpose2d(drops.to(x.dtype), box, stride=(sh, sw))[..., :height, :width]
    coverage = F.conv_transpose2d(torch.ones_like(drops[:1]), box, stride=(sh, sw))[..., :height, :width]
    return (summed / coverage).expand_as(x).contiguous()


def _check_segments(segments, x: torch.Tensor) -> torch.Tensor:
    """`segments` as a LongTensor [N, H, W] on x's device, one label map per image."""
    segments = torch.as_tensor(segments, device=x.device)
    if segments.numel() == 0:
        raise ValueError("segments: the segment map is empty")
    if segments.is_floating_point() or segments.dtype == torch.bool:
        raise TypeError(f"segments: expected integer labels, got {segments.dtype}")
    if segments.dim() == 2:
        segments = segments[None]
    n, height, width = x.shape[0], *x.shape[-2:]
    if segments.dim() != 3 or segments.shape[-2:] != (height, width) or segments.shape[0] not in (1, n):
        raise ValueError(f"segments: expected shape [{height}, {width}] or [{n}, {height}, {width}] to match x "
                         f"{tuple(x.shape)}, got {tuple(segments.shape)}")
    if segments.min() < 0:
        raise ValueError("segments: labels must be non-negative")
    return segments.long().expand(n, -1, -1)


def leave_one_out(model, x: torch.Tensor, target=None, *, segments, baseline=0.0,
                  batch_size: int | str | None = "auto",
                  seed: int = 0, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out over segments (Robnik-Šikonja & Kononenko, 2008, for features; Li et al., 2016,
    "representation erasure"; seed article 002 for images); survey §2.1.1, item 1.

    `segments` labels every pixel with a segment (an integer map [H, W] or [N, H, W]: a grid or
    superpixels). Each segment S is removed in turn (fill: `baseline`, see `fill`; the default 0 is
    mid-grey), and  d_S = y^c(x) - y^c(x with S removed)  is painted onto its pixels:
    R(u) = d_S for u ∈ S.
    This is Captum's `FeatureAblation` with feature_mask=segments.
    Returns the map shaped like `x` and the drops [N, S] per segment label (S = largest label + 1;
    labels absent from an image are not evaluated and score 0).
    """
    x = check_input(x)
    segments = _check_segments(segments, x)
    original, target = _scores_and_target(model, x, target)
    n, labels = x.shape[0], int(segments.max()) + 1
    present = torch.zeros(n, labels, dtype=torch.bool, device=x.device)
    present.scatter_(1, segments.flatten(1), True)
    which, label = present.nonzero(as_tuple=True)   # one (image, segment) pair per perturbed copy
    remove = _remover(x, baseline, seed)

    def perturbed(chunk: slice) -> torch.Tensor:
        return remove(which[chunk], (segments[which[chunk]] == label[chunk, None, None])[:, None])

    scores = scores_in_batches(model, len(which), perturbed, target[which], batch_size=batch_size,
                               progress=progress, description="leave-one-out")
    drops = torch.zeros(n, labels, dtype=x.dtype, device=x.device)
    drops[which, label] = (original[which] - scores.to(x.device)).to(x.dtype)
    attributions = drops.gather(1, segments.flatten(1)).view(n, 1, *x.shape[-2:])
    return attributions.expand_as(x).contiguous(), drops


def grid_segments(h: int, w: int, cells) -> torch.Tensor:
    """A label map [h, w] of a `cells` = rows × cols grid (an int means square), labels row by row.

    Cell sizes differ by at most one pixel when the grid does not divide the image evenly.
    """
    rows, cols = _pair(cells, "cells")
    if rows > h or cols > w:
        raise ValueError(f"cells: a {rows}×{cols} grid does not fit a {h}×{w} image")
    row_of = torch.arange(h) * rows // h
    col_of = torch.arange(w) * cols // w
    return row_of[:, None] * cols + col_of[None, :]


SUPERPIXEL_DEFAULTS = {
    "slic": {"n_segments": 50, "compactness": 10.0, "start_label": 0},
    # LIME's defaults for quickshift.
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "felzenszwalb": {"scale": 100, "sigma": 0.5, "min_size": 50},
}


def superpixels(image, method: str = "slic", **options) -> torch.Tensor:
    """Superpixels of one image as a label map [H, W] (labels 0..S-1), by scikit-image.

    `image` is H×W×3 in [0, 1] or [0, 255] (as `data.load_image` or `data.deprocess` give it), or a
    preprocessed tensor [1, 3, H, W] / [3, H, W]. `method` is "slic" (Achanta et al., 2012),
    "quickshift" (Vedaldi & Soatto, 2008) or "felzenszwalb" (Felzenszwalb & Huttenlocher, 2004);
    `options` override the keyword arguments of the scikit-image function.
    """
    from skimage import segmentation

    from .data import deprocess

    if method not in SUPERPIXEL_DEFAULTS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, SUPERPIXEL_DEFAULTS))}, got {method!r}")
    if isinstance(image, torch.Tensor):
        image = deprocess(image)
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected an H×W×3 picture, got shape {image.shape}")
    if image.max() > 1:
        image = image / 255
    segment = getattr(segmentation, method)
    labels = segment(image, **{**SUPERPIXEL_DEFAULTS[method], **options})
    return torch.from_numpy(segmentation.relabel_sequential(labels)[0] - labels.min()).long()


def rise_masks(n_masks: int, size: tuple[int, int], *, cell: int, p: float,
               generator: torch.Generator) -> Callable[[slice], torch.Tensor]:
    """RISE's random masks, made on demand: masks(slice) -> [B, 1, H, W] in [0, 1].

    Mask i is a `cell`×`cell` grid of independent Bernoulli(p) values, up-sampled bilinearly to
    (cell + 1)·⌈H/cell⌉ × (cell + 1)·⌈W/cell⌉ and cropped to H×W at a random shift in
    [0, ⌈H/cell⌉) × [0, ⌈W/cell⌉). The grids and shifts are drawn once, so the masks do not depend
    on how they are chunked.
    """
    height, width = size
    cell_h, cell_w = math.ceil(height / cell), math.ceil(width / cell)
    grids = (torch.rand(n_masks, 1, cell, cell, generator=generator) < p).float()
    shift_y = torch.randint(0, cell_h, (n_masks,), generator=generator)
    shift_x = torch.randint(0, cell_w, (n_masks,), generator=generator)

    def masks(chunk: slice) -> torch.Tensor:
        smooth = F.interpolate(grids[chunk], size=((cell + 1) * cell_h, (cell + 1) * cell_w), mode="bilinear",
                               align_corners=False)
        return torch.stack([mask[:, dy:dy + height, dx:dx + width]
                            for mask, dy, dx in zip(smooth, shift_y[chunk], shift_x[chunk])])

    return masks


def rise(model, x: torch.Tensor, target=None, *, n_masks: int = 1000, cell: int = 7, p: float = 0.5,
         seed: int = 0, batch_size: int | str | None = "auto", softmax: bool = False,
         progress: bool = False) -> torch.Tensor:
    """RISE (Petsiuk et al., 2018); survey §2.1.1, item 1, ref. [43] and Fig. 6.

    With random soft masks M_i (`rise_masks`) kept with probability p, the saliency is the
    score-weighted mean of the masks, a Monte-Carlo estimate of E[f^c(x ⊙ M) M(u)] / p:
        R(u) = 1 / (n_masks · p) · Σ_i f^c(x ⊙ M_i) M_i(u).
    Masked pixels become 0, which is mid-grey under `data.preprocess`. The paper weights by the class
    probability p^c: pass softmax=True; by default the model's raw scores (logits) y^c are used, as
    occlusion and leave-one-out do.
    Returns the saliency [N, 1, H, W]; the same masks are used for every image.
    """
    x = check_input(x)
    if not isinstance(n_masks, int) or n_masks < 1:
        raise ValueError(f"n_masks: expected a positive int, got {n_masks!r}")
    if not 0 < p < 1:
        raise ValueError(f"p: expected a probability in (0, 1), got {p!r}")
    _, target = _scores_and_target(model, x, target)
    n = x.shape[0]
    if not isinstance(cell, int) or not 1 <= cell <= min(x.shape[-2:]):
        raise ValueError(f"cell: expected an int between 1 and the image side, got {cell!r}")
    masks = rise_masks(n_masks, tuple(x.shape[-2:]), cell=cell, p=p,
                       generator=torch.Generator().manual_seed(seed))

    # Copy i holds mask i // N on image i % N, so a chunk of copies needs a contiguous run of masks.
    def masked(chunk: slice) -> torch.Tensor:
        index = torch.arange(chunk.start, chunk.stop)
        first, last = chunk.start // n, (chunk.stop - 1) // n
        return x[index % n] * masks(slice(first, last + 1))[index // n - first].to(x)

    batch_size = resolve_batch_size(batch_size, model, lambda: masked(slice(0, 1)))
    scores = scores_in_batches(model, n_masks * n, masked, target.repeat(n_masks), batch_size=batch_size,
                               softmax=softmax, progress=progress, description="RISE")
    weights = scores.view(n_masks, n).to(x)
    saliency = torch.zeros(n, 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
    for chunk in batches(n_masks, batch_size):
        saliency += torch.einsum("bn,bhw->nhw", weights[chunk], masks(chunk)[:, 0].to(x))[:, None]
    return saliency / (n_masks * p)


SAMPLINGS = ("conditional", "marginal")
_MAX_FIT_PATCHES = 20_000   # patches used to fit the Gaussian; more cost time and add little


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window starts 0, s, 2s, ..., plus a last one flush with the border, so every window lies
    inside the image and every pixel is covered."""
    starts = list(range(0, size - window + 1, stride))
    return starts if starts[-1] == size - window else [*starts, size - window]


def _patch_gaussian(reference: torch.Tensor, frame: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and covariance [D, D] (float64) of the (C·h·w)-vectors of all h×w patches of
    `reference`, taken at the smallest stride that keeps their number under _MAX_FIT_PATCHES."""
    rows, cols = (size - side + 1 for size, side in zip(reference.shape[-2:], frame))
    stride = max(1, math.ceil(math.sqrt(reference.shape[0] * rows * cols / _MAX_FIT_PATCHES)))
    vectors = F.unfold(reference.double(), kernel_size=frame, stride=stride).transpose(1, 2).flatten(0, 1)
    mean = vectors.mean(dim=0)
    centred = vectors - mean
    return mean, centred.T @ centred / max(len(vectors) - 1, 1)


def prediction_difference(model, x: torch.Tensor, target=None, *, window=10, padding: int = 4, stride=1,
                          samples: int = 10, sampling: str = "conditional", reference: torch.Tensor | None = None,
                          batch_size: int | str | None = "auto", seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Prediction difference analysis (Zintgraf et al., 2017); survey §2.1.1, item 1.

    A window x_w of `window` = (h, w) pixels (all channels) is removed by marginalising it out:
        p^c(x_\\w) = E[ p^c(x with x_w replaced by x̃_w) ],   x̃_w ~ p(x_w | frame),
    estimated with `samples` draws. The frame is the ring of `padding` pixels around the window
    (the image is padded by replicating its edge where the ring leaves it). p(x_w | frame) is a
    Gaussian fitted to all (h + 2·padding)×(w + 2·padding) patches of `reference` (default: x itself;
    the paper fits it on ImageNet): sampling="conditional" conditions it on the frame (the paper's
    conditional sampling), "marginal" ignores the frame (Robnik-Šikonja & Kononenko, 2008).
    The window's weight of evidence, in bits, is
        WE_w = log2 odds p^c(x) - log2 odds p^c(x_\\w),   odds(p) = p / (1 - p),
    positive where the window held evidence for c; pixel u receives the mean WE of the windows that
    cover it. Windows start at 0, s, 2s, ... with `stride`, plus one flush with the border. The paper
    uses 10×10 windows, padding 4, stride 1 and 10 samples; probabilities are kept within
    [1e-7, 1 - 1e-7] (the paper's Laplace correction serves the same purpose).
    Returns the map shaped like `x` (the same value in every channel).
    """
    x = check_input(x)
    (h, w), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    height, width = x.shape[-2:]
    if h > height or w > width:
        raise ValueError(f"window: {h}×{w} is larger than the image, {height}×{width}")
    if sh > h or sw > w:
        raise ValueError(f"stride: {sh}×{sw} is larger than the window {h}×{w}; pixels between windows "
                         "would never be removed")
    for name, value, minimum in (("padding", padding, 0), ("samples", samples, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling: expected one of {', '.join(map(repr, SAMPLINGS))}, got {sampling!r}")
    reference = x if reference is None else check_input(reference)
    if reference.shape[1] != x.shape[1]:
        raise ValueError(f"reference: expected {x.shape[1]} channels like x, got {reference.shape[1]}")

    frame = (h + 2 * padding, w + 2 * padding)
    mean, covariance = _patch_gaussian(reference.to(x.device), frame)
    covariance += 1e-4 * covariance.diagonal().mean() * torch.eye(len(mean), dtype=mean.dtype, device=mean.device)
    inner = torch.zeros(frame, dtype=torch.bool, device=x.device)
    inner[padding:padding + h, padding:padding + w] = True
    inner = inner.flatten().repeat(x.shape[1])              # the window's entries of a frame vector
    if sampling == "conditional":   # x̃_w | frame ~ N(μ_w + G (frame - μ_f), Σ_ww - G Σ_fw)
        gain = torch.linalg.solve(covariance[~inner][:, ~inner], covariance[~inner][:, inner]).T
        conditional = covariance[inner][:, inner] - gain @ covariance[~inner][:, inner]
    else:
        gain = torch.zeros(int(inner.sum()), int((~inner).sum()), dtype=mean.dtype, device=mean.device)
        conditional = covariance[inner][:, inner]
    spread = torch.linalg.cholesky((conditional + conditional.T) / 2)

    original, target = _scores_and_target(model, x, target, softmax=True)
    padded = F.pad(x, (padding,) * 4, mode="replicate") if padding else x
    tops, lefts = _starts(height, h, sh), _starts(width, w, sw)
    n, windows = x.shape[0], len(tops) * len(lefts)

    def perturbed(chunk: slice) -> torch.Tensor:
        copies = []
        for copy in range(chunk.start, chunk.stop):       # copy = (image · windows + window) · samples + draw
            image, window_index = divmod(copy // samples, windows)
            top, left = tops[window_index // len(lefts)], lefts[window_index % len(lefts)]
            surround = padded[image, :, top:top + frame[0], left:left + frame[1]].flatten().double()
            noise = torch.randn(len(spread), generator=torch.Generator().manual_seed(seed * 2 ** 32 + copy),
                                dtype=torch.float64).to(x.device)
            draw = mean[inner] + gain @ (surround[~inner] - mean[~inner]) + spread @ noise
            copy_image = x[image].clone()
            copy_image[:, top:top + h, left:left + w] = draw.view(-1, h, w).to(x)
            copies.append(copy_image)
        return torch.stack(copies)

    probabilities = scores_in_batches(model, n * windows * samples, perturbed,
                                      target.repeat_interleave(windows * samples), batch_size=batch_size,
                                      softmax=True, progress=progress, description="prediction difference")
    removed = probabilities.to(x.device).view(n, windows, samples).double().mean(dim=2)

    def log_odds(p: torch.Tensor) -> torch.Tensor:
        p = p.double().clamp(1e-7, 1 - 1e-7)
        return torch.log2(p / (1 - p))

    evidence = (log_odds(original)[:, None] - log_odds(removed)).view(n, len(tops), len(lefts))
    summed = torch.zeros(n, height, width, dtype=torch.float64, device=x.device)
    covered = torch.zeros(height, width, dtype=torch.float64, device=x.device)
    for row, top in enumerate(tops):
        for col, left in enumerate(lefts):
            summed[:, top:top + h, left:left + w] += evidence[:, row, col, None, None]
            covered[top:top + h, left:left + w] += 1
    return (summed / covered).to(x.dtype)[:, None].expand_as(x).contiguous()


PERTURBATIONS = ("constant", "noise", "blur")   # the cases of Eq. (1)


def blur_pyramid(x: torch.Tensor, sigma_max: float = BLUR_SIGMA, levels: int = 8) -> torch.Tensor:
    """Blurred copies [levels, N, C, H, W] of `x`: level k is blurred with σ_k = (1 - k/(L-1))·σ_max,
    from σ_max at level 0 to the image itself at level L-1. This is TorchRay's `Perturbation`
    (Fong et al., 2019), with 8 levels by default as there."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels: expected an int >= 2, got {levels!r}")
    sigmas = sigma_max * (1 - torch.linspace(0, 1, levels, dtype=x.dtype, device=x.device))
    blurred = gaussian_blur(x.repeat(levels, 1, 1, 1), sigmas.repeat_interleave(x.shape[0]))
    return blurred.view(levels, *x.shape)


def blur_by_mask(pyramid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pixel u of level m(u)·(L-1) of `pyramid` (`blur_pyramid`), interpolated linearly between the two
    nearest levels: the image blurred by about σ(u) = (1 - m(u))·σ_max, Eq. (1)'s blur case.
    `mask` [N, 1, H, W] in [0, 1]; 1 keeps the pixel sharp."""
    position = mask * (pyramid.shape[0] - 1)
    # The lower level is at most L-2, so a mask of exactly 1 still has a gradient (towards level L-2).
    lower = position.detach().floor().clamp(max=pyramid.shape[0] - 2).long()
    below, above = (pyramid.gather(0, index.expand(pyramid.shape[1:])[None])[0] for index in (lower, lower + 1))
    return torch.lerp(below, above, position - lower)


@dataclass
class LearnedMask:
    """What `meaningful_perturbation` returns.

    mask: [N, 1, H, W] in [0, 1] at input resolution; 1 keeps a pixel, 0 deletes it (Eq. (1)).
    perturbed: Φ(x; mask), the image with the learned deletion applied (no jitter).
    history: per optimization step [steps, N]: "score" (the target probability p^c of the jittered,
    perturbed image), "l1" (the deleted fraction mean(1 - m)) and "objective" (the minimized loss).
    """

    mask: torch.Tensor
    perturbed: torch.Tensor
    history: dict[str, torch.Tensor]

    def __iter__(self):   # mask, history = meaningful_perturbation(...)
        return iter((self.mask, self.history))


def meaningful_perturbation(model, x: torch.Tensor, target=None, *, perturbation: str = "blur",
                            l1: float = 1e-4, tv: float = 1e-2, tv_beta: float = 3.0, steps: int = 500,
                            lr: float = 0.1, mask_scale: int = 8, jitter: int = 4, blur_levels: int = 8,
                            seed: int = 0, progress: bool = False) -> LearnedMask:
    """Meaningful perturbation (Fong & Vedaldi, 2017); survey §2.1.1, item 2, Eq. (1)-(2), Fig. 5.

    Learns the smallest deletion mask m that makes the class probability p^c fall (Eq. (2), with the
    paper's total-variation term and jitter, which keep the mask from becoming adversarial):
        m* = argmin_m  l1·‖1 - m‖₁ + tv·Σ_u |∇m(u)|^β + E_τ[ p^c(Φ(x(· - τ); m)) ].
    Φ(x; m) is one case of Eq. (1): "constant" m ⊙ x + (1 - m) ⊙ μ0 (μ0 the image's mean colour),
    "noise" m ⊙ x + (1 - m) ⊙ η (Gaussian noise with the image's colour statistics), or "blur", x
    blurred at u by σ0·(1 - m(u)) with σ0 = 10 px: the *deleted* pixels are blurred (the survey's
    Eq. (1) prints σ0·m(u), a typo). The blur is read from a `blur_pyramid` of `blur_levels` levels
    (`blur_by_mask`), as in the authors' later code, TorchRay.
    Jitter moves the image, not the mask: each step shifts x by a random τ of up to `jitter` pixels
    in each direction, repeating the edge pixels where the shift uncovers the border (no wrapping),
    under the fixed mask, so the mask must work whatever the exact pixel positions.
    m lives on a grid `mask_scale` times coarser than the image, is up-sampled bilinearly, and the
    norms are sums over that grid. The defaults are the paper's: λ1 = 1e-4, λ2 = 1e-2, β = 3, a 28×28
    mask for a 224×224 image (deleting all of it costs 784·λ1 = 0.08), 500 Adam steps of `lr` 0.1.
    Not black-box: it needs gradients of `model` with respect to its input.
    Returns a `LearnedMask` (unpacks as mask, history).
    """
    x = check_input(x)
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation: expected one of {', '.join(map(repr, PERTURBATIONS))}, "
                         f"got {perturbation!r}")
    for name, value, minimum in (("steps", steps, 1), ("mask_scale", mask_scale, 1), ("jitter", jitter, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    generator = torch.Generator().manual_seed(seed)
    _, target = _scores_and_target(model, x, target)
    n, height, width = x.shape[0], *x.shape[-2:]
    padded = F.pad(x, (jitter,) * 4, mode="replicate") if jitter else x
    if perturbation == "blur":
        pyramid = blur_pyramid(padded, BLUR_SIGMA, blur_levels)

        def delete(mask: torch.Tensor, top: int, left: int) -> torch.Tensor:
            return blur_by_mask(pyramid[..., top:top + height, left:left + width], mask)
    else:
        replacement = fill(x, "mean" if perturbation == "constant" else "noise", generator=generator)

        def delete(mask: torch.Tensor, top: int, left: int) -> torch.Tensor:
            return mask * padded[..., top:top + height, left:left + width] + (1 - mask) * replacement

    coarse = torch.ones(n, 1, math.ceil(height / mask_scale), math.ceil(width / mask_scale),
                        device=x.device, requires_grad=True)
    optimizer = torch.optim.Adam([coarse], lr=lr)
    history = {"score": [], "l1": [], "objective": []}
    from tqdm.auto import trange

    with preserved(model):
        for _ in trange(steps, disable=not progress, desc="meaningful perturbation", leave=False):
            mask = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
            top, left = torch.randint(0, 2 * jitter + 1, (2,), generator=generator).tolist()   # τ = jitter - offset
            output = model(delete(mask, top, left))
            if not output.requires_grad:
                raise RuntimeError("model: meaningful_perturbation needs gradients of the model's output with "
                                   "respect to its input; a black box run under torch.no_grad() cannot be used")
            score = output.softmax(dim=-1).gather(1, target[:, None]).squeeze(1)
            deletion = (1 - coarse).abs().sum(dim=(1, 2, 3))
            roughness = (coarse.diff(dim=-2).abs() ** tv_beta).sum(dim=(1, 2, 3)) \
                + (coarse.diff(dim=-1).abs() ** tv_beta).sum(dim=(1, 2, 3))
            objective = l1 * deletion + tv * roughness + score
            optimizer.zero_grad()
            objective.sum().backward()
            optimizer.step()
            with torch.no_grad():
                coarse.clamp_(0, 1)
            history["score"].append(score.detach())
            history["l1"].append(deletion.detach() / coarse[0].numel())
            history["objective"].append(objective.detach())
    with torch.no_grad():
        mask = F.interpolate(coarse.detach(), size=(height, width), mode="bilinear", align_corners=False)
        perturbed = delete(mask, jitter, jitter)
    return LearnedMask(mask, perturbed, {name: torch.stack(values) for name, values in history.items()})
