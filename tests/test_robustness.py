"""Attacks equal Captum's FGSM and PGD; softplus-β tends to ReLU; the explanation can be manipulated;
the stability measures give the hand-computed values.

Captum's FGSM leaves a component in place when |∇| ≤ 1e-6 (`zero_thresh`); vizlib takes the sign of
every nonzero gradient, so the comparisons set ``zero_thresh = 0``. Captum's PGD takes sign steps
for L2 too; vizlib steps along ∇/‖∇‖₂, and the L2 comparison uses a model whose loss gradient has
equal-magnitude entries, where the two directions agree up to the factor √d.
"""
import functools
import math

import captum.robust as cr
import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from vizlib import backprop, data, lrp, models, robustness
from vizlib.mechanics import preserved

from test_backprop import randomized, state   # random BatchNorm statistics; the model's state

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def cross_entropy(outputs, target):
    return F.cross_entropy(outputs, target, reduction="none")


def captum_attack(kind, model, bounds=None):
    low, high = bounds if bounds is not None else (-math.inf, math.inf)
    attack = getattr(cr, kind)(model, cross_entropy, low, high)
    (attack if kind == "FGSM" else attack.fgsm).zero_thresh = 0
    return attack


class ResidualNet(nn.Module):
    """Two torchvision BasicBlocks: each applies one in-place ReLU module twice per forward pass."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(torchvision.models.resnet.BasicBlock(8, 8),
                                    torchvision.models.resnet.BasicBlock(8, 8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


@pytest.fixture
def vgg():
    torch.manual_seed(0)
    return randomized(models.VGGNet(in_channels=3, num_classes=4, input_size=32, widths=(4, 8)))


@pytest.fixture
def residual():
    torch.manual_seed(0)
    return randomized(ResidualNet())


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --- FGSM and PGD against Captum --------------------------------------------------------------------

@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
def test_fgsm_equals_captum_fgsm(vgg, images, targeted, bounds):
    target = torch.tensor([1, 2, 3])
    ours = robustness.fgsm(vgg, images, target, epsilon=0.03, targeted=targeted, bounds=bounds)
    theirs = captum_attack("FGSM", vgg, bounds).perturb(images, 0.03, target, targeted=targeted)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)
    assert (ours != images).float().mean() > 0.5          # the attack moved most components


def test_fgsm_equals_captum_on_lite0_and_changes_the_prediction(lite0, chelsea):
    bounds = robustness.PREPROCESSED_BOUNDS
    ours = robustness.fgsm(lite0, chelsea, epsilon=2 / 128, bounds=bounds)
    predicted = lite0(chelsea).argmax(1)
    theirs = captum_attack("FGSM", lite0, bounds).perturb(chelsea, 2 / 128, predicted)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)
    assert ours.min() >= bounds[0] and ours.max() <= bounds[1]
    with torch.no_grad():
        assert lite0(ours).argmax(1) != predicted


def test_fgsm_default_target_is_the_predicted_class(vgg, images):
    predicted = vgg(images).argmax(1)
    torch.testing.assert_close(robustness.fgsm(vgg, images, epsilon=0.1),
                               robustness.fgsm(vgg, images, predicted, epsilon=0.1), rtol=0, atol=0)


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
def test_pgd_linf_equals_captum_pgd(vgg, images, targeted, bounds):
    target = torch.tensor([3, 0, 1])
    ours = robustness.pgd(vgg, images, target, radius=0.05, step_size=0.02, steps=6, targeted=targeted,
                          bounds=bounds)
    theirs = captum_attack("PGD", vgg, bounds).perturb(images, 0.05, 0.02, 6, target, targeted=targeted)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert (ours - images).abs().max() <= 0.05 + 1e-6


def two_class_linear(d, seed=0):
    """f(x) = W x with w_1 − w_0 = ±1 in every entry, so ∇_x J = (p_1 − y_1)(w_1 − w_0) ∝ sign(∇_x J)."""
    generator = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d, generator=generator)
    w1 = w0 + torch.where(torch.rand(d, generator=generator) < 0.5, -1.0, 1.0)
    linear = nn.Linear(d, 2, bias=False)
    linear.weight.data = torch.stack([w0, w1]) * 0.05
    return nn.Sequential(nn.Flatten(), linear).eval()


@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_l2_equals_captum_pgd_where_sign_and_normalized_gradient_agree(images, bounds, targeted):
    model = two_class_linear(images[0].numel())
    d = images[0].numel()
    target = torch.tensor([1, 0, 1])
    ours = robustness.pgd(model, images, target, radius=1.0, step_size=0.4, steps=5, norm="l2",
                          targeted=targeted, bounds=bounds)
    theirs = captum_attack("PGD", model, bounds).perturb(images, 1.0, 0.4 / math.sqrt(d), 5, target,
                                                         targeted=targeted, norm="L2")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert (ours - images).flatten(1).norm(dim=1).max() <= 1.0 + 1e-5


def test_pgd_l2_step_is_the_normalized_gradient_and_projects_onto_the_ball(vgg, images):
    target = vgg(images).argmax(1)
    inputs = images.clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.cross_entropy(vgg(inputs), target, reduction="sum"), inputs)
    unit = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    one_step = robustness.pgd(vgg, images, radius=10.0, step_size=0.5, steps=1, norm="l2")
    torch.testing.assert_close(one_step, images + 0.5 * unit, rtol=1e-6, atol=1e-6)
    projected = robustness.pgd(vgg, images, radius=0.2, step_size=0.5, steps=1, norm="l2")
    torch.testing.assert_close(projected, images + 0.2 * unit, rtol=1e-6, atol=1e-6)


def test_pgd_on_lite0_equals_captum(lite0, chelsea):
    bounds = robustness.PREPROCESSED_BOUNDS
    target = torch.tensor([282])
    ours = robustness.pgd(lite0, chelsea, target, radius=2 / 128, step_size=1 / 128, steps=2, bounds=bounds)
    theirs = captum_attack("PGD", lite0, bounds).perturb(chelsea, 2 / 128, 1 / 128, 2, target)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_random_start_is_seeded_and_stays_in_the_ball(vgg, images, norm):
    options = dict(radius=0.3, step_size=0.05, steps=2, norm=norm, random_start=True, bounds=(0.0, 1.0))
    first = robustness.pgd(vgg, images, seed=3, **options)
    torch.testing.assert_close(first, robustness.pgd(vgg, images, seed=3, **options), rtol=0, atol=0)
    assert not torch.equal(first, robustness.pgd(vgg, images, seed=4, **options))
    delta = (first - images).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= 0.3 + 1e-5
    assert first.min() >= 0 and first.max() <= 1


def test_uniform_start_in_the_l2_ball_fills_it_like_r_times_u_to_the_1_over_d():
    x = torch.zeros(4000, 1, 1, 2)                      # d = 2: the disc; P(‖δ‖ ≤ r/2) = 1/4
    lengths = (robustness._random_start(x, 1.0, "l2", seed=0)).flatten(1).norm(dim=1)
    assert lengths.max() <= 1.0
    assert abs((lengths <= 0.5).float().mean().item() - 0.25) < 0.03


def test_attacks_leave_the_model_unchanged(residual, images):
    residual.train()
    before = state(residual)
    robustness.fgsm(residual, images, epsilon=0.1)
    robustness.pgd(residual, images, radius=0.1, step_size=0.05, steps=2, norm="l2")
    assert state(residual) == before


@pytest.mark.parametrize("call, message", [
    (lambda m, x: robustness.fgsm(m, x, epsilon=-0.1), "epsilon"),
    (lambda m, x: robustness.fgsm(m, x, epsilon=0.1, bounds=(1.0, 0.0)), "bounds"),
    (lambda m, x: robustness.fgsm(m, x, epsilon=0.1, bounds=(0.0,)), "bounds"),
    (lambda m, x: robustness.fgsm(m, x, epsilon=0.1, targeted=True), "target"),
    (lambda m, x: robustness.pgd(m, x, radius=-1.0, step_size=0.1, steps=1), "radius"),
    (lambda m, x: robustness.pgd(m, x, radius=1.0, step_size=0.1, steps=0), "steps"),
    (lambda m, x: robustness.pgd(m, x, radius=1.0, step_size=0.1, steps=1, norm="l1"), "norm"),
    (lambda m, x: robustness.pgd(m, x[0], radius=1.0, step_size=0.1, steps=1), "x"),
])
def test_bad_arguments_raise_naming_the_argument(vgg, images, call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call(vgg, images)


# --- softplus-β ----------------------------------------------------------------------------------------

def test_softplus_tends_to_relu_with_error_log2_over_beta():
    z = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    errors = []
    for beta in (1.0, 10.0, 100.0, 1000.0):
        relu_error = (robustness.SoftplusReLU(beta)(z) - z.relu()).abs().max().item()
        relu6_error = (robustness.SoftplusReLU(beta, 6.0)(z) - z.clamp(0, 6)).abs().max().item()
        assert relu_error == pytest.approx(math.log(2) / beta, rel=1e-6)     # the worst point is z = 0
        assert relu6_error == pytest.approx(math.log(2) / beta, rel=1e-2)    # z = 0 and z = 6
        errors.append(relu_error)
    assert errors == sorted(errors, reverse=True)


def test_softplus_relus_approach_the_original_logits_as_beta_grows(lite0, chelsea):
    relu6_count = sum(isinstance(m, nn.ReLU6) for m in lite0.modules())
    with torch.no_grad():
        logits = lite0(chelsea)
        errors = []
        for beta in (10.0, 100.0, 1000.0):
            with robustness.softplus_relus(lite0, beta) as replaced:
                assert len(replaced) == relu6_count == 33
                errors.append((lite0(chelsea) - logits).abs().max().item())
    print(f"max |logit change| for β = 10, 100, 1000: {errors}")
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 * errors[0]
    assert not any(isinstance(m, robustness.SoftplusReLU) for m in lite0.modules())


def test_softplus_relus_keeps_shared_modules_shared_and_restores_on_error(residual):
    before = state(residual)
    shared = residual.blocks[0].relu
    with pytest.raises(RuntimeError, match="inside"):
        with robustness.softplus_relus(residual, 5.0):
            replacement = residual.blocks[0].relu
            assert isinstance(replacement, robustness.SoftplusReLU) and replacement.ceiling is None
            assert isinstance(residual.stem[2], robustness.SoftplusReLU) and residual.stem[2].ceiling == 6.0
            raise RuntimeError("inside")
    assert residual.blocks[0].relu is shared
    assert state(residual) == before


@pytest.mark.parametrize("beta", [0, -1.0, math.inf, True])
def test_softplus_relus_rejects_bad_beta(residual, beta):
    with pytest.raises(ValueError, match="beta"), robustness.softplus_relus(residual, beta):
        pass


# --- stability --------------------------------------------------------------------------------------------

def maps_of(*rows, side=None):
    """[N, 1, H, W] maps from flat rows (a 2×2 map for 4 values)."""
    values = torch.tensor(rows, dtype=torch.float32)
    side = side or int(math.isqrt(values.shape[1]))
    return values.view(len(rows), 1, side, -1)


def test_identical_inputs_are_perfectly_stable(vgg, images):
    for method in (backprop.gradient, backprop.input_x_gradient, backprop.guided_backprop):
        result = robustness.stability(method, vgg, images, images.clone())
        torch.testing.assert_close(result["spearman"], torch.ones(3), rtol=0, atol=1e-6)
        torch.testing.assert_close(result["top_k_intersection"], torch.ones(3), rtol=0, atol=0)
        torch.testing.assert_close(result["ssim"], torch.ones(3), rtol=0, atol=1e-6)
        torch.testing.assert_close(result["l2_distance"], torch.zeros(3), rtol=0, atol=1e-6)


def test_rank_correlation_and_top_k_on_hand_built_pairs():
    # a = 1 2 3 4 against: reversed; ties 1 1 2 2; a permutation sharing one of the top two pixels.
    a = maps_of([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4])
    b = maps_of([4, 3, 2, 1], [1, 1, 2, 2], [1, 4, 3, 2])
    result = robustness.map_similarity(a, b, top_k=0.5)
    # ranks of 1 1 2 2 are 1.5 1.5 3.5 3.5; centred (-1.5 -.5 .5 1.5)·(-1 -1 1 1) = 4 over √5·√4
    # ranks of 1 4 3 2 centred: (-1.5 1.5 .5 -.5); dot with (-1.5 -.5 .5 1.5) = 2.25 - .75 + .25 - .75 = 1
    expected_spearman = torch.tensor([-1.0, 4 / math.sqrt(20), 1 / 5])
    torch.testing.assert_close(result["spearman"], expected_spearman, rtol=0, atol=1e-6)
    # top two pixels of a: positions 2, 3. Of b: {0, 1}, {2, 3}, {1, 2}.
    torch.testing.assert_close(result["top_k_intersection"], torch.tensor([0.0, 1.0, 0.5]), rtol=0, atol=0)


def test_l2_distance_of_normalized_maps_on_hand_built_pairs():
    a = maps_of([1, 0, 0, 0], [1, 1, 0, 0], [2, 0, 0, 0], [0, -3, 0, 0])
    b = maps_of([0, 1, 0, 0], [1, 0, 0, 0], [5, 0, 0, 0], [0, 3, 0, 0])
    # disjoint: √2; (1,1)/√2 vs (1,0): √((1/√2 − 1)² + 1/2) = √(2 − √2); equal up to scale or sign: 0
    expected = torch.tensor([math.sqrt(2), math.sqrt(2 - math.sqrt(2)), 0.0, 0.0])
    torch.testing.assert_close(robustness.map_similarity(a, b, top_k=0.25)["l2_distance"], expected,
                               rtol=0, atol=1e-6)


def test_ssim_of_a_7x7_pair_is_the_single_window_formula():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 1, 7, 7, generator=generator), torch.rand(1, 1, 7, 7, generator=generator)
    p, q = (v.double().flatten() / v.max() for v in (a, b))
    # With a 7×7 window only the centre pixel has a full window: SSIM of the global statistics,
    # sample covariance, C1 = (0.01·L)², C2 = (0.03·L)² with data range L = 1 (Wang et al., 2004).
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    covariance = ((p - p.mean()) * (q - q.mean())).sum() / 48
    expected = ((2 * p.mean() * q.mean() + c1) * (2 * covariance + c2)
                / ((p.mean() ** 2 + q.mean() ** 2 + c1) * (p.var() + q.var() + c2))).item()
    assert robustness.map_similarity(a, b)["ssim"].item() == pytest.approx(expected, rel=1e-5)


def test_ssim_is_undefined_below_3x3_and_uses_a_smaller_window_below_7x7():
    small = torch.rand(2, 1, 2, 5, generator=torch.Generator().manual_seed(0))
    assert robustness.map_similarity(small, small)["ssim"].isnan().all()
    five = torch.rand(2, 1, 5, 9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(robustness.map_similarity(five, five)["ssim"], torch.ones(2))


def test_top_k_rounds_up_and_channels_are_summed_in_magnitude():
    a = torch.zeros(1, 3, 2, 5)
    a[0, 0, 0, 0], a[0, 1, 0, 0], a[0, 2, 1, 4] = 1.0, -2.0, 2.5        # |·| sums: 3 at (0,0), 2.5 at (1,4)
    b = torch.zeros(1, 1, 2, 5)
    b[0, 0, 1, 4] = 1.0
    # k = ⌈0.1 · 10⌉ = 1: top pixel (0,0) vs (1,4); k = ⌈0.15 · 10⌉ = 2: {(0,0), (1,4)} ∩ {(1,4), (0,0)}
    assert robustness.map_similarity(a, b, top_k=0.1)["top_k_intersection"].item() == 0.0
    assert robustness.map_similarity(a, b, top_k=0.15)["top_k_intersection"].item() == 1.0


def test_stability_explains_both_inputs_for_the_class_predicted_on_x(vgg, images):
    seen = []

    def explain(model, x, target):
        seen.append(target.clone())
        return backprop.gradient(model, x, target)

    other = images.flip(0)
    robustness.stability(explain, vgg, images, other)
    assert torch.equal(seen[0], vgg(images).argmax(1)) and torch.equal(seen[1], seen[0])


@pytest.mark.parametrize("call, message", [
    (lambda: robustness.map_similarity(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 9)), "other"),
    (lambda: robustness.map_similarity(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), top_k=0), "top_k"),
    (lambda: robustness.map_similarity(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), top_k=1.5), "top_k"),
    (lambda: robustness.map_similarity(torch.rand(2, 8), torch.rand(2, 8)), "maps"),
])
def test_map_similarity_rejects_bad_maps(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_stability_rejects_inputs_of_different_shapes(vgg, images):
    with pytest.raises(ValueError, match="x_other"):
        robustness.stability(backprop.gradient, vgg, images, images[:2])


# --- the manipulation attack ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [
    backprop.gradient,
    backprop.input_x_gradient,
    functools.partial(backprop.smoothgrad, n_samples=4, noise_level=0.1, seed=2),
])
def test_differentiable_explanations_have_the_values_of_the_vizlib_methods(vgg, images, method):
    target = torch.tensor([0, 1, 2])
    inputs = images.clone().requires_grad_()
    with preserved(vgg):
        with_graph = robustness.differentiable(method)(vgg, inputs, target)
    assert with_graph.requires_grad
    torch.testing.assert_close(with_graph.detach(), method(vgg, images, target), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("epsilon", [1e-6, 0.1, 1.0])
@pytest.mark.parametrize("make", [
    lambda: models.VGGNet(in_channels=3, num_classes=4, input_size=32, widths=(4, 8)),
    lambda: models.GAPNet(widths=(4, 8)),
])
def test_differentiable_lrp_epsilon_has_the_values_of_lrp(images, make, epsilon):
    torch.manual_seed(0)
    net = randomized(make())
    target = torch.tensor([0, 1, 2])
    inputs = images.clone().requires_grad_()
    before = state(net)
    with preserved(net):
        with_graph = robustness.differentiable(functools.partial(lrp.lrp, epsilon=epsilon))(net, inputs, target)
    assert state(net) == before
    (second,) = torch.autograd.grad(with_graph.square().sum(), inputs)
    assert second.abs().sum() > 0                               # the map can be differentiated again
    torch.testing.assert_close(with_graph.detach(), lrp.lrp(net, images, target, epsilon=epsilon),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("explain, message", [
    (functools.partial(lrp.lrp, rule="gamma"), "explain"),
    (functools.partial(lrp.lrp, composite="epsilon_plus_flat"), "explain"),
    (lrp.lrp, "ReLU6"),                                            # relevance passes ReLU6's clip
])
def test_differentiable_lrp_rejects_other_rules_and_relu6(residual, images, explain, message):
    with pytest.raises((ValueError, TypeError), match=message), preserved(residual):
        robustness.differentiable(explain)(residual, images.clone().requires_grad_(), torch.tensor([0, 1, 2]))


def square_goal(side=32):
    goal = torch.zeros(side, side)
    goal[8:24, 8:24] = 1.0
    return goal


def squared_error_to(goal, maps):
    h = maps.abs().sum(dim=1)
    h = h / h.sum(dim=(1, 2), keepdim=True)
    return (h - goal / goal.sum()).square().sum(dim=(1, 2))


MANIPULATION = dict(beta=30.0, steps=40, lr=1e-2, output_weight=1e2, epsilon=0.2, bounds=(0.0, 1.0))


@pytest.mark.parametrize("method", [backprop.gradient, functools.partial(lrp.lrp, epsilon=0.1)],
                         ids=["gradient", "lrp"])
def test_manipulation_moves_the_map_while_the_output_stays(vgg, images, method):
    goal = square_goal()
    before = state(vgg)
    adversarial, history = robustness.manipulate_explanation(vgg, images, goal, method, **MANIPULATION)
    assert state(vgg) == before
    ratio = squared_error_to(goal, method(vgg, adversarial)) / squared_error_to(goal, method(vgg, images))
    with torch.no_grad():
        output_change = (vgg(adversarial).softmax(1) - vgg(images).softmax(1)).abs().max()
    print(f"squared error to the target map: × {ratio.tolist()}; output change {output_change:.1e}")
    assert (ratio < 0.6).all()                                   # the ReLU network's map moved
    assert output_change < 1e-3
    assert (adversarial - images).abs().max() <= 0.2 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert history["explanation"].shape == history["output"].shape == (40, 3)
    assert (history["explanation"][-1] < 0.6 * history["explanation"][0]).all()


def test_manipulation_is_deterministic(vgg, images):
    options = dict(MANIPULATION, steps=5)
    smoothed = functools.partial(backprop.smoothgrad, n_samples=2)
    first, history = robustness.manipulate_explanation(vgg, images, square_goal(), smoothed, **options)
    second, again = robustness.manipulate_explanation(vgg, images, square_goal(), smoothed, **options)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(history["explanation"], again["explanation"], rtol=0, atol=0)


def test_without_softplus_the_gradient_of_a_relu_net_cannot_be_manipulated(vgg, images):
    # The gradient of a ReLU network is piecewise constant in x, so its derivative is zero, and the
    # output term starts at its minimum: the attack has no direction to move in.
    adversarial, history = robustness.manipulate_explanation(vgg, images, square_goal(), backprop.gradient,
                                                             **dict(MANIPULATION, beta=None, steps=3))
    torch.testing.assert_close(adversarial, images, rtol=0, atol=0)
    assert torch.equal(history["explanation"][0], history["explanation"][-1])


def test_manipulation_accepts_target_maps_of_every_layout(vgg, images):
    goal = square_goal()
    results = [robustness.manipulate_explanation(vgg, images, layout, backprop.gradient,
                                                 **dict(MANIPULATION, steps=2))[0]
               for layout in (goal, goal[None], goal.expand(3, 1, 32, 32), 2 * goal.expand(3, 3, 32, 32))]
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target_map, explain, message", [
    (torch.ones(16, 16), backprop.gradient, "target_map"),
    (torch.ones(2, 32, 32), backprop.gradient, "target_map"),
    (torch.zeros(32, 32), backprop.gradient, "target_map"),
    (torch.ones(32, 32, dtype=torch.long), backprop.gradient, "target_map"),
    (torch.ones(32, 32), backprop.guided_backprop, "explain"),
])
def test_manipulation_rejects_bad_target_maps_and_detached_explanations(vgg, images, target_map, explain, message):
    before = state(vgg)
    with pytest.raises((ValueError, TypeError), match=message):
        robustness.manipulate_explanation(vgg, images, target_map, explain, **dict(MANIPULATION, steps=1))
    assert state(vgg) == before
    assert not any(isinstance(m, robustness.SoftplusReLU) for m in vgg.modules())


def test_preprocessed_bounds_are_the_range_of_preprocess():
    black_and_white = np.zeros((8, 16, 3), dtype=np.uint8)
    black_and_white[:, 8:] = 255
    x = data.preprocess(black_and_white, size=8)
    assert robustness.PREPROCESSED_BOUNDS == (x.min().item(), x.max().item())
