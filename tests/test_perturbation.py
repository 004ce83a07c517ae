"""Perturbation methods agree with Captum and with closed forms, work on black boxes, and reject bad input.

The tests that use `lite0` (occlusion, meaningful perturbation) are also checked by conftest's guard to
leave the model unchanged: no hooks, the same modules, mode and `requires_grad` flags.
"""
import pytest
import torch
import torch.nn.functional as F
from captum.attr import FeatureAblation, Occlusion

from vizlib import data
from vizlib.perturbation import (blur_by_mask, blur_pyramid, fill, gaussian_blur, grid_segments, leave_one_out,
                                 meaningful_perturbation, occlusion, prediction_difference, rise, superpixels)

TIGER_CAT = 282   # EfficientNet-Lite0's top class on chelsea


@pytest.fixture
def net(tiny_vgg):
    return tiny_vgg.eval()


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def linear_model(weights):
    """f(x) = Σ w ∘ x, a one-class model whose perturbation maps have closed forms."""
    return lambda x: (weights * x).sum(dim=(1, 2, 3))[:, None]


def captum_occlusion(model, x, target, window, stride, baseline, perturbations_per_eval=1):
    (h, w), (sh, sw) = window, stride
    return Occlusion(model).attribute(x, target=target, sliding_window_shapes=(x.shape[1], h, w),
                                      strides=(x.shape[1], sh, sw), baselines=baseline,
                                      perturbations_per_eval=perturbations_per_eval)


# --- occlusion ------------------------------------------------------------------------------------

@pytest.mark.parametrize("window, stride", [
    ((8, 8), (8, 8)),     # windows tile the image
    ((5, 5), (3, 3)),     # overlapping; the last window is cut off at the border
    ((7, 4), (2, 3)),     # rectangular window, unequal strides, cut off in both directions
    ((32, 32), (1, 1)),   # a single window covering the whole image
    ((6, 6), (6, 6)),     # non-overlapping, the last row and column cut off
])
def test_occlusion_equals_captum_occlusion_on_a_small_net(net, images, window, stride):
    ours = occlusion(net, images, 1, window=window, stride=stride, baseline=0.3, batch_size=16)
    theirs = captum_occlusion(net, images, 1, window, stride, 0.3, perturbations_per_eval=16)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_occlusion_equals_captum_occlusion_on_lite0_with_a_cut_off_last_window(lite0, chelsea):
    # Windows start at 0, 80, 160; the last ones run past the 224-pixel border and are cut off.
    ours = occlusion(lite0, chelsea, TIGER_CAT, window=(96, 96), stride=80, batch_size=9)
    theirs = captum_occlusion(lite0, chelsea, TIGER_CAT, (96, 96), (80, 80), 0.0, perturbations_per_eval=9)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_occlusion_with_a_tensor_baseline_equals_captum(net, images):
    baseline = fill(images, "blur")
    ours = occlusion(net, images, 2, window=(6, 6), stride=4, baseline=baseline)
    theirs = captum_occlusion(net, images, 2, (6, 6), (4, 4), baseline, perturbations_per_eval=16)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_occlusion_of_a_linear_model_is_the_mean_windowed_sum_of_w_times_x():
    generator = torch.Generator().manual_seed(0)
    weights, x = torch.randn(1, 2, 11, 13, generator=generator), torch.randn(1, 2, 11, 13, generator=generator)
    h, w, stride = 4, 5, 3
    contribution = (weights * x).sum(dim=1)[0]
    summed, covered = torch.zeros(11, 13), torch.zeros(11, 13)
    for top in range(0, 11 - h + stride, stride):        # the last start reaches the border
        for left in range(0, 13 - w + stride, stride):
            summed[top:top + h, left:left + w] += contribution[top:top + h, left:left + w].sum()
            covered[top:top + h, left:left + w] += 1
    ours = occlusion(linear_model(weights), x, 0, window=(h, w), stride=stride)
    assert (covered > 0).all()
    torch.testing.assert_close(ours[0, 0], summed / covered, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[0, 1], ours[0, 0])   # the window covers all channels


def test_occlusion_does_not_depend_on_batch_size(net, images):
    one = occlusion(net, images, 0, window=(8, 8), stride=6, batch_size=1)
    all_at_once = occlusion(net, images, 0, window=(8, 8), stride=6, batch_size=None)
    torch.testing.assert_close(one, all_at_once, rtol=1e-5, atol=1e-7)


def test_occlusion_noise_fill_is_deterministic_under_seed(net, images):
    first = occlusion(net, images, 0, window=(8, 8), stride=4, baseline="noise", seed=3)
    again = occlusion(net, images, 0, window=(8, 8), stride=4, baseline="noise", seed=3)
    other = occlusion(net, images, 0, window=(8, 8), stride=4, baseline="noise", seed=4)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_occlusion_of_a_flat_image_is_zero_with_mean_blur_and_inpaint_fills(net):
    flat = torch.full((1, 3, 32, 32), 0.25)   # every such fill reproduces the image itself
    for baseline in ("mean", "blur", "inpaint"):
        torch.testing.assert_close(occlusion(net, flat, 0, window=(8, 8), stride=8, baseline=baseline),
                                   torch.zeros_like(flat), atol=1e-6, rtol=0)


def test_named_fills_are_the_normalised_values_of_mid_grey_and_black_pixels(images):
    assert torch.equal(fill(images, "mid-grey"), torch.zeros_like(images))
    assert torch.equal(fill(images, "black"), torch.full_like(images, -127 / 128))
    assert torch.equal(fill(images, "mid-grey"), fill(images, 0.0))


# --- leave-one-out, segments ----------------------------------------------------------------------

def test_leave_one_out_equals_captum_feature_ablation_on_a_grid(net, images):
    segments = grid_segments(32, 32, 3)
    attributions, drops = leave_one_out(net, images, 2, segments=segments, baseline=0.5)
    theirs = FeatureAblation(net).attribute(images, target=2, feature_mask=segments[None, None], baselines=0.5)
    torch.testing.assert_close(attributions, theirs, rtol=1e-5, atol=1e-7)
    assert drops.shape == (2, 9)
    torch.testing.assert_close(drops[:, 4], attributions[:, 0, 16, 16])   # the centre cell


def test_leave_one_out_equals_captum_feature_ablation_on_superpixels_per_image(net, images):
    segments = torch.stack([superpixels(data.deprocess(image), "slic", n_segments=12) for image in images])
    attributions, _ = leave_one_out(net, images, 1, segments=segments)
    theirs = FeatureAblation(net).attribute(images, target=1, feature_mask=segments[:, None])
    torch.testing.assert_close(attributions, theirs, rtol=1e-5, atol=1e-7)


def test_leave_one_out_of_a_linear_model_is_the_segment_sum_of_w_times_x():
    generator = torch.Generator().manual_seed(0)
    weights, x = torch.randn(1, 3, 8, 8, generator=generator), torch.randn(1, 3, 8, 8, generator=generator)
    segments = grid_segments(8, 8, (2, 4))
    _, drops = leave_one_out(linear_model(weights), x, 0, segments=segments)
    contribution = (weights * x).sum(dim=1)[0]
    expected = torch.stack([contribution[segments == label].sum() for label in range(8)])
    torch.testing.assert_close(drops[0], expected, rtol=1e-5, atol=1e-5)


def test_grid_segments_split_evenly_to_within_one_pixel():
    segments = grid_segments(10, 11, 3)
    assert segments.shape == (10, 11) and set(segments.unique().tolist()) == set(range(9))
    heights, widths = (segments[:, 0] // 3).bincount(), (segments[0] % 3).bincount()
    assert heights.tolist() == [4, 3, 3] and widths.tolist() == [4, 4, 3]


@pytest.mark.parametrize("method", ["slic", "quickshift", "felzenszwalb"])
def test_superpixels_label_every_pixel_with_consecutive_labels(method):
    image = data.load_image("chelsea")[:96, :96]
    segments = superpixels(image, method)
    assert segments.shape == (96, 96) and segments.dtype == torch.long
    assert segments.unique().tolist() == list(range(int(segments.max()) + 1)) and segments.max() > 1


# --- RISE -----------------------------------------------------------------------------------------

def rise_expectation(weights, x, cell, p):
    """E[f(x ⊙ M) M(u)] / p for a linear f, exactly: a mask is M = Σ_a φ_a B_a with bilinear
    weights φ_a and independent B_a ~ Bernoulli(p), so E[M(u) M(v)] = p² Σφ(u)Σφ(v) + p(1-p) Σ_a φ_a(u) φ_a(v),
    averaged over the uniformly drawn shifts."""
    height, width = x.shape[-2:]
    cell_h, cell_w = -(-height // cell), -(-width // cell)
    basis = torch.eye(cell * cell).view(cell * cell, 1, cell, cell)
    smooth = F.interpolate(basis, size=((cell + 1) * cell_h, (cell + 1) * cell_w), mode="bilinear",
                           align_corners=False)[:, 0]
    contribution = (weights * x).sum(dim=1)[0]
    expectation = torch.zeros(height, width)
    for dy in range(cell_h):
        for dx in range(cell_w):
            phi = smooth[:, dy:dy + height, dx:dx + width]                     # [cells, H, W]
            total = phi.sum(0)
            expectation += p * p * total * (total * contribution).sum() \
                + p * (1 - p) * (phi * (phi * contribution).sum(dim=(1, 2))[:, None, None]).sum(0)
    return expectation / (cell_h * cell_w * p)


def test_rise_on_a_linear_model_converges_to_its_analytic_expectation():
    generator = torch.Generator().manual_seed(0)
    weights, x = torch.randn(1, 1, 16, 16, generator=generator), torch.randn(1, 1, 16, 16, generator=generator)
    expected = rise_expectation(weights, x, cell=4, p=0.5)

    def correlation(n_masks):
        saliency = rise(linear_model(weights), x, 0, n_masks=n_masks, cell=4, p=0.5, batch_size=500)
        return torch.corrcoef(torch.stack([saliency.flatten(), expected.flatten()]))[0, 1].item()

    few, many = correlation(100), correlation(8000)
    assert few < many and many > 0.98, (few, many)


def test_rise_is_deterministic_under_seed_and_independent_of_batch_size(net, images):
    first = rise(net, images, 0, n_masks=40, cell=4, seed=5, batch_size=7)
    again = rise(net, images, 0, n_masks=40, cell=4, seed=5, batch_size=64)
    other = rise(net, images, 0, n_masks=40, cell=4, seed=6)
    torch.testing.assert_close(first, again, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(first, other)


# --- prediction difference analysis ---------------------------------------------------------------

def region_model(top, left, side, gain=4.0):
    """Two classes; class 1's logit is `gain` times the mean of one side×side region, class 0's is 0."""
    def model(batch):
        evidence = gain * batch[:, :, top:top + side, left:left + side].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(evidence), evidence], dim=1)
    return model


def test_prediction_difference_is_zero_exactly_for_windows_that_miss_the_evidence(images):
    model = region_model(4, 4, 6)
    evidence = prediction_difference(model, images, 1, window=4, padding=2, stride=4, samples=3)
    assert evidence.shape == images.shape
    far = evidence[:, 0, 12:, 12:]                  # windows starting at 12 or later never touch rows/cols 4..9
    assert torch.equal(far, torch.zeros_like(far))
    assert evidence[:, 0, 4:10, 4:10].abs().min() > 0


def test_prediction_difference_of_one_window_is_the_log_odds_drop_of_the_mean_sampled_probability():
    # A single window covering the whole image has no frame: every draw is the patch Gaussian's
    # marginal, so WE = log2 odds p(x) - log2 odds mean_s p(x̃_s), with x̃_s = μ + L z_s (seeded per copy).
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(200, 1, 4, 4, generator=generator)
    x = torch.randn(1, 1, 4, 4, generator=generator)
    model = region_model(0, 0, 4)
    evidence = prediction_difference(model, x, 1, window=4, padding=0, samples=5, reference=reference, seed=2)
    vectors = reference.double().flatten(1)
    mean, covariance = vectors.mean(0), vectors.T.cov(correction=1)
    covariance += 1e-4 * covariance.diagonal().mean() * torch.eye(16, dtype=torch.float64)
    spread = torch.linalg.cholesky(covariance)
    draws = torch.stack([mean + spread @ torch.randn(16, generator=torch.Generator().manual_seed(2 * 2 ** 32 + s),
                                                     dtype=torch.float64) for s in range(5)])
    probability = lambda batch: model(batch.float().view(-1, 1, 4, 4)).softmax(dim=-1)[:, 1].double()
    log_odds = lambda p: torch.log2(p / (1 - p))
    expected = log_odds(probability(x)) - log_odds(probability(draws).mean())
    torch.testing.assert_close(evidence[0, 0], torch.full((4, 4), expected.item()), rtol=1e-5, atol=1e-6)


def test_conditional_sampling_restores_a_patch_its_frame_determines_and_marginal_sampling_does_not():
    # On flat images a window's pixels equal their frame's, so the conditional draw is the window
    # itself: nothing is removed and WE ~ 0. The marginal draw forgets the frame.
    levels = torch.linspace(-1, 1, 60).view(-1, 1, 1, 1)
    reference = levels.expand(60, 3, 12, 12) + 0.01 * torch.randn(60, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    flat = torch.full((1, 3, 12, 12), 0.6)
    model = region_model(0, 0, 12)
    settings = dict(window=4, padding=2, stride=4, samples=4, reference=reference)
    conditional = prediction_difference(model, flat, 1, sampling="conditional", **settings)
    marginal = prediction_difference(model, flat, 1, sampling="marginal", **settings)
    assert conditional.abs().max() < 0.05 < marginal.abs().mean()


def test_prediction_difference_is_deterministic_under_seed_and_independent_of_batch_size(net, images):
    settings = dict(window=8, padding=2, stride=8, samples=2)
    first = prediction_difference(net, images, 0, batch_size=3, seed=1, **settings)
    again = prediction_difference(net, images, 0, batch_size=None, seed=1, **settings)
    other = prediction_difference(net, images, 0, seed=2, **settings)
    torch.testing.assert_close(first, again, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": 40}, r"window: 40×40 is larger than the image"),
    ({"window": 4, "stride": 5}, r"stride: 5×5 is larger than the window 4×4"),
    ({"padding": -1}, r"padding: expected an int >= 0"),
    ({"samples": 0}, r"samples: expected an int >= 1"),
    ({"sampling": "gan"}, r"sampling: expected one of 'conditional', 'marginal'"),
    ({"reference": torch.zeros(2, 1, 32, 32)}, r"reference: expected 3 channels"),
])
def test_prediction_difference_rejects_bad_arguments_by_name(net, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prediction_difference(net, images, 0, **{"window": 8, "stride": 8, **kwargs})


# --- meaningful perturbation ----------------------------------------------------------------------

def test_meaningful_perturbation_deletes_the_cat_with_a_small_blur_mask(lite0, chelsea):
    # 20 Adam steps with the paper's weights (it runs 500) already push the probability from 0.39 to ~0.05.
    result = meaningful_perturbation(lite0, chelsea, TIGER_CAT, perturbation="blur", steps=20)
    mask, history = result
    assert mask.shape == (1, 1, 224, 224) and 0 <= mask.min() and mask.max() <= 1
    # Φ(x; m) away from the border (where the jitter's edge padding changes the blur): σ0 (1 - m).
    inside = (..., slice(40, -40), slice(40, -40))
    torch.testing.assert_close(result.perturbed[inside], blur_by_mask(blur_pyramid(chelsea, 10.0), mask)[inside])
    with torch.no_grad():
        deleted = lite0(result.perturbed).softmax(dim=-1)[0, TIGER_CAT]
    assert history["score"][0, 0] > 0.3                     # the cat before deletion
    assert deleted < 0.1                                     # and after, with the returned mask
    assert (1 - mask).mean() < 0.35                          # deleting less than 35 % of the image
    objective = history["objective"][:, 0]
    assert objective[-5:].mean() < 0.5 * objective[0]        # the minimized loss fell


def test_blur_pyramid_runs_from_the_largest_blur_to_the_image_itself(images):
    pyramid = blur_pyramid(images, 6.0, levels=4)
    assert pyramid.shape == (4, *images.shape)
    for level, sigma in enumerate([6.0, 4.0, 2.0]):
        torch.testing.assert_close(pyramid[level], gaussian_blur(images, sigma))
    torch.testing.assert_close(pyramid[-1], images)


def test_blur_by_mask_blurs_deleted_pixels_by_one_minus_m_times_sigma_max(images):
    pyramid = blur_pyramid(images, 6.0, levels=4)
    keep, delete = torch.ones_like(images[:, :1]), torch.zeros_like(images[:, :1])
    torch.testing.assert_close(blur_by_mask(pyramid, keep), images)                          # σ = 0
    torch.testing.assert_close(blur_by_mask(pyramid, delete), gaussian_blur(images, 6.0))    # σ = σ_max
    torch.testing.assert_close(blur_by_mask(pyramid, keep / 3), gaussian_blur(images, 4.0))  # m = 1/3: σ = 4
    half = blur_by_mask(pyramid, keep / 2)                    # between levels: the mean of σ = 2 and σ = 4
    torch.testing.assert_close(half, (gaussian_blur(images, 2.0) + gaussian_blur(images, 4.0)) / 2)


def test_meaningful_perturbation_jitters_the_image_with_edge_padding_not_wrapping():
    # lr = 0 keeps the mask at 1, so each step scores the shifted image alone: x(· - τ), |τ| <= 1.
    generator = torch.Generator().manual_seed(0)
    weights, x = torch.randn(2, 1, 6, 6, generator=generator), torch.randn(1, 1, 6, 6, generator=generator)
    model = lambda batch: (weights[None] * batch[:, None]).sum(dim=(2, 3, 4))
    history = meaningful_perturbation(model, x, 0, steps=30, lr=0.0, mask_scale=1, jitter=1).history
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    shifted = torch.stack([padded[0, :, top:top + 6, left:left + 6] for top in range(3) for left in range(3)])
    rolled = torch.stack([torch.roll(x[0], (dy, dx), dims=(-2, -1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    probability = lambda batch: model(batch).softmax(dim=-1)[:, 0]
    seen = history["score"][:, 0]
    distance = (seen[:, None] - probability(shifted)[None]).abs().min(dim=1).values
    assert distance.max() < 1e-6                                          # every step saw a padded shift
    assert len(torch.unique(seen)) > 3                                   # of several different offsets
    wrapped_only = probability(rolled)[[0, 2, 6, 8]]                     # diagonal wraps differ from padding
    assert (seen[:, None] - wrapped_only[None]).abs().min() > 1e-4


@pytest.mark.parametrize("perturbation", ["blur", "constant", "noise"])
def test_meaningful_perturbation_is_deterministic_under_seed(net, images, perturbation):
    first = meaningful_perturbation(net, images, 0, perturbation=perturbation, steps=4, mask_scale=4, seed=2)
    again = meaningful_perturbation(net, images, 0, perturbation=perturbation, steps=4, mask_scale=4, seed=2)
    assert torch.equal(first.mask, again.mask) and torch.equal(first.history["score"], again.history["score"])
    assert first.history["score"].shape == first.history["l1"].shape == (4, 2)


# --- black boxes and the model's state ------------------------------------------------------------

def test_every_black_box_method_on_a_no_grad_callable_equals_the_module_version(net, images):
    def black_box(batch):
        with torch.no_grad():
            return net(batch)

    # A fixed batch size: "auto" may time the callable and the module differently. The module runs
    # through its inference copy (BatchNorm folded), so the two agree to float round-off, not bit
    # for bit: the tolerance is 1e-5 of the map's largest value.
    segments = grid_segments(32, 32, 4)
    for method in (lambda model: occlusion(model, images, 3, window=(6, 6), stride=4, baseline="noise",
                                           batch_size=16),
                   lambda model: leave_one_out(model, images, 3, segments=segments, batch_size=16)[0],
                   lambda model: rise(model, images, 3, n_masks=30, cell=4, batch_size=16)):
        on_callable, on_module = method(black_box), method(net)
        scale = on_callable.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(on_module, on_callable, rtol=0, atol=1e-5 * scale)


def test_meaningful_perturbation_on_a_differentiable_callable_equals_the_module_version(net, images):
    on_callable = meaningful_perturbation(lambda batch: net(batch), images, 1, steps=3, mask_scale=4)
    on_module = meaningful_perturbation(net, images, 1, steps=3, mask_scale=4)
    assert torch.equal(on_callable.mask, on_module.mask)


def test_methods_leave_a_training_model_in_training_mode_with_its_gradients(tiny_vgg, images):
    tiny_vgg.train()
    occlusion(tiny_vgg, images, 0, window=(8, 8), stride=8)
    meaningful_perturbation(tiny_vgg, images, 0, steps=2, mask_scale=4)
    assert all(module.training for module in tiny_vgg.modules())
    assert all(parameter.requires_grad and parameter.grad is None for parameter in tiny_vgg.parameters())


# --- bad input ------------------------------------------------------------------------------------

def test_gaussian_blur_keeps_a_flat_image_flat():
    flat = torch.full((1, 2, 20, 20), 3.0)
    torch.testing.assert_close(gaussian_blur(flat, 4.0), flat)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"window": (40, 8)}, ValueError, r"window: 40×8 is larger than the image, 32×32"),
    ({"window": 0}, ValueError, r"window: expected values >= 1"),
    ({"stride": 0}, ValueError, r"stride: expected values >= 1"),
    ({"window": 4, "stride": 5}, ValueError, r"stride: 5×5 is larger than the window 4×4"),
    ({"baseline": "grey"}, ValueError, r"baseline: expected a number, a tensor or one of 'mid-grey', 'black'"),
    ({"baseline": torch.zeros(5, 5)}, ValueError, r"baseline: shape \(5, 5\) does not broadcast"),
    ({"target": 9}, ValueError, r"target: class index 9 is out of range"),
])
def test_occlusion_rejects_bad_arguments_by_name(net, images, kwargs, error, message):
    with pytest.raises(error, match=message):
        occlusion(net, images, **{"target": 0, **kwargs})


@pytest.mark.parametrize("segments, message", [
    (torch.zeros(16, 16, dtype=torch.long), r"segments: expected shape \[32, 32\] or \[2, 32, 32\]"),
    (torch.zeros(3, 32, 32, dtype=torch.long), r"segments: expected shape"),
    (torch.zeros(0, 0, dtype=torch.long), r"segments: the segment map is empty"),
    (-torch.ones(32, 32, dtype=torch.long), r"segments: labels must be non-negative"),
])
def test_leave_one_out_rejects_bad_segments_by_name(net, images, segments, message):
    with pytest.raises(ValueError, match=message):
        leave_one_out(net, images, 0, segments=segments)


def test_other_bad_arguments_are_rejected_by_name(net, images):
    with pytest.raises(ValueError, match="method: expected one of 'slic'"):
        superpixels(data.load_image("chelsea"), "watershed")
    with pytest.raises(ValueError, match="perturbation: expected one of 'constant'"):
        meaningful_perturbation(net, images, perturbation="gan")
    with pytest.raises(ValueError, match=r"p: expected a probability in \(0, 1\)"):
        rise(net, images, p=1.0)
    with pytest.raises(RuntimeError, match="model: meaningful_perturbation needs gradients"):
        meaningful_perturbation(lambda batch: net(batch).detach(), images, steps=1)
