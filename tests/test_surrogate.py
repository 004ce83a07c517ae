"""LIME and SHAP agree with the `lime` package, Captum and exact Shapley values, satisfy the Shapley
axioms, work on black boxes, and reject bad input.

The reference values are computed here without vizlib: each coalition's image is built by hand and
forwarded on its own.
"""
import itertools
import math

import numpy as np
import pytest
import torch
from captum.attr import GradientShap, KernelShap, ShapleyValues
from scipy.stats import spearmanr
from sklearn.linear_model import Lasso
from sklearn.metrics import pairwise_distances

from vizlib import models
from vizlib.perturbation import grid_segments
from vizlib.surrogate import (gradient_shap, kernel_shap, lime, lime_kernel, segment_probe, shapley_coalitions,
                              shapley_exact, shapley_kernel, shapley_values)

TIGER_CAT = 282   # EfficientNet-Lite0's top class on chelsea


@pytest.fixture
def net(tiny_vgg):
    return tiny_vgg.eval()


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def linear_model(weights, bias=0.0):
    """f(x) = Σ w ⊙ x + bias, one output: every segment game of it is additive."""
    return lambda x: (weights * x).sum(dim=(1, 2, 3))[:, None] + bias


def coalition_outputs(model, image, segments, masks, baseline=0.0):
    """The model's outputs [S, K] on image [C, H, W] with the segments of each 0/1 row of `masks`
    kept and the rest set to `baseline`, one coalition at a time."""
    outputs = []
    with torch.no_grad():
        for row in masks:
            kept = torch.as_tensor(row).bool()[segments]
            outputs.append(model(torch.where(kept, image, torch.full_like(image, baseline))[None])[0])
    return torch.stack(outputs).double()


def per_segment(attributions, segments):
    """The value of each segment [N, M] from a map [N, C, H, W] that is constant on segments."""
    first_pixel = [int(torch.nonzero(segments.flatten() == label)[0]) for label in range(int(segments.max()) + 1)]
    return attributions[:, 0].flatten(1)[:, first_pixel]


def random_masks(n, count, seed=0):
    masks = torch.randint(0, 2, (n, count), generator=torch.Generator().manual_seed(seed))
    masks[0] = 1
    return masks


# --- LIME -----------------------------------------------------------------------------------------

def test_lime_equals_the_lime_package_with_the_same_coalitions(net, images):
    from lime.lime_base import LimeBase

    segments, target = grid_segments(32, 32, (3, 4)), 2
    masks = random_masks(150, 12)
    ours = lime(net, images, target, segments=segments, masks=masks)
    data = masks.numpy()
    distances = pairwise_distances(data, data[:1], metric="cosine").ravel()
    base = LimeBase(lambda d: np.sqrt(np.exp(-d ** 2 / 0.25 ** 2)), random_state=0)   # LimeImageExplainer's
    for i, image in enumerate(images):
        probabilities = coalition_outputs(net, image, segments, masks).softmax(dim=1).numpy()
        intercept, explanation, score, _ = base.explain_instance_with_data(
            data, probabilities, distances, target, num_features=12, feature_selection="none")
        weights = torch.zeros(12, dtype=torch.float64)
        for feature, weight in explanation:
            weights[feature] = weight
        torch.testing.assert_close(ours.weights[i].double(), weights, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ours.intercept[i].item(), float(intercept), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.score[i].item(), float(score), rtol=1e-5, atol=1e-6)


def test_lime_kernel_is_the_lime_package_kernel_on_cosine_distances():
    masks = random_masks(50, 7, seed=3)
    masks[1] = 0   # the empty coalition: distance 1 by scikit-learn's convention
    distances = pairwise_distances(masks.numpy(), masks[:1].numpy(), metric="cosine").ravel()
    expected = torch.from_numpy(np.sqrt(np.exp(-distances ** 2 / 0.4 ** 2)))
    torch.testing.assert_close(lime_kernel(masks, 0.4), expected, rtol=1e-12, atol=1e-12)


def test_lime_lasso_equals_scikit_learn_lasso_with_sample_weights(net, images):
    segments, masks = grid_segments(32, 32, (2, 4)), random_masks(200, 8, seed=1)
    ours = lime(net, images[:1], 0, segments=segments, masks=masks, regressor="lasso", alpha=3e-4,
                softmax=False)
    values = coalition_outputs(net, images[0], segments, masks)[:, 0].numpy()
    weights = lime_kernel(masks).numpy()
    reference = Lasso(alpha=3e-4, tol=1e-12, max_iter=100_000).fit(masks.numpy(), values, sample_weight=weights)
    assert (reference.coef_ == 0).any() and (reference.coef_ != 0).any()   # the l1 penalty is active
    torch.testing.assert_close(ours.weights[0].double(), torch.from_numpy(reference.coef_), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(ours.intercept[0].item(), float(reference.intercept_), rtol=1e-5, atol=1e-9)


def test_lime_and_kernel_shap_recover_the_segment_contributions_of_a_linear_model():
    generator = torch.Generator().manual_seed(0)
    weights, x = torch.randn(1, 3, 12, 12, generator=generator), torch.randn(2, 3, 12, 12, generator=generator)
    segments, baseline = grid_segments(12, 12, (3, 3)), 0.5
    model = linear_model(weights, bias=1.5)
    contribution = (weights * (x - baseline)).sum(dim=1)   # [N, H, W]
    exact = torch.stack([contribution[:, segments == label].sum(dim=1) for label in range(9)], dim=1)
    fitted = lime(model, x, 0, segments=segments, n_samples=100, alpha=0.0, softmax=False, baseline=baseline)
    shapley = kernel_shap(model, x, 0, segments=segments, n_samples=40, softmax=False, baseline=baseline)
    torch.testing.assert_close(fitted.weights, exact, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shapley.weights, exact, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fitted.score, torch.ones(2), rtol=0, atol=1e-6)   # an additive game fits exactly


def test_lime_map_paints_each_pixel_with_its_segment_weight(net, images):
    segments = grid_segments(32, 32, (2, 3))
    result = lime(net, images, 1, segments=segments, n_samples=64)
    assert result.map.shape == (2, 1, 32, 32) and result.masks.shape == (64, 6)
    torch.testing.assert_close(result.map[:, 0], result.weights[:, segments])
    assert (result.masks[0] == 1).all()   # the first coalition is the image itself, as in `lime`


# --- Shapley values: exact ------------------------------------------------------------------------

def test_shapley_exact_equals_captum_shapley_values_on_a_small_net(net, images):
    segments = grid_segments(32, 32, (1, 5))   # Captum walks all 5! orderings
    ours = shapley_exact(net, images, 3, segments=segments, baseline=0.2)
    theirs = ShapleyValues(net).attribute(images, target=3, baselines=0.2, feature_mask=segments[None, None],
                                          perturbations_per_eval=64)
    torch.testing.assert_close(ours.map.expand_as(theirs), theirs, rtol=1e-4, atol=1e-6)


def test_shapley_values_are_the_average_marginal_contribution_over_orderings():
    count = 4
    game = torch.randn(2 ** count, generator=torch.Generator().manual_seed(0)).double()
    game[0] = 0
    expected = torch.zeros(count, dtype=torch.float64)
    for order in itertools.permutations(range(count)):
        coalition = 0
        for player in order:
            expected[player] += game[coalition | 1 << player] - game[coalition]
            coalition |= 1 << player
    torch.testing.assert_close(shapley_values(game), expected / math.factorial(count), rtol=1e-12, atol=1e-12)


def test_shapley_values_satisfy_efficiency_symmetry_dummy_and_linearity():
    count = 5
    coalitions = torch.arange(2 ** count)
    members = ((coalitions[:, None] >> torch.arange(count)) & 1).double()
    # A glove-like game: players 0 and 1 are interchangeable, player 4 adds nothing to any coalition.
    first = torch.minimum(members[:, 0] + members[:, 1], members[:, 2] + members[:, 3]) + 0.3 * members[:, 2]
    second = (members[:, :4].sum(1) >= 2).double() * 2.0
    phi, phi_second = shapley_values(first), shapley_values(second)
    torch.testing.assert_close(phi.sum(), first[-1] - first[0], rtol=0, atol=1e-12)     # efficiency
    torch.testing.assert_close(phi[0], phi[1], rtol=0, atol=1e-12)                       # symmetry
    torch.testing.assert_close(phi[4], torch.tensor(0.0, dtype=torch.float64), rtol=0, atol=1e-12)   # dummy
    torch.testing.assert_close(shapley_values(first + 3 * second), phi + 3 * phi_second, rtol=0, atol=1e-12)
    assert phi[2] > phi[3]   # the 0.3 bonus of player 2 shows


def test_shapley_exact_is_efficient_on_lite0_probabilities(lite0, chelsea):
    segments = grid_segments(224, 224, (1, 3))
    result = shapley_exact(lite0, chelsea, TIGER_CAT, segments=segments, softmax=True, batch_size=4)
    with torch.no_grad():
        full = lite0(chelsea).softmax(1)[0, TIGER_CAT]
        empty = lite0(torch.zeros_like(chelsea)).softmax(1)[0, TIGER_CAT]
    torch.testing.assert_close(result.weights.sum(), full - empty, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.intercept[0], empty, rtol=1e-4, atol=1e-6)


# --- Kernel SHAP ----------------------------------------------------------------------------------

def test_kernel_shap_with_all_coalitions_equals_exact_shapley_values(net, images):
    segments = grid_segments(32, 32, (2, 3))
    exact = shapley_exact(net, images, 1, segments=segments, baseline=-0.5)
    enumerated = kernel_shap(net, images, 1, segments=segments, n_samples=62, baseline=-0.5)
    injected = kernel_shap(net, images, 1, segments=segments, baseline=-0.5, masks=exact.masks)
    assert len(enumerated.masks) == 2 ** 6 - 2
    torch.testing.assert_close(enumerated.weights, exact.weights, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(injected.weights, exact.weights, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(enumerated.intercept, exact.intercept)


def test_shapley_kernel_weights_of_every_coalition_sum_per_size_to_the_size_mass():
    count, all_masks = 6, (torch.arange(2 ** 6)[:, None] >> torch.arange(6)) & 1
    kernel = shapley_kernel(all_masks)
    for size in range(1, count):
        torch.testing.assert_close(kernel[all_masks.sum(1) == size].sum().item(), (count - 1) / (size * (count - size)))
    assert torch.isinf(kernel[0]) and torch.isinf(kernel[-1])


def test_shapley_coalitions_enumerate_small_sizes_and_pair_the_draws():
    masks = shapley_coalitions(10, 100, paired=True, generator=torch.Generator().manual_seed(0))
    sizes = masks.sum(1)
    assert len(masks) == 100 and ((sizes > 0) & (sizes < 10)).all()
    assert (sizes == 1).sum() == 10 and (sizes == 9).sum() == 10   # sizes 1 and 9 are complete (20 rows)
    drawn = masks[20:]
    assert torch.equal(drawn[1::2], 1 - drawn[::2])                 # each draw is followed by its complement


def test_kernel_shap_and_captum_kernel_shap_converge_to_the_exact_values(net, images):
    segments = grid_segments(32, 32, (2, 4))
    exact = shapley_exact(net, images[:1], 2, segments=segments).weights
    scale = exact.abs().max()

    def ours(n):
        return (kernel_shap(net, images[:1], 2, segments=segments, n_samples=n).weights - exact).abs().max() / scale

    def captum(n):
        torch.manual_seed(0)
        attributions = KernelShap(net).attribute(images[:1], target=2, feature_mask=segments[None, None],
                                                 n_samples=n, perturbations_per_eval=64)
        return (per_segment(attributions, segments) - exact).abs().max() / scale

    errors = {n: (ours(n).item(), captum(n).item()) for n in (40, 160, 1500)}
    print("relative max error (vizlib, Captum) by n:", errors)
    assert errors[160][0] < errors[40][0] and errors[1500][0] < 1e-6   # 1500 > 2^8: enumerated
    assert errors[1500][1] < errors[40][1] and errors[1500][1] < 0.1


def test_kernel_shap_is_efficient_and_starts_from_the_baseline_score(net, images):
    segments = grid_segments(32, 32, 4)
    result = kernel_shap(net, images, 0, segments=segments, n_samples=200, baseline=0.1)
    with torch.no_grad():
        full, empty = net(images)[:, 0], net(torch.full_like(images, 0.1))[:, 0]
    torch.testing.assert_close(result.weights.sum(1), full - empty, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.intercept, empty, rtol=1e-5, atol=1e-6)
    assert (result.score <= 1).all() and (result.score > 0).all()


# --- determinism, batching, black boxes -----------------------------------------------------------

@pytest.mark.parametrize("method", [lime, kernel_shap])
def test_sampled_surrogates_are_deterministic_under_seed(net, images, method):
    segments = grid_segments(32, 32, 4)
    first = method(net, images, 1, segments=segments, n_samples=100, seed=5)
    again = method(net, images, 1, segments=segments, n_samples=100, seed=5)
    other = method(net, images, 1, segments=segments, n_samples=100, seed=6)
    assert torch.equal(first.weights, again.weights) and not torch.equal(first.weights, other.weights)


@pytest.mark.parametrize("method", [lime, kernel_shap, shapley_exact])
def test_surrogates_do_not_depend_on_batch_size_and_treat_the_module_as_a_black_box(net, images, method):
    segments = grid_segments(32, 32, (2, 3))
    options = {} if method is shapley_exact else {"n_samples": 40}
    chunked = method(net, images, 1, segments=segments, batch_size=7, baseline="noise", **options)
    whole = method(net, images, 1, segments=segments, batch_size=None, baseline="noise", **options)
    black_box = method(lambda inputs: net(inputs).detach(), images, 1, segments=segments, baseline="noise",
                       **options)
    torch.testing.assert_close(chunked.weights, whole.weights, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(black_box.weights, whole.weights, rtol=1e-5, atol=1e-7)


def test_lime_is_less_stable_across_seeds_than_kernel_shap_at_100_1000_and_5000_samples(net, images):
    # The survey's claim that LIME is unstable, measured: the rank correlation of the weights between
    # three seeds, for both methods on the same game (the logit of class 1 on a 4×4 grid).
    segments = grid_segments(32, 32, 4)

    def agreement(method, n):
        runs = [method(net, images[:1], 1, segments=segments, n_samples=n, softmax=False, seed=seed,
                       batch_size=512).weights[0] for seed in range(3)]
        return np.mean([spearmanr(a, b).statistic for a, b in itertools.combinations(runs, 2)])

    budgets = (100, 1000, 5000)
    stability = {method.__name__: [agreement(method, n) for n in budgets] for method in (lime, kernel_shap)}
    print("rank correlation between seeds at", budgets, stability)
    assert stability["lime"][0] < stability["lime"][1] <= stability["lime"][2]   # more samples, more stable
    assert stability["kernel_shap"][0] >= stability["lime"][0]                   # paired, stratified draws
    assert min(stability["lime"][2], stability["kernel_shap"][2]) > 0.99


def test_per_image_segment_maps(net, images):
    segments = torch.stack([grid_segments(32, 32, (2, 3)), grid_segments(32, 32, (3, 2))])
    together = kernel_shap(net, images, 1, segments=segments, n_samples=62)
    apart = [kernel_shap(net, images[i:i + 1], 1, segments=segments[i], n_samples=62) for i in range(2)]
    torch.testing.assert_close(together.weights, torch.cat([one.weights for one in apart]), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(together.map, torch.cat([one.map for one in apart]))


# --- segment probe --------------------------------------------------------------------------------

def test_segment_probe_scores_each_segment_shown_alone(net, images):
    segments = grid_segments(32, 32, (2, 2))
    probed = segment_probe(net, images, 3, segments=segments, baseline=-0.2)
    for i, image in enumerate(images):
        alone = coalition_outputs(net, image, segments, torch.eye(4), baseline=-0.2).softmax(dim=1)[:, 3]
        torch.testing.assert_close(probed[i].double(), alone, rtol=1e-5, atol=1e-7)


# --- gradient SHAP --------------------------------------------------------------------------------

def captum_gradient_shap(model, x, baselines, n_samples, stdev=0.0):
    torch.manual_seed(0)
    np.random.seed(0)
    return GradientShap(model).attribute(x, baselines=baselines, target=0, n_samples=n_samples, stdevs=stdev)


def test_gradient_shap_on_a_quadratic_model_is_the_gradient_at_a_mean_point_near_the_middle():
    # f(x) = ½ Σ a x², ∇f(p) = a p is linear in p, so the mean over draws of (x − b) ⊙ ∇f(b + α (x − b))
    # is exactly (x − b) ⊙ ∇f(b + ᾱ (x − b)) with ᾱ the mean of the draws of α ~ U(0, 1).
    generator = torch.Generator().manual_seed(0)
    a, x = torch.rand(1, 2, 5, 5, generator=generator) + 0.5, torch.randn(2, 2, 5, 5, generator=generator)
    b = torch.randn(1, 2, 5, 5, generator=generator)
    model = lambda inputs: (0.5 * a * inputs ** 2).sum(dim=(1, 2, 3))[:, None]   # noqa: E731
    step = a * (x - b) ** 2
    for result in (gradient_shap(model, x, 0, baselines=b, n_samples=400),
                   captum_gradient_shap(model, x, b, n_samples=400)):
        offset = result - a * (x - b) * b
        alpha = (offset * step).sum(dim=(1, 2, 3)) / (step ** 2).sum(dim=(1, 2, 3))
        torch.testing.assert_close(offset, alpha.view(-1, 1, 1, 1) * step, rtol=1e-4, atol=1e-5)
        assert (alpha - 0.5).abs().max() < 0.08   # 5.5 standard errors of a mean of 400 uniforms


def test_gradient_shap_on_a_linear_model_is_w_times_x_minus_a_mixture_of_the_baselines():
    generator = torch.Generator().manual_seed(1)
    w, x = torch.randn(1, 3, 6, 6, generator=generator), torch.randn(2, 3, 6, 6, generator=generator)
    baselines = torch.randn(3, 3, 6, 6, generator=generator)
    for result in (gradient_shap(linear_model(w), x, 0, baselines=baselines, n_samples=600),
                   captum_gradient_shap(linear_model(w), x, baselines, n_samples=600)):
        for i in range(2):
            # result / w = x − Σ_b p_b b: solve for the shares p_b by least squares over the pixels.
            design = baselines.flatten(1).T.double()
            shares = torch.linalg.lstsq(design, (x[i] - result[i] / w[0]).flatten().double()[:, None]).solution[:, 0]
            torch.testing.assert_close(design @ shares, (x[i] - result[i] / w[0]).flatten().double(),
                                       rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(shares.sum().item(), 1.0, rtol=0, atol=1e-5)
            assert (shares - 1 / 3).abs().max() < 0.1   # 5 standard errors of a share of 600 draws


def test_gradient_shap_stdev_is_absolute_noise_added_to_the_input_as_in_captum():
    # With one draw on a linear model, attribution / w = x + ε − b, so ε can be read off.
    generator = torch.Generator().manual_seed(2)
    w, x = torch.rand(1, 3, 16, 16, generator=generator) + 0.5, torch.randn(1, 3, 16, 16, generator=generator)
    b = torch.zeros(1, 3, 16, 16)
    for result in (gradient_shap(linear_model(w), x, 0, baselines=b, n_samples=1, stdev=0.3),
                   captum_gradient_shap(linear_model(w), x, b, n_samples=1, stdev=0.3)):
        noise = result / w - x
        assert abs(noise.std().item() - 0.3) < 0.03 and abs(noise.mean().item()) < 0.05


def test_gradient_shap_does_not_depend_on_batch_size_and_leaves_the_net_unchanged(net, images):
    baselines = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    chunked = gradient_shap(net, images, 1, baselines=baselines, n_samples=6, stdev=0.1, batch_size=5)
    whole = gradient_shap(net, images, 1, baselines=baselines, n_samples=6, stdev=0.1, batch_size=None)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)
    assert all(parameter.requires_grad for parameter in net.parameters()) and not net.training


# --- bad input ------------------------------------------------------------------------------------

def test_bad_segments_masks_and_options_are_rejected_with_the_argument_named(net, images):
    grid = grid_segments(32, 32, 2)
    with pytest.raises(ValueError, match="segments: expected shape"):
        lime(net, images, 0, segments=grid[:16])
    gap = grid.clone()
    gap[gap == 1] = 0
    with pytest.raises(ValueError, match="segments: label 1 has no pixels"):
        kernel_shap(net, images, 0, segments=gap)
    with pytest.raises(ValueError, match="segments: 17 segments"):
        shapley_exact(net, images, 0, segments=torch.arange(32 * 32).view(32, 32) % 17)
    with pytest.raises(ValueError, match="n_samples: expected an int >= 2"):
        lime(net, images, 0, segments=grid, n_samples=1)
    with pytest.raises(ValueError, match="n_samples: the 2 coalitions do not determine"):
        kernel_shap(net, images, 0, segments=grid_segments(32, 32, 3), n_samples=2)
    with pytest.raises(ValueError, match="n_samples: the 3 coalitions do not determine"):
        lime(net, images, 0, segments=grid, n_samples=3, alpha=0.0)
    with pytest.raises(ValueError, match=r"masks: expected a 0/1 tensor \[S, 4\]"):
        lime(net, images, 0, segments=grid, masks=torch.ones(10, 5))
    with pytest.raises(ValueError, match="masks: expected only 0 and 1"):
        kernel_shap(net, images, 0, segments=grid, masks=torch.full((10, 4), 2))
    with pytest.raises(ValueError, match="regressor: expected one of 'ridge', 'lasso'"):
        lime(net, images, 0, segments=grid, regressor="elastic")
    with pytest.raises(ValueError, match="baselines: expected"):
        gradient_shap(net, images, 0, baselines=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="stdev"):
        gradient_shap(net, images, 0, baselines=0.0, stdev=-1.0)


def test_a_model_with_the_wrong_number_of_classes_is_named_in_the_error(net, images):
    with pytest.raises(ValueError, match="target: class index 9 is out of range"):
        kernel_shap(net, images, 9, segments=grid_segments(32, 32, 2))


# --- Deep SHAP ------------------------------------------------------------------------------------

def test_deep_shap_equals_captum_deep_lift_shap_on_an_average_pooled_net(images):
    from captum.attr import DeepLiftShap

    from vizlib.surrogate import deep_shap

    torch.manual_seed(0)
    net = models.AllConvNet(in_channels=3, num_classes=4, widths=(4, 8)).eval()
    baselines = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ours = deep_shap(net, images, 1, baselines=baselines, batch_size=4)
    theirs = DeepLiftShap(net).attribute(images, baselines=baselines, target=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_deep_shap_balances_exactly_on_a_max_pooled_net(net, images):
    from vizlib.surrogate import deep_shap

    baselines = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ours = deep_shap(net, images, 2, baselines=baselines)
    with torch.no_grad():
        expected = net(images)[:, 2] - net(baselines)[:, 2].mean()
    torch.testing.assert_close(ours.sum(dim=(1, 2, 3)), expected, rtol=1e-4, atol=1e-5)
