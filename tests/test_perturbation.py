"""Perturbation methods agree with Captum and with closed forms, work on black boxes, and reject bad input.

The tests that use `lite0` (occlusion, meaningful perturbation) are also checked by conftest's guard to
leave the model unchanged: no hooks, the same modules, mode and `requires_grad` flags.
"""
import pytest
import torch
import torch.nn.functional as F
from captum.attr import FeatureAblation, Occlusion

from vizlib import data
from vizlib.perturbation import (fill, gaussian_blur, grid_segments, leave_one_out, meaningful_perturbation,
                                 occlusion, rise, superpixels)

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


# --- meaningful perturbation ----------------------------------------------------------------------

def test_meaningful_perturbation_deletes_the_cat_with_a_small_blur_mask(lite0, chelsea):
    # 20 Adam steps with the paper's weights (it runs 500) already push the probability from 0.39 to ~0.05.
    mask, history = meaningful_perturbation(lite0, chelsea, TIGER_CAT, perturbation="blur", steps=20)
    assert mask.shape == (1, 1, 224, 224) and 0 <= mask.min() and mask.max() <= 1
    with torch.no_grad():
        deleted = lite0(mask * chelsea + (1 - mask) * gaussian_blur(chelsea, 10.0)).softmax(dim=-1)[0, TIGER_CAT]
    assert history["score"][0, 0] > 0.3                     # the cat before deletion
    assert deleted < 0.1                                     # and after, with the returned mask
    assert (1 - mask).mean() < 0.35                          # deleting less than 35 % of the image


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

    segments = grid_segments(32, 32, 4)
    for method in (lambda model: occlusion(model, images, 3, window=(6, 6), stride=4, baseline="noise"),
                   lambda model: leave_one_out(model, images, 3, segments=segments)[0],
                   lambda model: rise(model, images, 3, n_masks=30, cell=4)):
        assert torch.equal(method(black_box), method(net))


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
    ({"baseline": "grey"}, ValueError, r"baseline: expected a number, a tensor or one of 'mean'"),
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
