"""Interactive explorers for the book: pick an image, a layer and a channel, and see the maps.

Each explorer computes what it shows with vizlib, caches the expensive part (one forward pass per
image), and redraws on every change, so it stays interactive on a 2-core CPU.
"""
from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import PIL.Image
import torch
from matplotlib.figure import Figure
from torch import nn

from . import viz
from .data import deprocess
from .explorer import Explorer
from .mechanics import activations

__all__ = ["layer_sign", "channel_picture", "feature_map_figure", "strongest_channels", "feature_map_explorer",
           "live_figure", "LiveFigure", "static_grid", "figure_image", "Explorer"]


STATIC_DPI = 72          # the book's pages are about 800 px wide; a 9-inch figure fills them
# Lossy WebP: a figure of gradient or relevance maps is mostly noise, 200-400 kB as a PNG and a
# tenth of that as WebP at this quality, which looks the same at this size.
STATIC_QUALITY = 80
STATIC_MAX_IMAGES = 16   # the full product of the grid up to this many images, else a star
SLIDER_SAMPLES = 3       # a slider's static values: its minimum, its value and its maximum


def figure_image(figure: Figure, dpi: float = STATIC_DPI, quality: int = STATIC_QUALITY) -> bytes:
    """`figure` as WebP, cropped to its content as the notebook's inline figures are."""
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=dpi, bbox_inches="tight")
    webp = io.BytesIO()
    PIL.Image.open(png).convert("RGB").save(webp, format="WEBP", quality=quality, method=6)
    return webp.getvalue()


def control_choices(control: widgets.ValueWidget) -> list[tuple[str, object]]:
    """The (label, value) pairs a static twin offers for one control by default: every option of
    a selection, the ends and the value of a slider, both states of a toggle, else the value."""
    if hasattr(control, "_options_full"):           # Dropdown, RadioButtons, SelectionSlider, ...
        return list(control._options_full)
    if is_slider(control):
        values = sorted({control.min, control.value, control.max})
        return [(f"{value:g}", value) for value in values]
    if isinstance(control.value, bool):
        return [(str(value), value) for value in (control.value, not control.value)]
    return [(str(control.value), control.value)]


def is_slider(control: widgets.ValueWidget) -> bool:
    return hasattr(control, "min") and hasattr(control, "max") and not hasattr(control, "_options_full")


def label_of(control: widgets.ValueWidget, value) -> str:
    for label, option in control_choices(control):
        if option == value:
            return label
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def static_grid(controls: dict[str, widgets.ValueWidget], static, max_images: int) -> list[dict]:
    """The control values a static twin is drawn for, the controls' current values first.

    `static` is None (each control's `control_choices`), a dict {control: [values]} that replaces
    the choices of the controls it names, or a list of points {control: value} (controls a point
    leaves out keep their current value). From choices the grid is their full product when it
    has at most `max_images` points, else a star: the current values, then each control's other
    choices with the rest at their current values.
    """
    default = {name: control.value for name, control in controls.items()}
    if isinstance(static, (list, tuple)):
        points = [default]
        for point in static:
            if not isinstance(point, dict) or not set(point) <= set(controls):
                raise ValueError(f"static: each point must be a dict of control names {sorted(controls)}, "
                                 f"got {point!r}")
            point = {**default, **point}
            if point not in points:
                points.append(point)
        return points
    if static is not None and not (isinstance(static, dict) and set(static) <= set(controls)):
        raise ValueError(f"static must be None, a list of points or a dict whose keys are control "
                         f"names {sorted(controls)}, got {static!r}")
    choices = {}
    for name, control in controls.items():
        values = [value for _, value in control_choices(control)]
        if static is not None and name in static:
            values = list(static[name])
            if not values:
                raise ValueError(f"static: no values for control {name!r}")
        choices[name] = [default[name]] + [value for value in values if value != default[name]]
    if math.prod(len(values) for values in choices.values()) <= max_images:
        return [dict(zip(choices, values)) for values in itertools.product(*choices.values())]
    points = [default]
    for name, values in choices.items():
        points += [{**default, name: value} for value in values[1:]]
    return points


class LiveFigure(widgets.VBox):
    """Controls above a figure that ``draw(**values)`` recomputes whenever a control changes, and
    its static twin for pages without a kernel: the figures of a grid of control values
    (`static_grid`), as WebP images in an HTML fragment whose plain controls swap them.

    A kernel's front end shows the widget; its ``text/html`` representation is the twin, which the
    book's HTML build prefers (`nb_mime_priority_overrides` in _config.yml).
    """

    def __init__(self, controls: dict[str, widgets.ValueWidget], draw, *, static=None,
                 max_images: int = STATIC_MAX_IMAGES, dpi: float = STATIC_DPI):
        if not controls or not all(isinstance(c, widgets.ValueWidget) for c in controls.values()):
            raise ValueError(f"controls must be a non-empty dict of ipywidgets value widgets, got {controls!r}")
        if not callable(draw):
            raise ValueError(f"draw must be a function of the control values, got {draw!r}")
        self.controls, self.draw, self.dpi = controls, draw, dpi
        self.output = widgets.Output()
        self.static_points = static_grid(controls, static, max_images)
        first = self.redraw()
        self.static_images = [first] + [self.image(**point) for point in self.static_points[1:]]
        for control in controls.values():
            control.observe(self.redraw, names="value")
        super().__init__([widgets.HBox(list(controls.values())), self.output])

    def image(self, **values) -> bytes:
        figure = self.draw(**values)
        try:
            return figure_image(figure, self.dpi)
        finally:
            plt.close(figure)

    def redraw(self, *_) -> bytes:
        """Show the figure of the controls' values; returns its static image."""
        figure = self.draw(**{name: control.value for name, control in self.controls.items()})
        # Set the outputs directly instead of `with output:` capturing: capture races with headless
        # executors (nbclient, used by the book build) and can hang them.
        self.output.outputs = ()
        self.output.append_display_data(figure)
        image = figure_image(figure, self.dpi)
        plt.close(figure)
        return image

    def static_html(self) -> str:
        """The twin: a <select> per selection control, a range input per slider, one <img>."""
        names = list(self.controls)
        values = {name: self.static_values(name) for name in names}
        indices = [[values[name].index(point[name]) for name in names] for point in self.static_points]
        inputs = []
        for position, name in enumerate(names):
            control = self.controls[name]
            labels = [label_of(control, value) for value in values[name]]
            start = indices[0][position]
            caption = html.escape(control.description or name)
            if is_slider(control):
                inputs.append(f'<label>{caption} <input type="range" data-control="{position}" min="0" '
                              f'max="{len(labels) - 1}" step="1" value="{start}" '
                              f'data-labels="{html.escape(json.dumps(labels))}"> '
                              f'<output>{html.escape(labels[start])}</output></label>')
            else:
                options = "".join(f'<option value="{i}"{" selected" if i == start else ""}>'
                                  f'{html.escape(label)}</option>' for i, label in enumerate(labels))
                inputs.append(f'<label>{caption} <select data-control="{position}">{options}</select></label>')
        sources = [f"data:image/webp;base64,{base64.b64encode(image).decode('ascii')}"
                   for image in self.static_images]
        # The first image is the <img>'s own source: it is not repeated in the table.
        table = json.dumps({"points": indices, "images": [None] + sources[1:]})
        return (f'<div class="vizlib-static">'
                f'<div class="vizlib-static-controls">{" ".join(inputs)}</div>'
                f'<img class="vizlib-static-figure" src="{sources[0]}" alt="{html.escape(self.alt(0))}">'
                f'<script type="application/json">{table}</script>'
                f'<script>{STATIC_SCRIPT}</script></div>')

    def static_values(self, name: str) -> list:
        """One control's values in the grid: a slider's in increasing order, else in the order
        of the control's options."""
        values = []
        for point in self.static_points:
            if point[name] not in values:
                values.append(point[name])
        if is_slider(self.controls[name]):
            return sorted(values)
        order = [value for _, value in control_choices(self.controls[name])]
        return sorted(values, key=lambda value: order.index(value) if value in order else len(order))

    def alt(self, index: int) -> str:
        return ", ".join(f"{self.controls[name].description or name} {label_of(self.controls[name], value)}"
                         for name, value in self.static_points[index].items())

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        bundle["text/html"] = self.static_html()
        return bundle


# Swaps the twin's image when a control changes. A combination outside the grid moves the other
# controls to the grid point that keeps most of them (the star's centre when the grid is a star).
STATIC_SCRIPT = """(function (root) {
  var table = JSON.parse(root.querySelector('script[type="application/json"]').textContent);
  var image = root.querySelector('img'), inputs = root.querySelectorAll('[data-control]');
  table.images[0] = image.src;
  function show(point) {
    inputs.forEach(function (input, c) {
      input.value = point[c];
      if (input.type === 'range') {
        input.nextElementSibling.textContent = JSON.parse(input.dataset.labels)[point[c]];
      }
    });
    var index = table.points.findIndex(function (p) { return p.join() === point.join(); });
    image.src = table.images[index];
  }
  inputs.forEach(function (input, changed) {
    input.addEventListener('input', function () {
      var wanted = Array.prototype.map.call(inputs, function (i) { return +i.value; });
      var best = null, bestShared = -1;
      table.points.forEach(function (p) {
        if (p[changed] !== wanted[changed]) return;
        var shared = p.filter(function (v, c) { return v === wanted[c]; }).length;
        if (shared > bestShared) { best = p; bestShared = shared; }
      });
      show(best);
    });
  });
})(document.currentScript.parentNode);"""


def live_figure(controls: dict[str, widgets.ValueWidget], draw, *, static=None,
                max_images: int = STATIC_MAX_IMAGES, dpi: float = STATIC_DPI) -> LiveFigure:
    """Controls above a figure that ``draw(**values)`` recomputes whenever a control changes.

    `draw` receives each control's value under its key and returns a matplotlib Figure. The
    figure is drawn once immediately, so the widget shows a result before any interaction. The
    widget also carries a static twin for the book's HTML pages (see `LiveFigure`); `static`,
    `max_images` and `dpi` choose its grid and its image size (see `static_grid`). Each point of
    the grid costs one draw.
    """
    return LiveFigure(controls, draw, static=static, max_images=max_images, dpi=dpi)


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
