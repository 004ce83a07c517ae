"""The explorers compute what they show with vizlib and leave no hooks behind."""
import matplotlib
import matplotlib.pyplot as plt
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


def test_live_figure_draws_at_once_and_on_every_change():
    import ipywidgets

    calls = []

    def draw(size, title):
        calls.append((size, title))
        figure, ax = plt.subplots()
        ax.set_title(title)
        return figure

    size, title = ipywidgets.IntSlider(value=1, min=1, max=3), ipywidgets.Text(value="a")
    box = widgets.live_figure({"size": size, "title": title}, draw)
    size.value, title.value = 2, "b"
    assert calls == [(1, "a"), (2, "a"), (2, "b")]
    assert len(box.children[1].outputs) == 1 and not plt.get_fignums()
