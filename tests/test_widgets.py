"""The explorers compute what they show with vizlib and leave no hooks behind; their static twins
hold the figures they would draw."""
import base64
import html
import io
import json
import re

import ipywidgets
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import PIL.Image
import pytest
import torch

from vizlib import widgets

matplotlib.use("Agg")


@pytest.fixture
def two_images(chelsea, coffee):
    return {"chelsea": chelsea, "coffee": coffee}


def test_strongest_channels_rank_by_mean_absolute_response():
    activation = torch.zeros(1, 4, 2, 2)
    activation[0, 2] = -3.0
    activation[0, 0] = 1.0
    assert widgets.strongest_channels(activation, 2) == [2, 0]


def test_channel_picture_is_signed_only_for_layers_with_negative_values():
    positive = torch.rand(1, 2, 4, 4)
    signed = positive - 0.5
    assert widgets.channel_picture(positive, 0).min() >= 0
    picture = widgets.channel_picture(signed, 0)
    assert picture.min() < 0 and abs(picture).max() == pytest.approx(1.0)


def test_feature_map_figure_has_a_row_per_layer(chelsea):
    maps = {name: a for name, a in zip(["stem", "head"], [torch.rand(1, 32, 112, 112), torch.rand(1, 1280, 7, 7)])}
    figure = widgets.feature_map_figure(chelsea, maps, channels=3)
    assert len(figure.axes) == 2 * 4
    plt.close(figure)


def test_explorer_redraws_on_every_control_and_leaves_no_hooks(lite0, two_images):
    explorer = widgets.feature_map_explorer(lite0, two_images, ["stem", "blocks.4", "head"], strongest=3)
    (image_picker, layer_picker, channel_slider), output = explorer.children[0].children, explorer.children[1]
    assert channel_slider.max == 31 and len(output.outputs) == 1
    layer_picker.value = "head"
    assert channel_slider.max == 1279
    channel_slider.value = 1000
    image_picker.value = "coffee"
    assert len(output.outputs) == 1   # each redraw replaces the figure
    assert not plt.get_fignums()      # and closes it
    assert not any(m._forward_hooks for m in lite0.modules())
    plt.close("all")


def test_every_channel_of_a_signed_layer_is_drawn_with_the_diverging_colormap(chelsea):
    activation = torch.rand(1, 2, 7, 7)
    activation[0, 1] -= 2.0          # the layer has negative values; channel 0 alone does not
    figure = widgets.feature_map_figure(chelsea, {"blocks.15": activation}, channels=2)
    colormaps = [ax.images[0].get_cmap().name for ax in figure.axes[1:]]
    assert colormaps == ["bwr", "bwr"]
    plt.close(figure)


def test_live_figure_draws_at_once_its_static_grid_and_on_every_change():
    calls = []

    def draw(size, title):
        calls.append((size, title))
        figure, ax = plt.subplots(figsize=(1, 1))
        ax.set_title(title)
        return figure

    size, title = ipywidgets.IntSlider(value=1, min=1, max=3), ipywidgets.Text(value="a")
    box = widgets.live_figure({"size": size, "title": title}, draw)
    assert calls == [(1, "a"), (3, "a")]        # the live figure, then the twin's other point
    size.value, title.value = 2, "b"
    assert calls[2:] == [(2, "a"), (2, "b")]
    assert len(box.children[1].outputs) == 1 and not plt.get_fignums()


def colour_draw(image, method, k):
    """A figure whose every pixel depends on the control values."""
    figure, ax = plt.subplots(figsize=(1.5, 1))
    ax.imshow([[(len(image) % 5) / 5, method / 4, k / 10]], vmin=0, vmax=1)
    ax.set_title(f"{image} {method} {k}", fontsize=6)
    return figure


def colour_controls():
    return {"image": ipywidgets.Dropdown(options=["cat", "cup", "duo"], value="cup"),
            "method": ipywidgets.Dropdown(options={"first": 0, "second": 2, "third": 4}, description="rule"),
            "k": ipywidgets.IntSlider(value=4, min=0, max=10)}


def test_static_grid_is_the_product_when_small_and_a_star_from_the_current_values_otherwise():
    controls = colour_controls()
    product = widgets.static_grid(controls, None, max_images=27)
    assert len({tuple(p.values()) for p in product}) == len(product) == 3 * 3 * 3
    assert product[0] == {"image": "cup", "method": 0, "k": 4}
    star = widgets.static_grid(controls, None, max_images=16)
    assert star == [{"image": "cup", "method": 0, "k": 4},
                    {"image": "cat", "method": 0, "k": 4}, {"image": "duo", "method": 0, "k": 4},
                    {"image": "cup", "method": 2, "k": 4}, {"image": "cup", "method": 4, "k": 4},
                    {"image": "cup", "method": 0, "k": 0}, {"image": "cup", "method": 0, "k": 10}]
    small = widgets.static_grid(controls, {"method": [4], "k": [1, 4]}, max_images=16)
    assert small[0] == {"image": "cup", "method": 0, "k": 4}       # the current values come first
    assert len(small) == 3 * 2 * 2 and len({tuple(p.values()) for p in small}) == 12
    points = widgets.static_grid(controls, [{"k": 7}, {"image": "cat", "k": 7}], max_images=16)
    assert points == [{"image": "cup", "method": 0, "k": 4}, {"image": "cup", "method": 0, "k": 7},
                      {"image": "cat", "method": 0, "k": 7}]


def parse_twin(text):
    """The twin's controls (caption, labels), its points and the controls' initial state (a label
    per control), and its images."""
    captions = re.findall(r"<label>(\w+) <(?:select|input)", text)
    label_lists, start = [], []
    for control in re.findall(r"<select[^>]*>.*?</select>|<input[^>]*>", text):
        if control.startswith("<select"):
            options = re.findall(r'<option value="\d+"( selected)?>([^<]*)</option>', control)
            label_lists.append([label for _, label in options])
            start += [label for selected, label in options if selected]
        else:
            labels = json.loads(html.unescape(re.search(r'data-labels="([^"]*)"', control)[1]))
            label_lists.append(labels)
            start.append(labels[int(re.search(r'value="(\d+)"', control)[1])])
    table = json.loads(re.search(r'<script type="application/json">(.*?)</script>', text)[1])
    first = re.search(r'<img class="vizlib-static-figure" src="([^"]*)"', text)[1]
    sources = [first] + table["images"][1:]
    assert table["images"][0] is None and all(s.startswith("data:image/webp;base64,") for s in sources)
    images = [base64.b64decode(s.partition(",")[2]) for s in sources]
    points = [[labels[i] for labels, i in zip(label_lists, point)] for point in table["points"]]
    return captions, points, start, images


def pixels(image):
    return np.asarray(PIL.Image.open(io.BytesIO(image)).convert("RGB"), dtype=float) / 255


def rendered(figure):
    """The figure drawn losslessly, at the twin's resolution."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=widgets.STATIC_DPI, bbox_inches="tight")
    plt.close(figure)
    return pixels(buffer.getvalue())


def assert_is_the_picture_of(image, expected, others):
    """`image` (lossy WebP) is `expected` up to compression, and nearer to it than to `others`."""
    def error(reference):
        return np.abs(pixels(image) - reference).mean() if reference.shape == expected.shape else np.inf
    assert pixels(image).shape == expected.shape
    assert error(expected) < 0.01          # mean absolute error on [0, 1] colours
    assert all(error(expected) < error(other) for other in others)


def test_static_twin_holds_the_draw_of_each_grid_point_under_its_control_labels():
    twin = widgets.live_figure(colour_controls(), colour_draw)
    bundle = twin._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle      # JupyterLab shows the widget
    captions, points, _, images = parse_twin(bundle["text/html"])
    assert captions == ["image", "rule", "k"]
    values = {"first": 0, "second": 2, "third": 4}
    assert len(points) == len(images) == 7
    assert len({tuple(point) for point in points}) == 7
    pictures = [rendered(colour_draw(image, values[method], int(k))) for image, method, k in points]
    for index, image in enumerate(images):
        assert_is_the_picture_of(image, pictures[index], pictures[:index] + pictures[index + 1:])
    assert not plt.get_fignums()


def test_static_twin_shows_the_live_widget_first_picture_by_default():
    first_calls = []

    def draw(**values):
        first_calls.append(values)
        return colour_draw(**values)

    controls = colour_controls()
    controls["k"].value = 7
    twin = widgets.live_figure(controls, draw)
    live_first = first_calls[0]
    _, points, start, images = parse_twin(twin._repr_mimebundle_()["text/html"])
    assert live_first == {"image": "cup", "method": 0, "k": 7}
    assert start == points[0] == ["cup", "first", "7"]   # what the page shows first, and its image
    others = [rendered(colour_draw(**point)) for point in twin.static_points[1:]]
    assert_is_the_picture_of(images[0], rendered(colour_draw(**live_first)), others)


def test_live_figure_names_the_bad_argument():
    with pytest.raises(ValueError, match="static"):
        widgets.live_figure(colour_controls(), colour_draw, static={"colour": [1]})
    with pytest.raises(ValueError, match="static"):
        widgets.live_figure(colour_controls(), colour_draw, static=[{"colour": 1}])
    with pytest.raises(ValueError, match="controls"):
        widgets.live_figure({"k": 3}, colour_draw)
    with pytest.raises(ValueError, match="draw"):
        widgets.live_figure(colour_controls(), None)
