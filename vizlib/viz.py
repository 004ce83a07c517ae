"""Turning attributions into pictures: channel reduction, normalisation, colour, figures.

The survey's Fig. 31 names three post-processing modes, all here:
mode 1 sums a 3-channel attribution into a grey map (`channel_sum`), mode 2 copies a
1-channel map into 3 identical channels (`channel_replicate`), mode 3 colours a 1-channel
map with a colormap (`pseudo_color`). `normalize` and `heatmap` apply the usual display
conventions; `overlay`, `show`, `grid` and `postprocessing_figure` draw the results.

Maps are channel-first ([H,W], [C,H,W] or [1,C,H,W]); images are [H,W,3] arrays in [0,1]
(or uint8) or [3,H,W] tensors. Torch tensors and numpy arrays are both accepted.
"""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "to_numpy",
    "channel_sum",
    "channel_replicate",
    "pseudo_color",
    "normalize",
    "heatmap",
    "attribution_rgb",
    "overlay",
    "show",
    "grid",
    "postprocessing_figure",
]

SIGNS = ("abs", "positive", "negative", "signed")

_SIGN_PART = {
    "abs": np.abs,
    "positive": lambda h: np.maximum(h, 0.0),
    "negative": lambda h: np.maximum(-h, 0.0),
}

_REDUCTIONS = {
    "sum": lambda a: a.sum(axis=0),
    "abs_sum": lambda a: np.abs(a).sum(axis=0),
    "max_abs": lambda a: np.abs(a).max(axis=0),
}


def to_numpy(t) -> np.ndarray:
    """`t` (tensor on any device, array or nested list) as a float64 array; a batch dim of 1 is squeezed."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().double().numpy()
    array = np.asarray(t, dtype=np.float64)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    return array


def channel_sum(attribution) -> np.ndarray:
    """Survey mode 1: the [H,W] sum of a [C,H,W] attribution over its channels, sign kept."""
    return _as_channels(attribution, "attribution").sum(axis=0)


def channel_replicate(heatmap) -> np.ndarray:
    """Survey mode 2: a 1-channel map copied into 3 identical channels, [H,W,3]."""
    h = _as_single_channel(heatmap, "heatmap")
    return np.repeat(h[:, :, None], 3, axis=2)


def pseudo_color(heatmap, cmap="jet") -> np.ndarray:
    """Survey mode 3: a 1-channel map min-max scaled to [0,1] and coloured, [H,W,3] in [0,1]."""
    return _colorize(_min_max(_as_single_channel(heatmap, "heatmap")), cmap)


def normalize(heatmap, *, sign: str = "abs", percentile: float = 99.0) -> np.ndarray:
    """A 1-channel map scaled for display by the `percentile`-th percentile of its magnitude.

    abs: |h| in [0,1]; positive: max(h,0) in [0,1]; negative: max(-h,0) in [0,1];
    signed: h in [-1,1], for a diverging colormap centred at zero. Values above the
    percentile saturate at 1; percentile=100 divides by the max. If the percentile is
    zero (a sparse map) the max is used instead, and an all-zero map stays zero.
    """
    h = _as_single_channel(heatmap, "heatmap")
    _check_sign(sign)
    _check_percentile(percentile)
    if sign == "signed":
        return _scale_signed(h, percentile)
    part = _SIGN_PART[sign](h)
    return np.clip(part / _percentile_scale(part, percentile), 0.0, 1.0)


def heatmap(attribution, *, reduce: str | None = "sum", sign: str = "abs", percentile: float = 99.0) -> np.ndarray:
    """A display-ready [H,W] map: channels reduced by `reduce`, then `normalize`d.

    reduce: "sum" (survey mode 1), "abs_sum", "max_abs" (the saliency-map convention) or
    None for an attribution that already has a single channel.
    """
    channels = _as_channels(attribution, "attribution")
    if reduce is None:
        if channels.shape[0] != 1:
            raise ValueError(f"attribution: reduce=None needs a single-channel map, got {channels.shape[0]} channels")
        reduced = channels[0]
    elif reduce in _REDUCTIONS:
        if reduce != "sum" and sign in ("negative", "signed"):
            raise ValueError(f"sign: {sign!r} needs a signed map, but reduce={reduce!r} discards the sign")
        reduced = _REDUCTIONS[reduce](channels)
    else:
        raise ValueError(f"reduce: expected one of {', '.join(map(repr, _REDUCTIONS))} or None, got {reduce!r}")
    return normalize(reduced, sign=sign, percentile=percentile)


def overlay(image, heatmap, *, alpha: float = 0.5, cmap="jet") -> np.ndarray:
    """(1 - alpha) * image + alpha * colour of a [0,1] heatmap, [H,W,3] in [0,1].

    The heatmap is resized bilinearly to the image when their sizes differ.
    """
    rgb = _as_image(image, "image")
    h = _as_single_channel(heatmap, "heatmap")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    if h.min() < 0.0 or h.max() > 1.0:
        raise ValueError(
            f"heatmap: expected values in [0, 1] (see normalize), got range [{h.min():.3g}, {h.max():.3g}]"
        )
    colour = _colorize(_resize(h, rgb.shape[:2]), cmap)
    # Rounding can push the blend of two values in [0, 1] a hair past 1.
    return np.clip((1.0 - alpha) * rgb + alpha * colour, 0.0, 1.0)


def show(ax: Axes, image_or_map, *, title: str | None = None, sign: str | None = None, cmap=None) -> None:
    """Draw an RGB image or a normalised map on `ax`, without ticks.

    Maps must already be normalised: sign="signed" expects [-1,1] and uses a diverging
    colormap ("bwr") centred at zero; the other signs expect [0,1] ("inferno").
    sign=None means "signed" when the map has negative values. `cmap` overrides the colormap.
    """
    if _is_rgb(image_or_map):
        ax.imshow(_as_image(image_or_map, "image_or_map"))
    else:
        m = _as_single_channel(image_or_map, "image_or_map")
        if sign is None:
            sign = "signed" if m.min() < 0 else "abs"
        _check_sign(sign)
        low = -1.0 if sign == "signed" else 0.0
        if m.min() < low or m.max() > 1.0:
            raise ValueError(
                f"image_or_map: a map shown with sign={sign!r} must lie in [{low:g}, 1] (see normalize), "
                f"got range [{m.min():.3g}, {m.max():.3g}]"
            )
        ax.imshow(m, cmap=cmap or ("bwr" if sign == "signed" else "inferno"), vmin=low, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title)


def grid(rows, *, row_titles=None, col_titles=None, size: float = 2.2, signs=None) -> Figure:
    """A figure with one panel per entry of `rows` (e.g. images x methods), each drawn by `show`.

    col_titles head the columns, row_titles label the rows, signs gives each column's
    `show` sign (None entries infer it). Returns the pyplot figure without showing it.
    """
    rows = [list(row) for row in rows]
    n_cols = len(rows[0]) if rows else 0
    if n_cols == 0:
        raise ValueError("rows: expected a non-empty list of non-empty rows")
    if any(len(row) != n_cols for row in rows):
        raise ValueError(f"rows: expected rows of equal length, got lengths {[len(row) for row in rows]}")
    _check_length(row_titles, len(rows), "row_titles")
    _check_length(col_titles, n_cols, "col_titles")
    _check_length(signs, n_cols, "signs")
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(size * n_cols, size * len(rows)), squeeze=False, layout="constrained"
    )
    try:
        for r, row in enumerate(rows):
            for c, item in enumerate(row):
                title = col_titles[c] if col_titles is not None and r == 0 else None
                show(axes[r, c], item, title=title, sign=signs[c] if signs is not None else None)
            if row_titles is not None:
                axes[r, 0].set_ylabel(row_titles[r])
    except ValueError:
        plt.close(fig)  # a half-drawn figure would otherwise still appear in a notebook
        raise
    return fig


def postprocessing_figure(image, attribution_3ch, cam_1ch) -> Figure:
    """The survey's Fig. 31: a 3-channel and a 1-channel map through the three post-processing modes.

    Panels: input | 3-channel map | mode 1 grey sum | 1-channel map | mode 2 replicated |
    mode 3 pseudo-colour | overlay. The 1-channel map is resized to the image and min-max scaled.
    """
    rgb = _as_image(image, "image")
    attribution = _as_channels(attribution_3ch, "attribution_3ch")
    if attribution.shape[0] != 3:
        raise ValueError(f"attribution_3ch: expected 3 channels, got {attribution.shape[0]}")
    cam = _min_max(_resize(_as_single_channel(cam_1ch, "cam_1ch"), rgb.shape[:2]))
    grey_sum = normalize(channel_sum(attribution), sign="signed")

    fig, axes = plt.subplots(1, 7, figsize=(2.2 * 7, 2.6), layout="constrained")
    show(axes[0], rgb, title="input")
    show(axes[1], attribution_rgb(attribution), title="3-channel map")
    # Grey with zero at mid-grey, as if the 3-channel picture were converted to greyscale.
    show(axes[2], grey_sum, sign="signed", cmap="gray", title="mode 1: sum")
    show(axes[3], cam, sign="positive", cmap="gray", title="1-channel map")
    show(axes[4], channel_replicate(cam), title="mode 2: replicate")
    show(axes[5], pseudo_color(cam), title="mode 3: pseudo-colour")
    show(axes[6], overlay(rgb, cam), title="overlay")
    return fig


def _as_channels(x, name: str) -> np.ndarray:
    """`x` as a finite [C,H,W] array; [H,W] becomes [1,H,W]."""
    array = to_numpy(x)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{name}: expected shape [H,W], [C,H,W] or [1,C,H,W], got shape {tuple(np.shape(x))}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or inf values")
    return array


def _as_single_channel(x, name: str) -> np.ndarray:
    """`x` as an [H,W] array; it must have exactly one channel."""
    channels = _as_channels(x, name)
    if channels.shape[0] != 1:
        raise ValueError(f"{name}: expected a single-channel map, got {channels.shape[0]} channels")
    return channels[0]


def _is_rgb(x) -> bool:
    shape = to_numpy(x).shape
    return len(shape) == 3 and 3 in (shape[0], shape[-1])


def _as_image(image, name: str) -> np.ndarray:
    """`image` as an [H,W,3] float array in [0,1]; uint8 images are divided by 255."""
    dtype = image.dtype if isinstance(image, torch.Tensor) else np.asarray(image).dtype
    is_uint8 = dtype in (torch.uint8, np.uint8)
    array = to_numpy(image)
    if array.ndim == 3 and array.shape[-1] != 3 and array.shape[0] == 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"{name}: expected an RGB image of shape [H,W,3] or [3,H,W], got shape {tuple(np.shape(image))}"
        )
    if is_uint8:
        return array / 255.0
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(
            f"{name}: expected values in [0, 1] (undo the input normalisation first), "
            f"got range [{array.min():.3g}, {array.max():.3g}]"
        )
    return array


def _check_sign(sign) -> None:
    if sign not in SIGNS:
        raise ValueError(f"sign: expected one of {', '.join(map(repr, SIGNS))}, got {sign!r}")


def _check_percentile(percentile) -> None:
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile: expected a number in (0, 100], got {percentile!r}")


def _check_length(values, expected: int, name: str) -> None:
    if values is not None and len(values) != expected:
        raise ValueError(f"{name}: expected {expected} entries, got {len(values)}")


def _percentile_scale(magnitude: np.ndarray, percentile: float) -> float:
    """The divisor that maps `magnitude` (>= 0) to [0,1]: its percentile, else its max, else 1."""
    scale = np.percentile(magnitude, percentile)
    if scale == 0.0:
        scale = magnitude.max()
    return scale if scale > 0.0 else 1.0


def _scale_signed(values: np.ndarray, percentile: float) -> np.ndarray:
    return np.clip(values / _percentile_scale(np.abs(values), percentile), -1.0, 1.0)


def _min_max(h: np.ndarray) -> np.ndarray:
    """`h` shifted and scaled to [0,1]; a constant map becomes zeros."""
    span = h.max() - h.min()
    return (h - h.min()) / span if span > 0 else np.zeros_like(h)


def _colorize(h: np.ndarray, cmap) -> np.ndarray:
    """RGB colours of values in [0,1] under a colormap given by name or object."""
    return matplotlib.colormaps.get_cmap(cmap)(h)[..., :3]


def _resize(h: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An [H,W] map resized bilinearly to `size` (unchanged when it already has that size)."""
    if h.shape == tuple(size):
        return h
    batch = torch.from_numpy(np.ascontiguousarray(h))[None, None]
    resized = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def attribution_rgb(attribution, *, percentile: float = 99.0) -> np.ndarray:
    """A 3-channel attribution as an [H,W,3] picture in [0,1], zero at mid-grey: the usual look of
    raw gradients and guided backpropagation, each colour channel showing its own sign."""
    channels = _as_channels(attribution, "attribution")
    if channels.shape[0] != 3:
        raise ValueError(f"attribution: expected 3 channels, got {channels.shape[0]}")
    _check_percentile(percentile)
    return ((_scale_signed(channels, percentile) + 1.0) / 2.0).transpose(1, 2, 0)
