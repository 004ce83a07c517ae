import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from vizlib import viz


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def image(rng):
    return rng.uniform(0.0, 1.0, size=(16, 16, 3))


def test_channel_sum_equals_the_sum_of_the_channels_and_keeps_sign(rng):
    attribution = rng.normal(size=(3, 8, 8))
    summed = viz.channel_sum(attribution)
    np.testing.assert_allclose(summed, attribution[0] + attribution[1] + attribution[2], rtol=1e-12)
    assert summed.min() < 0 < summed.max()


def test_channel_sum_of_a_single_channel_map_is_the_map(rng):
    h = rng.normal(size=(8, 8))
    np.testing.assert_array_equal(viz.channel_sum(h), h)


def test_channel_replicate_gives_three_identical_channels(rng):
    h = rng.normal(size=(1, 8, 9))
    replicated = viz.channel_replicate(h)
    assert replicated.shape == (8, 9, 3)
    for c in range(3):
        np.testing.assert_array_equal(replicated[:, :, c], h[0])


def test_pseudo_color_maps_min_to_the_first_colour_and_max_to_the_last(rng):
    h = rng.normal(size=(8, 8))
    colours = viz.pseudo_color(h, cmap="jet")
    jet = matplotlib.colormaps["jet"]
    lo, hi = np.unravel_index(h.argmin(), h.shape), np.unravel_index(h.argmax(), h.shape)
    np.testing.assert_array_equal(colours[lo], jet(0)[:3])
    np.testing.assert_array_equal(colours[hi], jet(jet.N - 1)[:3])
    assert colours.shape == (8, 8, 3) and 0.0 <= colours.min() and colours.max() <= 1.0


def test_pseudo_color_of_a_constant_map_is_the_first_colour():
    colours = viz.pseudo_color(np.full((4, 4), 3.0), cmap="viridis")
    np.testing.assert_array_equal(colours, np.broadcast_to(matplotlib.colormaps["viridis"](0)[:3], (4, 4, 3)))


def test_normalize_abs_lies_in_the_unit_interval_and_reaches_one(rng):
    out = viz.normalize(rng.normal(size=(32, 32)), sign="abs")
    assert out.min() >= 0.0 and out.max() == 1.0


def test_percentile_clipping_saturates_exactly_the_top_one_percent(rng):
    values = rng.permutation(np.arange(1.0, 1001.0)).reshape(40, 25)
    out = viz.normalize(values, sign="abs", percentile=99.0)
    saturated = out == 1.0
    assert saturated.sum() == 10
    assert values[saturated].min() == 991.0  # the ten largest values


def test_percentile_100_divides_by_the_max(rng):
    h = rng.normal(size=(8, 8))
    np.testing.assert_allclose(viz.normalize(h, sign="abs", percentile=100), np.abs(h) / np.abs(h).max(), rtol=1e-12)


def test_normalize_signed_keeps_the_sign_and_stays_within_one(rng):
    h = rng.normal(size=(32, 32))
    out = viz.normalize(h, sign="signed")
    np.testing.assert_array_equal(np.sign(out), np.sign(h))
    assert np.abs(out).max() == 1.0


def test_normalize_positive_and_negative_keep_only_their_part(rng):
    h = rng.normal(size=(16, 16))
    positive = viz.normalize(h, sign="positive", percentile=100)
    negative = viz.normalize(h, sign="negative", percentile=100)
    np.testing.assert_allclose(positive, np.maximum(h, 0) / h.max(), rtol=1e-12)
    np.testing.assert_allclose(negative, np.maximum(-h, 0) / -h.min(), rtol=1e-12)


@pytest.mark.parametrize("sign", viz.SIGNS)
def test_an_all_zero_map_normalizes_to_zeros_without_warnings(sign):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = viz.normalize(np.zeros((5, 5)), sign=sign)
    np.testing.assert_array_equal(out, np.zeros((5, 5)))


def test_a_sparse_map_whose_percentile_is_zero_is_scaled_by_its_max():
    h = np.zeros((20, 20))
    h[3, 4], h[5, 6] = 0.5, -0.25  # two non-zero pixels in 400: the 99th percentile is 0
    expected = np.zeros((20, 20))
    expected[3, 4], expected[5, 6] = 1.0, 0.5
    np.testing.assert_array_equal(viz.normalize(h, sign="abs"), expected)


@pytest.mark.parametrize(
    "reduce, manual",
    [
        ("sum", lambda a: np.abs(a.sum(0))),
        ("abs_sum", lambda a: np.abs(a).sum(0)),
        ("max_abs", lambda a: np.abs(a).max(0)),
    ],
)
def test_heatmap_reduces_channels_then_normalizes(rng, reduce, manual):
    a = rng.normal(size=(3, 8, 8))
    expected = manual(a) / manual(a).max()
    np.testing.assert_allclose(viz.heatmap(a, reduce=reduce, percentile=100), expected, rtol=1e-12)


def test_heatmap_with_reduce_none_takes_a_single_channel_map(rng):
    h = rng.normal(size=(1, 8, 8))
    np.testing.assert_array_equal(viz.heatmap(h, reduce=None, sign="signed"), viz.normalize(h, sign="signed"))


def test_overlay_with_alpha_zero_returns_the_image(image, rng):
    np.testing.assert_array_equal(viz.overlay(image, rng.uniform(size=(16, 16)), alpha=0.0), image)


def test_overlay_with_alpha_one_returns_the_pseudo_colour(image, rng):
    h = rng.uniform(size=(16, 16))
    h[0, 0], h[0, 1] = 0.0, 1.0  # span exactly [0, 1] so pseudo_color's min-max scaling is the identity
    np.testing.assert_array_equal(viz.overlay(image, h, alpha=1.0, cmap="jet"), viz.pseudo_color(h, cmap="jet"))


def test_overlay_resizes_the_heatmap_to_the_image_size(image):
    h = np.full((4, 4), 0.5)
    out = viz.overlay(image, h, alpha=1.0, cmap="gray")
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out, np.broadcast_to(matplotlib.colormaps["gray"](0.5)[:3], (16, 16, 3)), atol=1e-12)


def test_overlay_accepts_uint8_arrays_and_channel_first_tensors(image):
    as_uint8 = (image * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(viz.overlay(as_uint8, np.zeros((16, 16)), alpha=0.0), as_uint8 / 255.0)
    as_tensor = torch.from_numpy(image).permute(2, 0, 1)
    np.testing.assert_array_equal(viz.overlay(as_tensor, np.zeros((16, 16)), alpha=0.0), image)


def test_tensors_requiring_grad_with_a_batch_dim_give_the_same_results_as_arrays(rng):
    a = rng.normal(size=(1, 3, 8, 8))
    t = torch.tensor(a, requires_grad=True)
    assert viz.to_numpy(t).shape == (3, 8, 8)
    np.testing.assert_array_equal(viz.channel_sum(t), viz.channel_sum(a[0]))
    np.testing.assert_array_equal(viz.heatmap(t, reduce="max_abs"), viz.heatmap(a[0], reduce="max_abs"))
    single = torch.tensor(a[:, :1], requires_grad=True)
    np.testing.assert_array_equal(viz.normalize(single, sign="signed"), viz.normalize(a[0, 0], sign="signed"))


def test_grid_returns_a_figure_with_rows_times_cols_axes_and_the_given_titles(image, rng):
    rows = [[image, rng.uniform(size=(16, 16)), viz.normalize(rng.normal(size=(16, 16)), sign="signed")]] * 2
    fig = viz.grid(rows, row_titles=["cat", "dog"], col_titles=["input", "saliency", "signed"])
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes[:3]] == ["input", "saliency", "signed"]
    assert [ax.get_title() for ax in axes[3:]] == ["", "", ""]
    assert [axes[0].get_ylabel(), axes[3].get_ylabel()] == ["cat", "dog"]
    assert all(ax.get_xticks().size == 0 and ax.get_yticks().size == 0 for ax in axes)


def test_show_uses_bwr_from_minus_one_to_one_for_signed_maps_and_zero_to_one_otherwise(rng):
    _, (signed_ax, abs_ax, rgb_ax) = plt.subplots(1, 3)
    viz.show(signed_ax, viz.normalize(rng.normal(size=(8, 8)), sign="signed"))
    viz.show(abs_ax, viz.normalize(rng.normal(size=(8, 8))), title="abs")
    viz.show(rgb_ax, torch.rand(3, 8, 8))
    signed, absolute, rgb = signed_ax.images[0], abs_ax.images[0], rgb_ax.images[0]
    assert signed.get_cmap().name == "bwr" and signed.get_clim() == (-1.0, 1.0)
    assert absolute.get_cmap().name == "inferno" and absolute.get_clim() == (0.0, 1.0)
    assert abs_ax.get_title() == "abs"
    assert rgb.get_array().shape == (8, 8, 3)


def test_postprocessing_figure_shows_the_seven_panels_of_fig_31(image, rng):
    fig = viz.postprocessing_figure(image, rng.normal(size=(3, 16, 16)), rng.uniform(size=(4, 4)))
    assert [ax.get_title() for ax in fig.axes] == [
        "input", "3-channel map", "mode 1: sum", "1-channel map",
        "mode 2: replicate", "mode 3: pseudo-colour", "overlay",
    ]
    replicated = fig.axes[4].images[0].get_array()
    assert replicated.shape == (16, 16, 3)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: viz.overlay(np.zeros((8, 8, 4)), np.zeros((8, 8))), "image"),
        (lambda: viz.overlay(np.full((8, 8, 3), 2.0), np.zeros((8, 8))), "image"),
        (lambda: viz.overlay(np.zeros((8, 8, 3)), np.full((8, 8), 1.5)), "heatmap"),
        (lambda: viz.overlay(np.zeros((8, 8, 3)), np.zeros((8, 8)), alpha=1.5), "alpha"),
        (lambda: viz.normalize(np.zeros((8, 8)), sign="absolute"), "sign"),
        (lambda: viz.normalize(np.zeros((8, 8)), percentile=0), "percentile"),
        (lambda: viz.normalize(np.zeros((3, 8, 8))), "heatmap"),
        (lambda: viz.channel_sum(torch.zeros(1, 1, 3, 8, 8)), "attribution"),
        (lambda: viz.channel_sum(np.array([0.0, np.nan])[None]), "attribution"),
        (lambda: viz.heatmap(np.zeros((3, 8, 8)), reduce="mean"), "reduce"),
        (lambda: viz.heatmap(np.zeros((3, 8, 8)), reduce=None), "attribution"),
        (lambda: viz.heatmap(np.zeros((3, 8, 8)), reduce="abs_sum", sign="signed"), "sign"),
        (lambda: viz.show(plt.gca(), np.full((8, 8), 3.0)), "image_or_map"),
        (lambda: viz.grid([[np.zeros((4, 4))], []]), "rows"),
        (lambda: viz.grid([[np.zeros((4, 4))]], col_titles=["a", "b"]), "col_titles"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"^{argument}:"):
        call()


def test_grid_closes_its_figure_when_a_panel_is_invalid():
    before = plt.get_fignums()
    with pytest.raises(ValueError, match="^image_or_map:"):
        viz.grid([[np.zeros((4, 4)), np.full((4, 4), 3.0)]])
    assert plt.get_fignums() == before


def test_attribution_rgb_puts_zero_at_mid_grey_and_keeps_each_channels_sign():
    attribution = torch.zeros(1, 3, 4, 4)
    attribution[0, 0, 0, 0], attribution[0, 2, 1, 1] = 2.0, -2.0
    picture = viz.attribution_rgb(attribution, percentile=100)
    assert picture.shape == (4, 4, 3)
    assert picture[0, 0, 0] == 1.0 and picture[1, 1, 2] == 0.0 and picture[2, 2, 1] == 0.5
    with pytest.raises(ValueError, match="attribution: expected 3 channels"):
        viz.attribution_rgb(torch.zeros(1, 1, 4, 4))
