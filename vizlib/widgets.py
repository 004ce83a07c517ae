"""Interactive explorers for the book: pick an image, a layer and a channel, and see the maps.

Each explorer computes what it shows with vizlib, caches the expensive part (one forward pass per
image), and redraws on every change, so it stays interactive on a 2-core CPU.
"""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import nn

from . import viz
from .data import deprocess
from .mechanics import activations

__all__ = ["channel_picture", "feature_map_figure", "strongest_channels", "feature_map_explorer"]


def strongest_channels(activation: torch.Tensor, k: int) -> list[int]:
    """The `k` channels of an activation [1, C, H, W] with the largest mean absolute response."""
    return activation[0].abs().mean(dim=(1, 2)).topk(min(k, activation.shape[1])).indices.tolist()


def channel_picture(activation: torch.Tensor, channel: int):
    """One feature map scaled for display: signed (diverging colours) when the layer has negative
    values, as block outputs after a linear projection do; else its positive part."""
    sign = "signed" if activation.min() < 0 else "positive"
    return viz.normalize(activation[0, channel], sign=sign, percentile=100)


def feature_map_figure(image: torch.Tensor, maps: dict[str, torch.Tensor], channels: int = 6,
                       *, size: float = 1.6) -> Figure:
    """One row per layer: the input, then that layer's `channels` strongest feature maps, each on
    its own scale (see `channel_picture`)."""
    rows, titles, chosen = [], [], []
    for name, activation in maps.items():
        top = strongest_channels(activation, channels)
        rows.append([deprocess(image)] + [channel_picture(activation, c) for c in top])
        titles.append(f"{name}\n{tuple(activation.shape[1:])}")
        chosen.append(top)
    figure = viz.grid(rows, row_titles=titles, size=size)
    for axes_row, top in zip(np.reshape(figure.axes, (len(rows), -1)), chosen):
        for ax, channel in zip(axes_row[1:], top):
            ax.set_title(f"channel {channel}", fontsize=8)
    return figure


def feature_map_explorer(model: nn.Module, images: dict[str, torch.Tensor], layers: list[str],
                         *, strongest: int = 7) -> widgets.Widget:
    """Dropdowns for image and layer, a slider for the channel.

    Shows the photo, the chosen channel's feature map, and the layer's `strongest` most active channels.
    """
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def maps_for(image_name):
        if image_name not in cache:
            x = images[image_name].to(next(model.parameters()).device)
            cache[image_name] = {k: v.cpu() for k, v in activations(model, x, layers).items()}
        return cache[image_name]

    image_picker = widgets.Dropdown(options=list(images), description="image")
    layer_picker = widgets.Dropdown(options=list(layers), description="layer")
    channel_slider = widgets.IntSlider(min=0, max=1, description="channel", continuous_update=False)
    output = widgets.Output()

    def update_channel_range(*_):
        channel_slider.max = maps_for(image_picker.value)[layer_picker.value].shape[1] - 1

    def redraw(*_):
        activation = maps_for(image_picker.value)[layer_picker.value]
        photo = deprocess(images[image_picker.value])
        channel_map = channel_picture(activation, channel_slider.value)
        top = strongest_channels(activation, strongest)
        figure, axes = plt.subplots(1, 2 + len(top), figsize=(2 * (2 + len(top)), 2.3))
        viz.show(axes[0], photo, title=image_picker.value)
        viz.show(axes[1], channel_map, title=f"{layer_picker.value}[{channel_slider.value}]")
        for ax, channel in zip(axes[2:], top):
            viz.show(ax, channel_picture(activation, channel), title=f"top: {channel}")
        # Set the outputs directly instead of `with output:` capturing: capture races with headless
        # executors (nbclient, used by the book build) and can hang them.
        output.outputs = ()
        output.append_display_data(figure)
        plt.close(figure)

    for picker in (image_picker, layer_picker):
        picker.observe(update_channel_range, names="value")
    for control in (image_picker, layer_picker, channel_slider):
        control.observe(redraw, names="value")
    update_channel_range()
    redraw()
    return widgets.VBox([widgets.HBox([image_picker, layer_picker, channel_slider]), output])
