"""Applications (survey §4): right-for-the-right-reasons training and adversarial detection from
saliency statistics, checked against closed forms on tiny models and hand-made maps."""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from vizlib import applications, data, models
from vizlib.applications import (SALIENCY_STATISTICS, detection_auc, rrr_loss, saliency_statistics,
                                 swap_watermarks, train_rrr)

CHANNELS, SIDE, CLASSES = 3, 5, 4


@pytest.fixture
def linear():
    """A linear softmax model on 3×5×5 inputs, float64: logits = W x + b."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(CHANNELS * SIDE * SIDE, CLASSES)).double()


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(6, CHANNELS, SIDE, SIDE, generator=generator, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    masks = torch.rand(6, SIDE, SIDE, generator=generator) < 0.3
    return x, target, masks


@pytest.fixture
def small_net():
    torch.manual_seed(0)
    return models.GAPNet(widths=(4, 8)).double()


@pytest.fixture(scope="module")
def tiny_shapes():
    return data.shapes(32, size=16, seed=0, shortcut=True)


def closed_form_input_gradient(model, x):
    """∂/∂x Σ_k log p_k = Wᵀ(1 − K p) for logits W x + b (since Σ_k ∂ log p_k/∂z_j = 1 − K p_j)."""
    weight = model[1].weight
    with torch.no_grad():
        p = model(x).softmax(dim=1)
    return ((1 - CLASSES * p) @ weight).view_as(x)


# --- rrr_loss ---------------------------------------------------------------------------------------

def test_rrr_loss_with_weight_zero_is_the_cross_entropy(linear, batch):
    x, target, masks = batch
    terms = rrr_loss(linear, x, target, masks, weight=0)
    expected = F.cross_entropy(linear(x), target)
    torch.testing.assert_close(terms.total, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(terms.cross_entropy, expected, rtol=1e-12, atol=0)


def test_rrr_penalty_equals_the_closed_form_of_a_linear_softmax_model(linear, batch):
    x, target, masks = batch
    gradient = closed_form_input_gradient(linear, x)
    expected = (masks[:, None] * gradient).square().sum() / len(x)      # A broadcast over colours
    terms = rrr_loss(linear, x, target, masks, weight=2.5)
    torch.testing.assert_close(terms.penalty, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(terms.total, terms.cross_entropy + 2.5 * expected, rtol=1e-10, atol=0)


def test_rrr_penalty_takes_per_channel_and_weighted_annotations(linear, batch):
    x, target, _ = batch
    annotation = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = (annotation * closed_form_input_gradient(linear, x)).square().sum() / len(x)
    torch.testing.assert_close(rrr_loss(linear, x, target, annotation).penalty, expected, rtol=1e-10, atol=0)


def test_rrr_penalty_is_zero_without_annotation_and_adds_over_disjoint_regions(small_net, batch):
    x, target, masks = batch
    zero = rrr_loss(small_net, x, target, torch.zeros_like(masks)).penalty
    assert zero.item() == 0.0
    whole = rrr_loss(small_net, x, target, torch.ones_like(masks)).penalty
    inside = rrr_loss(small_net, x, target, masks).penalty
    outside = rrr_loss(small_net, x, target, ~masks).penalty
    torch.testing.assert_close(inside + outside, whole, rtol=1e-10, atol=0)
    assert 0 < inside < whole


def test_rrr_penalty_is_a_batch_mean(small_net, batch):
    x, target, masks = batch
    small_net.eval()         # batch statistics would couple the images
    both = rrr_loss(small_net, x, target, masks).penalty
    halves = [rrr_loss(small_net, x[part], target[part], masks[part]).penalty
              for part in (slice(0, 3), slice(3, 6))]
    torch.testing.assert_close(both, sum(halves) / 2, rtol=1e-10, atol=0)


def test_rrr_penalty_trains_the_parameters_by_double_backprop(linear, batch):
    x, target, masks = batch
    parameter = linear[1].weight
    penalty = rrr_loss(linear, x, target, masks).penalty
    (gradient,) = torch.autograd.grad(penalty, parameter)
    direction = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    step = 1e-6
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            parameter += sign * step * direction
        values.append(rrr_loss(linear, x, target, masks).penalty.item())
        with torch.no_grad():
            parameter -= sign * step * direction
    finite_difference = (values[0] - values[1]) / (2 * step)
    analytic = (gradient * direction).sum().item()
    assert abs(analytic) > 1e-3                        # the penalty does depend on W
    assert abs(finite_difference - analytic) < 1e-6 * abs(analytic)


def test_rrr_loss_changes_no_mode_flag_or_buffer(small_net, batch):
    x, target, masks = batch
    small_net.eval()
    small_net.features[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in small_net.parameters()]
    before = {k: v.clone() for k, v in small_net.state_dict().items()}
    with torch.no_grad():                              # the penalty needs autograd all the same
        terms = rrr_loss(small_net, x, target, masks)
    assert terms.total.requires_grad
    assert not any(module.training for module in small_net.modules())
    assert [p.requires_grad for p in small_net.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in small_net.state_dict().items())
    assert not any(module._forward_hooks or module._backward_hooks for module in small_net.modules())
    small_net.train()
    rrr_loss(small_net, x, target, masks)
    assert all(module.training for module in small_net.modules())


@pytest.mark.parametrize("change, error, match", [
    (dict(weight=-1.0), ValueError, "weight"),
    (dict(weight=float("nan")), ValueError, "weight"),
    (dict(weight=True), ValueError, "weight"),
    (dict(masks=torch.ones(6, SIDE, SIDE + 1)), ValueError, "masks"),
    (dict(masks=torch.ones(5, SIDE, SIDE)), ValueError, "masks"),
    (dict(masks=torch.ones(6, 2, SIDE, SIDE)), ValueError, "masks"),
    (dict(masks=torch.full((6, SIDE, SIDE), float("nan"))), ValueError, "NaN"),
    (dict(masks=-torch.ones(6, SIDE, SIDE)), ValueError, ">= 0"),
    (dict(masks=[[0]]), TypeError, "masks"),
    (dict(target=torch.zeros(5, dtype=torch.long)), ValueError, "target"),
    (dict(target=torch.zeros(6)), ValueError, "target"),
    (dict(target=torch.full((6,), 4)), ValueError, "out of range"),
    (dict(x=torch.rand(CHANNELS, SIDE, SIDE, dtype=torch.float64)), ValueError, "unsqueeze"),
    (dict(x=torch.full((6, CHANNELS, SIDE, SIDE), float("nan"), dtype=torch.float64)), ValueError, "NaN"),
])
def test_rrr_loss_rejects_bad_arguments(linear, batch, change, error, match):
    x, target, masks = batch
    arguments = dict(x=x, target=target, masks=masks, weight=1.0) | change
    weight = arguments.pop("weight")
    with pytest.raises(error, match=match):
        rrr_loss(linear, **arguments, weight=weight)


# --- train_rrr -------------------------------------------------------------------------------------

SETTINGS = dict(epochs=1, batch_size=16, cache=False, progress=False)


def test_train_rrr_with_weight_zero_equals_models_train_bit_for_bit(tiny_shapes):
    plain = models.train(models.GAPNet(widths=(4, 8)), tiny_shapes, **SETTINGS)
    rrr = train_rrr(models.GAPNet(widths=(4, 8)), tiny_shapes, weight=0, **SETTINGS)
    for (name, value), other in zip(plain.state_dict().items(), rrr.state_dict().values()):
        assert torch.equal(value, other), name
    assert not rrr.training


def test_train_rrr_penalty_changes_the_weights(tiny_shapes):
    plain = train_rrr(models.GAPNet(widths=(4, 8)), tiny_shapes, weight=0, **SETTINGS)
    rrr = train_rrr(models.GAPNet(widths=(4, 8)), tiny_shapes, weight=10.0, **SETTINGS)
    assert not torch.equal(plain.fc.weight, rrr.fc.weight)


def test_train_rrr_cache_hit_returns_the_same_weights(tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("VIZLIB_CACHE", str(tmp_path))
    settings = SETTINGS | dict(cache=True)
    first = train_rrr(models.GAPNet(widths=(4, 8)), tiny_shapes, weight=1.0, **settings)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("GAPNet-rrr-")
    fresh = models.GAPNet(widths=(4, 8))
    second = train_rrr(fresh, tiny_shapes, weight=1.0, **settings)
    assert second is fresh and not second.training
    for value, other in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(value, other)
    corners = tiny_shapes.shortcut_masks.any(dim=0).expand_as(tiny_shapes.shortcut_masks)
    train_rrr(models.GAPNet(widths=(4, 8)), tiny_shapes, masks=corners, weight=1.0, **settings)
    assert len(list(tmp_path.iterdir())) == 2          # another annotation, another key


def test_train_rrr_fine_tunes_from_the_current_weights(tiny_shapes):
    start = train_rrr(models.GAPNet(widths=(4, 8)), tiny_shapes, weight=0, **SETTINGS)
    tuned = models.GAPNet(widths=(4, 8))
    tuned.load_state_dict(start.state_dict())
    train_rrr(tuned, tiny_shapes, weight=0, reinitialize=False, max_lr=0.0, **SETTINGS)
    # lr 0: only BatchNorm's running statistics move, so the parameters are the starting ones
    assert torch.equal(tuned.fc.weight, start.fc.weight)
    assert torch.equal(tuned.features[0].weight, start.features[0].weight)


@pytest.mark.parametrize("change, error, match", [
    (dict(masks="boxes_please"), ValueError, "masks"),
    (dict(masks=torch.ones(3, 16, 16)), ValueError, "masks"),
    (dict(weight=-0.5), ValueError, "weight"),
    (dict(epochs=0), ValueError, "epochs"),
    (dict(batch_size=2.0), ValueError, "batch_size"),
    (dict(max_lr=float("inf")), ValueError, "max_lr"),
    (dict(reinitialize=1), TypeError, "reinitialize"),
])
def test_train_rrr_rejects_bad_arguments_before_touching_the_model(tiny_shapes, change, error, match):
    model = models.GAPNet(widths=(4, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        train_rrr(model, tiny_shapes, **(SETTINGS | change))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_train_rrr_rejects_labels_the_model_cannot_output(tiny_shapes):
    with pytest.raises(ValueError, match="labels"):
        train_rrr(models.GAPNet(widths=(4, 8), num_classes=3), tiny_shapes, **SETTINGS)
    with pytest.raises(TypeError, match="ImageSet"):
        train_rrr(models.GAPNet(widths=(4, 8)), (tiny_shapes.images, tiny_shapes.labels), **SETTINGS)


# --- swap_watermarks -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair():
    """The same 12 images with and without the watermark (data.shapes keeps them apart from the mark)."""
    return data.shapes(12, size=32, seed=3), data.shapes(12, size=32, seed=3, shortcut=True)


def test_swap_watermarks_with_the_true_classes_reproduces_the_marked_set(pair):
    clean, marked = pair
    same = swap_watermarks(clean, marked, marked.labels)
    assert torch.equal(same.images, marked.images)
    assert torch.equal(same.shortcut_masks, marked.shortcut_masks)


def test_swap_watermarks_paints_the_corner_of_the_given_class_and_keeps_labels(pair):
    clean, marked = pair
    classes = (clean.labels + 1) % 4
    swapped = swap_watermarks(clean, marked, classes)
    corner = {c: marked.shortcut_masks[marked.labels == c][0] for c in range(4)}
    for n in range(len(clean)):
        mark = corner[classes[n].item()]
        assert torch.equal(swapped.shortcut_masks[n], mark)
        assert (swapped.images[n][:, mark] == 1).all()                          # white
        assert torch.equal(swapped.images[n][:, ~mark], clean.images[n][:, ~mark])
    assert torch.equal(swapped.labels, clean.labels)
    assert torch.equal(swapped.masks, clean.masks) and torch.equal(swapped.boxes, clean.boxes)
    assert not (swapped.shortcut_masks & marked.shortcut_masks).any()          # every mark moved


@pytest.mark.parametrize("which, error, match", [
    ("no marks", ValueError, "shortcut_masks"),
    ("float classes", ValueError, "classes"),
    ("bool classes", ValueError, "classes"),
    ("short classes", ValueError, "classes"),
    ("class 4", ValueError, "classes"),
    ("other size", ValueError, "shape"),
    ("tuple", TypeError, "ImageSet"),
])
def test_swap_watermarks_rejects_bad_arguments(pair, which, error, match):
    clean, marked = pair
    classes = clean.labels
    if which == "no marks":
        marked = clean
    elif which == "float classes":
        classes = classes.float()
    elif which == "bool classes":
        classes = classes > 1
    elif which == "short classes":
        classes = classes[:3]
    elif which == "class 4":
        classes = classes + 4
    elif which == "other size":
        clean = data.shapes(12, size=16, seed=3)
    elif which == "tuple":
        clean = (clean.images, clean.labels)
    with pytest.raises(error, match=match):
        swap_watermarks(clean, marked, classes)


# --- saliency statistics ---------------------------------------------------------------------------

def statistics(saliency):
    return dict(zip(SALIENCY_STATISTICS, saliency_statistics(saliency)[0].tolist()))


def test_statistics_of_a_uniform_map():
    height, width = 6, 10
    stats = statistics(torch.full((1, height, width), 0.5))
    assert stats["log mass"] == pytest.approx(math.log(0.5 * height * width), rel=1e-6)
    assert stats["entropy"] == pytest.approx(1.0, rel=1e-6)
    # uniform on a grid: variance (n² − 1) / 12 along each axis
    spread = math.sqrt((height ** 2 - 1) / 12 + (width ** 2 - 1) / 12) / math.hypot(height, width)
    assert stats["spread"] == pytest.approx(spread, rel=1e-6)
    assert stats["top-5% mass"] == pytest.approx(3 / 60, rel=1e-6)    # ⌈0.05 · 60⌉ = 3 pixels, not 4


def test_statistics_of_a_one_pixel_map():
    saliency = torch.zeros(1, 3, 8, 8)
    saliency[0, 1, 2, 5] = -3.0                        # the magnitude counts, not the sign
    stats = statistics(saliency)
    assert stats == pytest.approx({"log mass": math.log(3.0), "entropy": 0.0, "spread": 0.0,
                                   "top-5% mass": 1.0}, abs=1e-7)


def test_statistics_of_two_equal_pixels():
    saliency = torch.zeros(1, 4, 4)
    saliency[0, 0, 0] = saliency[0, 3, 3] = 1.0
    stats = statistics(saliency)
    assert stats["entropy"] == pytest.approx(math.log(2) / math.log(16), rel=1e-6)
    # each pixel at half the diagonal from the centroid
    assert stats["spread"] == pytest.approx(0.5 * math.hypot(3, 3) / math.hypot(4, 4), rel=1e-6)
    assert stats["top-5% mass"] == pytest.approx(0.5, rel=1e-6)   # ⌈0.8⌉ = 1 pixel of the two


def test_statistics_are_invariant_to_scale_except_log_mass():
    saliency = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    base = saliency_statistics(saliency)
    scaled = saliency_statistics(7.0 * saliency)
    torch.testing.assert_close(scaled[:, 1:], base[:, 1:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scaled[:, 0] - base[:, 0], torch.full((5,), math.log(7.0)), rtol=1e-5, atol=1e-5)
    assert saliency_statistics(saliency).shape == (5, len(SALIENCY_STATISTICS))


@pytest.mark.parametrize("saliency, kwargs, match", [
    (torch.zeros(2, 4, 4), {}, "zero everywhere"),
    (torch.full((1, 4, 4), float("nan")), {}, "NaN"),
    (torch.ones(4, 4), {}, "saliency"),
    (torch.ones(1, 4, 4, dtype=torch.long), {}, "saliency"),
    (torch.ones(1, 1, 1), {}, "pixel"),
    (torch.ones(1, 4, 4), {"top_fraction": 0}, "top_fraction"),
    (torch.ones(1, 4, 4), {"top_fraction": 1.5}, "top_fraction"),
])
def test_saliency_statistics_rejects_bad_maps(saliency, kwargs, match):
    with pytest.raises(ValueError, match=match):
        saliency_statistics(saliency, **kwargs)


# --- detection_auc ---------------------------------------------------------------------------------

def features(n=40, shift=0.0, seed=0):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)) + shift


def test_separable_features_are_detected_perfectly():
    result = detection_auc(features(), features(seed=1, shift=10.0))
    assert result.auc == 1.0


def test_identical_twins_cannot_be_told_apart():
    clean = features()
    assert detection_auc(clean, clean.clone()).auc == 0.5   # every score has its tie in the other class


def test_split_keeps_both_versions_of_an_image_on_the_same_side():
    clean, adversarial = features(), features(seed=1, shift=1.0)
    result = detection_auc(clean, adversarial, test_fraction=0.25, seed=4)
    test = result.test_index
    assert len(test) == 10 and len(set(test.tolist())) == 10
    assert result.labels.tolist() == [0] * 10 + [1] * 10
    expected = result.detector.predict_proba(torch.cat([clean[test], adversarial[test]]).double().numpy())[:, 1]
    torch.testing.assert_close(torch.as_tensor(result.scores), torch.as_tensor(expected), rtol=0, atol=0)
    # the detector was fitted on the other 30 images only: refitting on them gives the same weights
    from sklearn.base import clone
    train = torch.tensor(sorted(set(range(40)) - set(test.tolist())))
    refit = clone(result.detector).fit(torch.cat([clean[train], adversarial[train]]).double().numpy(),
                                       [0] * 30 + [1] * 30)
    torch.testing.assert_close(torch.as_tensor(refit[-1].coef_), torch.as_tensor(result.detector[-1].coef_))


def test_detection_is_deterministic_under_its_seed():
    clean, adversarial = features(), features(seed=1, shift=0.5)
    first, again = detection_auc(clean, adversarial, seed=2), detection_auc(clean, adversarial, seed=2)
    other = detection_auc(clean, adversarial, seed=3)
    assert first.auc == again.auc and torch.equal(first.test_index, again.test_index)
    assert not torch.equal(first.test_index, other.test_index)


@pytest.mark.parametrize("clean, adversarial, kwargs, match", [
    (features(), features(n=39), {}, "shape"),
    (features()[:, 0], features()[:, 0], {}, r"\[N, F\]"),
    (features().long(), features().long(), {}, "float"),
    (features().index_fill(0, torch.tensor([3]), float("nan")), features(), {}, "NaN"),
    (features(), features(), {"test_fraction": 1.0}, "test_fraction"),
    (features(n=3), features(n=3), {}, "fewer than 2"),
])
def test_detection_auc_rejects_bad_features(clean, adversarial, kwargs, match):
    with pytest.raises(ValueError, match=match):
        detection_auc(clean, adversarial, **kwargs)


def test_public_names_are_exported():
    assert set(applications.__all__) >= {"rrr_loss", "train_rrr", "swap_watermarks", "saliency_statistics",
                                         "detection_auc"}
