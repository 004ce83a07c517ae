"""Interactive explorers for the book: pick an image, a layer and a channel, and see the maps.

Each explorer computes what it shows with vizlib, caches the expensive part (one forward pass per
image), and redraws on every change, so it stays interactive on a 2-core CPU.
"""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import nn

from . import viz
from .data import deprocess
from .mechanics import activations

__all__ = ["layer_sign", "channel_picture", "feature_map_figure", "strongest_channels", "feature_map_explorer",
           "live_figure"]


def live_figure(controls: dict[str, widgets.ValueWidget], draw) -> widgets.Widget:
    """Controls above a figure that ``draw(**values)`` recomputes whenever a control changes.

    `draw` receives each control's value under its key and returns a matplotlib Figure. The
    figure is drawn once immediately, so the widget shows a result before any interaction.
    """
    output = widgets.Output()

    def redraw(*_):
        figure = draw(**{name: control.value for name, control in controls.items()})
        # Set the outputs directly instead of `with output:` capturing: capture races with headless
        # executors (nbclient, used by the book build) and can hang them.
        output.outputs = ()
        output.append_display_data(figure)
        plt.close(figure)

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox(list(controls.values())), output])


def strongest_channels(activation: torch.Tensor, k: int) -> list[int]:
    """The `k` channels of an activation [1, C, H, W] with the largest mean absolute response."""
    return activation[0].abs().mean(dim=(1, 2)).topk(min(k, activation.shape[1])).indices.tolist()


def layer_sign(activation: torch.Tensor) -> str:
    """How to display a layer's maps: "signed" (diverging colours, zero at white) when the layer
    has negative values, as block outputs after a linear projection do; else "positive"."""
    return "signed" if activation.min() < 0 else "positive"


def channel_picture(activation: torch.Tensor, channel: int):
    """One feature map scaled for display with `layer_sign`, on its own scale."""
    return viz.normalize(activation[0, channel], sign=layer_sign(activation), percentile=100)


def show_channel(ax, activation: torch.Tensor, channel: int, title: str) -> None:
    viz.show(ax, channel_picture(activation, channel), sign=layer_sign(activation), title=title)
    ax.title.set_fontsize(8)


def feature_map_figure(image: torch.Tensor, maps: dict[str, torch.Tensor], channels: int = 6,
                       *, size: float = 1.6) -> Figure:
    """One row per layer: the input, then that layer's `channels` strongest feature maps, each on
    its own scale (see `channel_picture`)."""
    figure, axes = plt.subplots(len(maps), channels + 1, figsize=(size * (channels + 1), size * len(maps)),
                                squeeze=False, layout="constrained")
    for axes_row, (name, activation) in zip(axes, maps.items()):
        viz.show(axes_row[0], deprocess(image))
        axes_row[0].set_ylabel(f"{name}\n{tuple(activation.shape[1:])}")
        for ax, channel in zip(axes_row[1:], strongest_channels(activation, channels)):
            show_channel(ax, activation, channel, f"channel {channel}")
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

    def update_channel_range(*_):
        channel_slider.max = maps_for(image_picker.value)[layer_picker.value].shape[1] - 1

    def draw(image, layer, channel):
        activation = maps_for(image)[layer]
        top = strongest_channels(activation, strongest)
        figure, axes = plt.subplots(1, 2 + len(top), figsize=(2 * (2 + len(top)), 2.3))
        viz.show(axes[0], deprocess(images[image]), title=image)
        show_channel(axes[1], activation, channel, f"{layer}[{channel}]")
        for ax, top_channel in zip(axes[2:], top):
            show_channel(ax, activation, top_channel, f"top: {top_channel}")
        return figure

    # The range observers are registered first, so the slider is valid before each redraw.
    for picker in (image_picker, layer_picker):
        picker.observe(update_channel_range, names="value")
    update_channel_range()
    return live_figure({"image": image_picker, "layer": layer_picker, "channel": channel_slider}, draw)
