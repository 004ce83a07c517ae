"""Weakly supervised localization: threshold → largest region → box → IoU, on hand-made maps."""
import numpy as np
import pytest
import torch

from vizlib.evaluation import box_iou, localization_accuracy, localize


def two_blobs():
    """A 3×4 blob of 1.0 at rows 1-3, cols 2-5 and a single pixel of 0.9 at (8, 8), on zeros."""
    saliency = torch.zeros(10, 10)
    saliency[1:4, 2:6] = 1.0
    saliency[8, 8] = 0.9
    return saliency


def test_localize_boxes_the_largest_region_not_the_highest_pixel():
    saliency = two_blobs()
    saliency[8, 8] = 5.0          # the peak sets the threshold but its region is one pixel
    saliency[1:4, 2:6] = 2.0      # 2.0 > 0.2 × 5.0
    assert localize(saliency).tolist() == [2, 1, 6, 4]   # (x0, y0, x1, y1), x1 and y1 exclusive


def test_localize_threshold_is_a_fraction_of_the_maximum():
    saliency = two_blobs()
    saliency[0, 0:2] = 0.5        # joins the blob diagonally at (1, 2) only when above the threshold
    assert localize(saliency, threshold=0.4).tolist() == [0, 0, 6, 4]
    assert localize(saliency, threshold=0.6).tolist() == [2, 1, 6, 4]


def test_regions_touching_at_a_corner_are_connected():
    saliency = torch.zeros(5, 5)
    saliency[0, 0] = saliency[1, 1] = saliency[2, 2] = 1.0
    saliency[4, 4] = saliency[4, 3] = 1.0
    assert localize(saliency).tolist() == [0, 0, 3, 3]


def test_localize_accepts_batches_of_maps():
    batch = torch.stack([two_blobs(), two_blobs().flip(1)])[:, None]   # [2, 1, 10, 10]
    assert localize(batch).tolist() == [[2, 1, 6, 4], [4, 1, 8, 4]]


def test_a_map_without_positive_values_has_an_empty_box():
    assert localize(-torch.ones(4, 4)).tolist() == [0, 0, 0, 0]


def test_localize_rejects_a_threshold_outside_the_unit_interval():
    with pytest.raises(ValueError, match="threshold"):
        localize(two_blobs(), threshold=1.5)


def test_box_iou_matches_hand_computed_overlaps():
    boxes = torch.tensor([[0, 0, 4, 4], [0, 0, 4, 4], [0, 0, 2, 2], [0, 0, 0, 0]])
    other = torch.tensor([[2, 0, 6, 4], [0, 0, 4, 4], [5, 5, 6, 6], [0, 0, 1, 1]])
    # 8 / (16 + 16 - 8), identical, disjoint, empty.
    torch.testing.assert_close(box_iou(boxes, other), torch.tensor([1 / 3, 1.0, 0.0, 0.0], dtype=torch.float64))


def test_localization_accuracy_counts_boxes_with_iou_above_one_half():
    maps = torch.stack([two_blobs(), two_blobs()])
    truth = torch.tensor([[2, 1, 6, 4], [2, 1, 4, 4]])   # exact, then IoU 6/12 = 0.5, not above
    assert localization_accuracy(maps, truth) == 0.5


# --- ground-truth metrics -------------------------------------------------------------------------

import captum.metrics
from torch import nn

from vizlib import backprop, data, evaluation, registry
from vizlib.evaluation import (deletion, infidelity, insertion, keep_top, max_sensitivity, model_randomization,
                               pointing_game, relevance_mass, relevance_rank, sensitivity_n)


def square_mask(n=1, size=10, rows=slice(2, 5), cols=slice(2, 5)):
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, rows, cols] = True
    return masks


def test_pointing_game_hits_on_the_object_and_within_the_tolerance_only():
    maps = torch.zeros(3, 1, 10, 10)
    maps[0, 0, 3, 3] = 1.0            # on the object
    maps[1, 0, 4, 7] = 1.0            # 3 px right of column 4, the object's last
    maps[2, 0, 9, 9] = 1.0            # (9, 9) is √(5² + 5²) ≈ 7.07 px from (4, 4)
    masks = square_mask(3)
    assert pointing_game(maps, masks, tolerance=0).tolist() == [True, False, False]
    assert pointing_game(maps, masks, tolerance=3).tolist() == [True, True, False]
    assert pointing_game(maps, masks, tolerance=7.1).tolist() == [True, True, True]


def test_pointing_game_sums_the_channels_of_a_map():
    maps = torch.zeros(1, 3, 10, 10)
    maps[0, 0, 8, 8] = 1.0            # the largest single value, off the object
    maps[0, :, 3, 3] = 0.5            # 1.5 summed over the channels, on it
    assert pointing_game(maps, square_mask(), tolerance=0).tolist() == [True]


def test_relevance_mass_and_rank_match_hand_counts():
    maps = torch.zeros(1, 1, 10, 10)
    maps[0, 0, 2:5, 2:5] = 1.0        # 9 pixels inside: mass 9
    maps[0, 0, 8, 0:3] = 2.0          # 3 pixels outside: mass 6
    maps[0, 0, 9, 9] = -5.0           # negative relevance does not count
    torch.testing.assert_close(relevance_mass(maps, square_mask()), torch.tensor([9 / 15]))
    # The 9 most relevant pixels: the 3 outside (2.0), then 6 of the 9 inside.
    torch.testing.assert_close(relevance_rank(maps, square_mask()), torch.tensor([6 / 9]))


def test_relevance_mass_of_a_map_without_positive_relevance_is_zero():
    assert relevance_mass(-torch.ones(1, 1, 10, 10), square_mask()).tolist() == [0.0]


def test_ground_truth_metrics_reject_bad_masks():
    maps = torch.rand(1, 1, 10, 10)
    with pytest.raises(ValueError, match="size"):
        pointing_game(maps, square_mask(size=12))
    with pytest.raises(ValueError, match="empty"):
        relevance_mass(maps, torch.zeros(1, 10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(maps, square_mask(), tolerance=-1)


# --- deletion, insertion, keep-top, sensitivity-n ----------------------------------------------

class Linear(nn.Module):
    """f(x) = Σ w ⊙ x + b, two outputs (the second is −f)."""

    def __init__(self, shape=(3, 4, 4), seed=0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        score = (x * self.weight).flatten(1).sum(1) + 0.5
        return torch.stack([score, -score], dim=1)


def linear_case():
    model = Linear()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    contribution = (model.weight.detach() * x).sum(1, keepdim=True)       # per pixel, baseline 0
    return model, x, contribution


def test_deletion_on_a_linear_model_with_its_ideal_order_is_the_analytic_curve():
    model, x, contribution = linear_case()
    curve = deletion(model, x, contribution, 0, steps=16, softmax=False, batch_size=5)
    ordered = contribution.flatten(1).sort(dim=1, descending=True).values
    removed = torch.cat([torch.zeros(2, 1), ordered.cumsum(1)], dim=1)
    full = model(x)[:, 0]
    torch.testing.assert_close(curve.fractions, torch.linspace(0, 1, 17))
    torch.testing.assert_close(curve.scores, full[:, None] - removed.detach())
    assert (curve.scores[:, -1] - 0.5).abs().max() < 1e-5               # all removed: the bias
    # The ideal order falls fastest: any other order has a larger area.
    shuffled = deletion(model, x, torch.rand(2, 1, 4, 4), 0, steps=16, softmax=False)
    assert (curve.auc < shuffled.auc).all()


def test_tied_pixels_are_removed_in_proportion_whatever_order_would_break_the_tie():
    model, x, contribution = linear_case()
    saliency = torch.zeros(2, 1, 4, 4)
    saliency[:, 0, 0, 0] = 2.0
    saliency[:, 0, 0, 1:3] = 1.0          # a tie of two pixels
    curve = deletion(model, x, saliency, 0, steps=8, softmax=False)      # 2 pixels removed at step 1
    c = contribution[:, 0, 0]
    expected = model(x)[:, 0] - c[:, 0] - 0.5 * (c[:, 1] + c[:, 2])      # the mean of both tie orders
    torch.testing.assert_close(curve.scores[:, 1], expected.detach())


def test_a_constant_map_deletes_and_inserts_along_the_straight_path():
    model, x, _ = linear_case()
    constant = torch.ones(2, 1, 4, 4)
    baseline = torch.full_like(x, 0.25)
    full, empty = model(x)[:, 0].detach(), model(baseline)[:, 0].detach()
    fractions = torch.linspace(0, 1, 5)
    out = deletion(model, x, constant, 0, steps=4, baseline=baseline, softmax=False)
    into = insertion(model, x, constant, 0, steps=4, baseline=baseline, softmax=False)
    torch.testing.assert_close(out.scores, full[:, None] + fractions * (empty - full)[:, None])
    torch.testing.assert_close(into.scores, out.scores.flip(1))
    # Any permutation of a constant map's "order" is the same map: the result cannot depend on it.
    torch.testing.assert_close(out.auc, (full + empty) / 2)


def test_keep_top_says_when_the_kept_evidence_recovers_the_prediction():
    model, x, contribution = linear_case()
    target = model(x).argmax(1)
    kept = keep_top(model, x, contribution * torch.where(target == 0, 1, -1).view(-1, 1, 1, 1), target,
                    fractions=[0.0, 0.25, 1.0], baseline=0.0)
    assert kept.recovered[:, -1].all()                   # everything kept: the prediction itself
    assert kept.recovered[:, 1].all()                    # the top quarter of the evidence suffices here
    torch.testing.assert_close(kept.scores[:, -1], model(x).softmax(1).gather(1, target[:, None])[:, 0].detach())


def test_path_metrics_reject_bad_input():
    model, x, contribution = linear_case()
    with pytest.raises(ValueError, match="fractions"):
        keep_top(model, x, contribution, fractions=[0.5, 1.5])
    with pytest.raises(ValueError, match="size"):
        deletion(model, x, torch.ones(2, 1, 3, 3))
    with pytest.raises(ValueError, match="steps"):
        insertion(model, x, contribution, steps=0)


def test_sensitivity_n_is_one_for_a_linear_model_and_deterministic_under_seed():
    model, x, contribution = linear_case()
    torch.testing.assert_close(sensitivity_n(model, x, contribution, 0, n=4, samples=20), torch.ones(2))
    noise = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    first = sensitivity_n(model, x, noise, 0, n=4, samples=20, seed=3, batch_size=7)
    assert torch.equal(first, sensitivity_n(model, x, noise, 0, n=4, samples=20, seed=3, batch_size=None))
    assert (first < 0.99).all()
    with pytest.raises(ValueError, match="n:"):
        sensitivity_n(model, x, noise, n=17, samples=5)


# --- infidelity and max-sensitivity against Captum ----------------------------------------------

def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5)).eval()


def noise_pair(inputs):
    noise = torch.randn_like(inputs) * 0.1
    return noise, inputs - noise


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_infidelity_equals_captum(normalize, batch_size):
    net, x = small_net(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    saliency = backprop.gradient(net, x, 1)
    ours = infidelity(net, x, saliency, 1, perturb=noise_pair, n_perturb_samples=5, normalize=normalize,
                      batch_size=batch_size, seed=7)
    torch.manual_seed(7)
    reference = captum.metrics.infidelity(net, noise_pair, x, saliency, target=1, n_perturb_samples=5,
                                          normalize=normalize, max_examples_per_batch=batch_size)
    torch.testing.assert_close(ours, reference)
    assert torch.equal(ours, infidelity(net, x, saliency, 1, perturb=noise_pair, n_perturb_samples=5,
                                        normalize=normalize, batch_size=batch_size, seed=7))


def test_a_one_channel_map_counts_for_every_channel_in_infidelity():
    net, x = small_net(), torch.randn(2, 3, 8, 8)
    saliency = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(infidelity(net, x, saliency, perturb=noise_pair),
                               infidelity(net, x, saliency.expand(-1, 3, -1, -1), perturb=noise_pair))
    with pytest.raises(ValueError, match="saliency"):
        infidelity(net, x, torch.randn(2, 2, 8, 8), perturb=noise_pair)


@pytest.mark.parametrize("batch_size", [None, 6])
def test_max_sensitivity_equals_captum(batch_size):
    net, x = small_net(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    target = net(x).argmax(1)

    def captum_explain(inputs, target):      # under torch.no_grad; a tuple in, a tuple out
        with torch.enable_grad():
            if isinstance(inputs, tuple):
                return (backprop.gradient(net, inputs[0], target),)
            return backprop.gradient(net, inputs, target)

    ours = max_sensitivity(backprop.gradient, net, x, n_perturb_samples=7, radius=0.05, batch_size=batch_size,
                           seed=11)
    torch.manual_seed(11)
    reference = captum.metrics.sensitivity_max(captum_explain, x, perturb_radius=0.05, n_perturb_samples=7,
                                               max_examples_per_batch=batch_size, target=target)
    torch.testing.assert_close(ours, reference)
    assert (ours > 0).all()


# --- randomization ------------------------------------------------------------------------------

def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()])


def test_model_randomization_leaves_the_model_bit_identical():
    net, x = small_net(), torch.randn(2, 3, 8, 8)
    net.train()                                            # a mode the test must restore
    handle = net[0].register_forward_hook(lambda *args: None)
    before = snapshot(net)
    result = model_randomization(backprop.gradient, net, x, order="cascading")
    after = snapshot(net)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:] == after[1:]
    assert len(net[0]._forward_hooks) == 1
    handle.remove()
    assert result.steps == ("6", "2", "0")               # Linear, then the convolutions top-down
    assert result.maps.shape == (3, 2, 3, 8, 8)
    assert set(result.similarity) == {"spearman", "spearman_abs", "ssim", "hog"}
    assert result.similarity["spearman"].shape == (3, 2)
    # Once every layer is re-initialized, the gradient map no longer resembles the original.
    assert (result.similarity["spearman"][-1].abs() < 0.9).all()


def test_cascading_keeps_and_independent_undoes_earlier_randomizations():
    net, x = small_net(), torch.randn(2, 3, 8, 8)
    cascading = model_randomization(backprop.gradient, net, x, layers=["6", "2"])
    independent = model_randomization(backprop.gradient, net, x, layers=["6", "2"], order="independent")
    assert torch.equal(cascading.maps[0], independent.maps[0])
    assert not torch.equal(cascading.maps[1], independent.maps[1])
    only_second = model_randomization(backprop.gradient, net, x, layers=["2"], seed=1)
    assert torch.equal(only_second.maps[0], independent.maps[1])   # seed + step: the same draw


def test_model_randomization_rejects_an_explain_that_modifies_the_model_and_bad_layers():
    net, x = small_net(), torch.randn(2, 3, 8, 8)

    def vandal(model, inputs, target):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        return backprop.gradient(model, inputs, target)

    with pytest.raises(RuntimeError, match="modified the model"):
        model_randomization(vandal, net, x)
    with pytest.raises(KeyError, match="unknown layer"):
        model_randomization(backprop.gradient, net, x, layers=["classifier"])
    with pytest.raises(ValueError, match="no parameters"):
        model_randomization(backprop.gradient, net, x, layers=["1"])
    with pytest.raises(ValueError, match="order"):
        model_randomization(backprop.gradient, net, x, order="bottom-up")


def tiny_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def test_data_randomization_trains_and_caches_a_net_on_permuted_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("VIZLIB_CACHE", str(tmp_path))
    dataset = data.shapes(32, size=16, seed=0)
    result = evaluation.data_randomization(backprop.gradient, tiny_net, dataset, dataset.images[:2], epochs=2)
    assert len(list(tmp_path.glob("Sequential-*.pt"))) == 2     # the true-label and the permuted-label net
    assert result.steps == ("labels permuted",) and result.maps.shape == (1, 2, 3, 16, 16)
    assert set(result.details) == {"accuracy, true labels", "accuracy of the permuted net, true labels",
                                   "accuracy of the permuted net, permuted labels"}
    again = evaluation.data_randomization(backprop.gradient, tiny_net, dataset, dataset.images[:2], epochs=2)
    assert torch.equal(result.maps, again.maps)                  # loaded from the cache, deterministic
    with pytest.raises(TypeError, match="ImageSet"):
        evaluation.data_randomization(backprop.gradient, tiny_net, (dataset.images, dataset.labels),
                                      dataset.images[:2])


def test_map_similarities_of_a_map_with_itself_are_one():
    maps = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) - 0.3
    for name, value in evaluation.map_similarities(maps, maps).items():
        torch.testing.assert_close(value, torch.ones(2), msg=name)


# --- registry and leaderboard -------------------------------------------------------------------

def test_every_registered_method_names_a_family_a_section_and_settings():
    assert len(registry.METHODS) >= 15
    for method in registry.METHODS.values():
        assert callable(method.function) and method.family in {"perturbation", "backprop", "lrp", "cam",
                                                                 "surrogate"}
        assert method.section.startswith("2.1.") and isinstance(method.lite0, dict)
    assert registry.names("cam", gradients=False) == ["score-cam"]
    with pytest.raises(KeyError, match="known"):
        registry.method("gradcam")


def test_leaderboard_scores_methods_and_counts_their_passes():
    from vizlib import models

    torch.manual_seed(0)
    net = models.GAPNet(widths=(8, 8)).eval()
    shapes = data.shapes(6, seed=3)
    board = evaluation.leaderboard(["gradient", "grad-cam"], shapes, ["pointing game", "relevance mass",
                                                                      "deletion AUC"],
                                   model=net, setting="shapes", batch_size=2)
    assert list(board.index) == ["gradient", "grad-cam"]
    gradient = board.loc["gradient"]
    assert gradient["forwards / image"] == 1 and gradient["backwards / image"] == 1
    maps = backprop.gradient(net, shapes.images, shapes.labels)
    expected = relevance_mass(maps, shapes.masks).double()
    assert gradient["relevance mass"] == pytest.approx(expected.mean().item(), rel=1e-6)
    assert gradient["relevance mass sd"] == pytest.approx(expected.std().item(), rel=1e-6)
    assert "| gradient | backprop | 2.1.2.1 |" in evaluation.to_markdown(board)
    by_class = evaluation.leaderboard(["gradient"], shapes, ["relevance mass"], model=net, setting="shapes",
                                      average="classes")
    per_class = torch.stack([expected[shapes.labels == c].mean() for c in shapes.labels.unique()])
    assert by_class.loc["gradient", "relevance mass"] == pytest.approx(per_class.mean().item(), rel=1e-6)
    with pytest.raises(KeyError, match="metrics"):
        evaluation.leaderboard(["gradient"], shapes, ["accuracy"], model=net, setting="shapes")
    with pytest.raises(ValueError, match="average"):
        evaluation.leaderboard(["gradient"], shapes, ["relevance mass"], model=net, setting="shapes",
                               average="pixels")


def test_leaderboard_options_replace_a_setting_and_passes_through_the_fast_copy_are_counted():
    from vizlib import mechanics, models

    torch.manual_seed(0)
    net = models.GAPNet(widths=(8, 8)).eval()
    shapes = data.shapes(4, seed=3)
    board = evaluation.leaderboard(["occlusion"], shapes, ["relevance mass"], model=net, setting="shapes",
                                   options={"occlusion": {"stride": 8}})
    assert mechanics.inference_copy(net) is not net          # a GAPNet has BatchNorms to fold
    placements = registry.window_count(64, 64, (8, 8), 8)
    assert board.loc["occlusion", "forwards / image"] == 1 + placements
    maps = registry.method("occlusion")(net, shapes.images, shapes.labels, stride=8)
    expected = relevance_mass(maps, shapes.masks).double().mean().item()
    assert board.loc["occlusion", "relevance mass"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(KeyError, match="options"):
        evaluation.leaderboard(["gradient"], shapes, [], model=net, setting="shapes",
                               options={"occlusion": {"stride": 8}})
    with pytest.raises(TypeError, match="options"):
        evaluation.leaderboard(["occlusion"], shapes, [], model=net, setting="shapes", options={"occlusion": 16})


def test_leaderboard_scores_multiple_objects_on_mosaics():
    from vizlib import models

    torch.manual_seed(0)
    net = models.GAPNet(widths=(8, 8)).eval()
    mosaics = data.mosaics(data.shapes(40, seed=3), 3, instances=2)
    board = evaluation.leaderboard(["grad-cam"], mosaics, ["multiple objects"], model=net, setting="shapes")
    maps = registry.method("grad-cam")(net, mosaics.images, mosaics.labels)
    assert maps.shape[-2:] == (128, 128)
    expected = evaluation.multiple_objects(maps, mosaics.instance_masks).double()
    assert board.loc["grad-cam", "multiple objects"] == pytest.approx(expected.mean().item(), rel=1e-6)


def test_class_mean_weighs_every_class_the_same():
    values = torch.tensor([1.0, 1.0, 1.0, 0.0])
    labels = torch.tensor([0, 0, 0, 1])
    assert evaluation.class_mean(values, labels) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="labels"):
        evaluation.class_mean(values, labels[:3])


def test_instance_peaks_and_multiple_objects_by_hand():
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 1, 1], maps[0, 0, 6, 6], maps[0, 0, 1, 6] = 4.0, 1.0, 3.0
    instances = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    instances[0, 0, :3, :3] = True       # holds the peak 4
    instances[0, 1, 5:, 5:] = True       # peak 1 = 1/4 of the maximum
    instances[0, 2, :3, 5:] = True       # peak 3 = 3/4
    torch.testing.assert_close(evaluation.instance_peaks(maps, instances), torch.tensor([[1.0, 0.25, 0.75]]))
    assert evaluation.multiple_objects(maps, instances).item() == pytest.approx(2 / 3)
    assert evaluation.multiple_objects(maps, instances, ratio=0.2).item() == 1.0
    assert evaluation.multiple_objects(-maps, instances).item() == 0.0
    with pytest.raises(ValueError, match="ratio"):
        evaluation.multiple_objects(maps, instances, ratio=0)
    with pytest.raises(ValueError, match="instance_masks"):
        evaluation.instance_peaks(maps, instances[0])
    instances[0, 1] = False
    with pytest.raises(ValueError, match="empty"):
        evaluation.instance_peaks(maps, instances)


def test_localization_metrics_agree_with_quantus():
    import quantus

    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(8, 1, 12, 12, generator=generator)
    masks = torch.zeros(8, 12, 12, dtype=torch.bool)
    masks[:, 3:8, 2:9] = True
    masks[5:] = False
    masks[5:, :3, :4] = True                          # small objects off the centre
    maps[:4, 0, 5, 5] = 2.0                           # half the maps peak on the object
    arguments = dict(x_batch=torch.rand(8, 3, 12, 12, generator=generator).numpy(), y_batch=np.zeros(8, int),
                     a_batch=maps.numpy(), s_batch=masks[:, None].numpy(), model=None)
    options = dict(abs=False, normalise=False, disable_warnings=True)
    hits = quantus.PointingGame(**options)(**arguments)
    assert evaluation.pointing_game(maps, masks, tolerance=0).tolist() == [bool(h) for h in hits]
    assert sum(hits) >= 4
    for ours, theirs in [(relevance_mass, quantus.RelevanceMassAccuracy),
                         (relevance_rank, quantus.RelevanceRankAccuracy)]:
        torch.testing.assert_close(ours(maps, masks), torch.tensor(theirs(**options)(**arguments)).float(),
                                   rtol=1e-6, atol=1e-7)
