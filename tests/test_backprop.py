"""Gradient methods agree with Captum where both define the same rule, and with closed forms.

Tolerances: float32 throughout; the same operations in another order differ by a few ulps of the
largest value, so comparisons use rtol=1e-5 and atol=1e-5 × max |reference|.
"""
import copy
import functools

import captum.attr as ca
import pytest
import torch
import torchvision
from torch import nn

from vizlib import activations, backprop, data, models
from vizlib.mechanics import hook_count

pytestmark = [pytest.mark.filterwarnings("ignore:.*required_grads has been set automatically"),
              pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations")]


def assert_matches(ours, theirs, rtol=1e-5):
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=rtol * theirs.abs().max().item())


class ResidualNet(nn.Module):
    """Two torchvision BasicBlocks: each applies one in-place ReLU module twice per forward pass."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(torchvision.models.resnet.BasicBlock(8, 8),
                                    torchvision.models.resnet.BasicBlock(8, 8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def randomized(model, eps=None):
    """Random BatchNorm statistics, so that the nets' ReLUs see both signs at every layer; `eps`, when
    given, replaces every BatchNorm's epsilon."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
            if eps is not None:
                module.eps = eps
    return model.eval()


def small_net(name):
    torch.manual_seed(0)
    return randomized({
        "vgg": lambda: models.VGGNet(in_channels=3, num_classes=4, input_size=32, widths=(4, 8)),
        "allconv": lambda: models.AllConvNet(in_channels=3, num_classes=4, widths=(4, 8)),
        "residual": ResidualNet,
    }[name]())


SMALL_NETS = ["vgg", "allconv", "residual"]


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def state(model):
    return ([(name, id(module)) for name, module in model.named_modules(remove_duplicate=False)],
            [module.training for module in model.modules()], [p.requires_grad for p in model.parameters()],
            hook_count(model))


# --- against Captum -------------------------------------------------------------------------------

@pytest.mark.parametrize("net", SMALL_NETS)
@pytest.mark.parametrize("absolute", [False, True])
def test_gradient_equals_captum_saliency(net, absolute, images):
    model = small_net(net)
    target = torch.tensor([0, 1, 3])
    assert_matches(backprop.gradient(model, images, target, abs=absolute),
                   ca.Saliency(model).attribute(images, target=target, abs=absolute))


@pytest.mark.parametrize("net", SMALL_NETS)
def test_input_x_gradient_equals_captum(net, images):
    model = small_net(net)
    assert_matches(backprop.input_x_gradient(model, images, 2), ca.InputXGradient(model).attribute(images, target=2))


@pytest.mark.parametrize("net", SMALL_NETS)
@pytest.mark.parametrize("ours, theirs", [(backprop.guided_backprop, ca.GuidedBackprop),
                                          (backprop.deconvnet, ca.Deconvolution)])
def test_relu_rules_equal_captum_on_relu_nets(net, ours, theirs, images):
    model = small_net(net)
    before = state(model)
    target = torch.tensor([1, 0, 2])
    assert_matches(ours(model, images, target), theirs(model).attribute(images, target=target))
    assert state(model) == before


def test_gradient_and_input_x_gradient_equal_captum_on_lite0(lite0, chelsea):
    assert_matches(backprop.gradient(lite0, chelsea, 282), ca.Saliency(lite0).attribute(chelsea, target=282, abs=False))
    assert_matches(backprop.input_x_gradient(lite0, chelsea, 282),
                   ca.InputXGradient(lite0).attribute(chelsea, target=282))


class ClippedReLU(nn.Module):
    """ReLU6 written as nn.ReLU then a clamp at 6, so that Captum's ReLU hooks apply to it."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x).clamp(max=6)


@pytest.fixture(scope="module")
def lite0_relu_then_clamp(lite0):
    rewritten = copy.deepcopy(lite0)
    for module in list(rewritten.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(module, child_name, ClippedReLU())
    return rewritten


@pytest.mark.parametrize("ours, theirs", [(backprop.guided_backprop, ca.GuidedBackprop),
                                          (backprop.deconvnet, ca.Deconvolution)])
def test_relu6_rules_equal_captum_on_lite0_with_relu6_as_relu_then_clamp(lite0, lite0_relu_then_clamp, chelsea,
                                                                         ours, theirs):
    assert_matches(ours(lite0, chelsea, 282), theirs(lite0_relu_then_clamp).attribute(chelsea, target=282))


@pytest.mark.parametrize("theirs", [ca.GuidedBackprop, ca.Deconvolution])
def test_captum_relu_rules_reduce_to_the_gradient_on_relu6_but_ours_do_not(lite0, chelsea, theirs):
    plain = backprop.gradient(lite0, chelsea, 282)
    torch.testing.assert_close(theirs(lite0).attribute(chelsea, target=282), plain)
    assert (backprop.guided_backprop(lite0, chelsea, 282) - plain).abs().max() > 0.1 * plain.abs().max()


@pytest.mark.parametrize("net, layer, channel", [("vgg", "features.4", 1), ("vgg", "features.9", 5),
                                                 ("allconv", "features.5", 2), ("residual", "blocks.0", 3)])
@pytest.mark.parametrize("ours, theirs", [(backprop.deconvnet, ca.NeuronDeconvolution),
                                          (backprop.guided_backprop, ca.NeuronGuidedBackprop)])
def test_neuron_mode_equals_captum_at_the_strongest_unit(net, layer, channel, ours, theirs, images):
    model = small_net(net)
    ours_maps = ours(model, images, layer=layer, channel=channel)
    activation = activations(model, images, [layer])[layer][:, channel]
    for i in range(len(images)):
        h, w = divmod(activation[i].argmax().item(), activation.shape[-1])
        reference = theirs(model, model.get_submodule(layer)).attribute(images[i:i + 1], neuron_selector=(channel, h, w))
        assert_matches(ours_maps[i:i + 1], reference)


@pytest.mark.parametrize("ours, theirs", [(backprop.deconvnet, ca.NeuronDeconvolution),
                                          (backprop.guided_backprop, ca.NeuronGuidedBackprop)])
def test_neuron_mode_on_lite0_equals_captum_with_relu6_as_relu_then_clamp(lite0, lite0_relu_then_clamp, chelsea,
                                                                         ours, theirs):
    layer, channel = "blocks.3", 7
    activation = activations(lite0, chelsea, [layer])[layer][0, channel]
    h, w = divmod(activation.argmax().item(), activation.shape[-1])
    reference = theirs(lite0_relu_then_clamp, lite0_relu_then_clamp.get_submodule(layer)).attribute(
        chelsea, neuron_selector=(channel, h, w))
    assert_matches(ours(lite0, chelsea, layer=layer, channel=channel), reference)


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"])
@pytest.mark.parametrize("net", SMALL_NETS)
def test_integrated_gradients_equal_captum_with_the_same_rule(net, rule, images):
    model = small_net(net)
    baseline = torch.full_like(images, 0.3)
    ours, delta = backprop.integrated_gradients(model, images, 1, baseline=baseline, steps=16, rule=rule,
                                                batch_size=10, return_delta=True)
    theirs, their_delta = ca.IntegratedGradients(model).attribute(
        images, baselines=baseline, target=1, n_steps=16, method=rule, return_convergence_delta=True)
    assert_matches(ours, theirs)
    torch.testing.assert_close(delta, their_delta, rtol=1e-4, atol=1e-4)


def test_integrated_gradients_on_lite0_equal_captum(lite0, chelsea):
    ours = backprop.integrated_gradients(lite0, chelsea, 282, steps=8, rule="gausslegendre", batch_size=8)
    theirs = ca.IntegratedGradients(lite0).attribute(chelsea, target=282, n_steps=8, method="gausslegendre")
    assert_matches(ours, theirs, rtol=1e-4)


def test_captum_trapezoid_weights_sum_to_one_minus_one_over_steps(images):
    """Captum's trapezoid rule uses spacing 1/n for n nodes on [0, 1] (true spacing: 1/(n−1)), so its
    attributions are ours scaled by (n−1)/n and break completeness by 1/n."""
    model, steps = small_net("vgg"), 10
    ours = backprop.integrated_gradients(model, images, 1, steps=steps, rule="riemann_trapezoid")
    theirs = ca.IntegratedGradients(model).attribute(images, target=1, n_steps=steps, method="riemann_trapezoid")
    assert_matches(ours * (steps - 1) / steps, theirs)


# --- exact results --------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", backprop.QUADRATURE_RULES)
def test_quadrature_weights_sum_to_one_and_integrate_a_line_exactly(rule):
    nodes, weights = backprop.quadrature(rule, 7, dtype=torch.float64)   # nodes built in float32, as Captum's
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    exact_for_line = rule in ("riemann_middle", "riemann_trapezoid", "gausslegendre")
    assert (weights * (3 * nodes + 1)).sum().item() == pytest.approx(2.5, abs=1e-6 if exact_for_line else 0.25)


def test_integrated_gradients_are_complete_with_300_steps(images):
    """Completeness to 1e-3 needs a path along which the gradient changes little between nodes; on
    EfficientNet-Lite0 the black-baseline path is far rougher (the chapter measures it)."""
    model = small_net("residual")
    attributions, delta = backprop.integrated_gradients(model, images, 1, steps=300, return_delta=True)
    with torch.no_grad():
        difference = model(images)[:, 1] - model(torch.zeros_like(images))[:, 1]
    torch.testing.assert_close(attributions.sum(dim=(1, 2, 3)), difference, rtol=1e-3, atol=0)
    torch.testing.assert_close(delta, attributions.sum(dim=(1, 2, 3)) - difference)


def test_the_completeness_error_returned_on_lite0_is_the_measured_one(lite0, chelsea):
    baseline = torch.full_like(chelsea, 0.5)
    attributions, delta = backprop.integrated_gradients(lite0, chelsea, 282, baseline=baseline, steps=8,
                                                        batch_size=8, return_delta=True)
    with torch.no_grad():
        difference = lite0(chelsea)[0, 282] - lite0(baseline)[0, 282]
    torch.testing.assert_close(delta[0], attributions.sum() - difference)


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    return Linear().eval()


@pytest.mark.parametrize("method", [backprop.gradient, backprop.guided_backprop, backprop.deconvnet,
                                    backprop.rectified_gradient, backprop.smoothgrad])
def test_every_gradient_method_gives_the_weights_on_a_linear_model(linear, method):
    x = torch.randn(2, 3, 8, 8)
    weights = linear.fc.weight[3].detach().view(1, 3, 8, 8).expand_as(x)
    torch.testing.assert_close(method(linear, x, 3), weights)


def test_products_with_the_input_are_exact_on_a_linear_model(linear):
    x, baseline = torch.randn(2, 3, 8, 8), torch.randn(1, 3, 8, 8)
    weights = linear.fc.weight[3].detach().view(1, 3, 8, 8)
    torch.testing.assert_close(backprop.gradient(linear, x, 3, abs=True), weights.abs().expand_as(x))
    torch.testing.assert_close(backprop.input_x_gradient(linear, x, 3), x * weights)
    for rule in backprop.QUADRATURE_RULES:
        torch.testing.assert_close(backprop.integrated_gradients(linear, x, 3, baseline=baseline, rule=rule, steps=5),
                                   (x - baseline) * weights)
    torch.testing.assert_close(backprop.blur_integrated_gradients(linear, x, 3, max_sigma=4.0, steps=7),
                               (x - data.gaussian_blur(x, 4.0)) * weights, rtol=1e-4, atol=1e-5)


def test_blur_integrated_gradients_are_complete_against_the_blurred_baseline(images):
    model = small_net("residual")
    attributions = backprop.blur_integrated_gradients(model, images, 2, max_sigma=10.0, steps=100)
    with torch.no_grad():
        difference = model(images)[:, 2] - model(data.gaussian_blur(images, 10.0))[:, 2]
    torch.testing.assert_close(attributions.sum(dim=(1, 2, 3)), difference, rtol=1e-2, atol=0)


def test_blur_integrated_gradients_do_not_depend_on_how_the_path_is_chunked(images):
    # Chunks of 3 cut through steps (several images per step), so the reused boundary images must
    # be looked up per item; each image alone must match too.
    model = small_net("residual")
    whole = backprop.blur_integrated_gradients(model, images, 2, max_sigma=10.0, steps=7)
    torch.testing.assert_close(backprop.blur_integrated_gradients(model, images, 2, max_sigma=10.0, steps=7,
                                                                  batch_size=3), whole, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(backprop.blur_integrated_gradients(model, images[1:2], 2, max_sigma=10.0, steps=7,
                                                                  batch_size=2), whole[1:2], rtol=1e-5, atol=1e-7)


def test_rectified_gradient_keeps_only_units_above_the_percentile_in_a_one_layer_net():
    torch.manual_seed(0)
    hidden, out = nn.Linear(6, 20), nn.Linear(20, 2)
    model = nn.Sequential(nn.Flatten(), hidden, nn.ReLU(), out).eval()
    x = torch.randn(1, 6, 1, 1)
    a = torch.relu(hidden(x.flatten(1)))[0].detach()
    signal = out.weight[1].detach()
    importance = a * signal
    threshold = importance.sort().values[16 - 1]          # the 80th percentile of 20 scores: the 16th smallest
    passed = signal * (a > 0) * (importance > threshold)
    expected = (passed @ hidden.weight.detach()).view(1, 6, 1, 1)
    torch.testing.assert_close(backprop.rectified_gradient(model, x, 1, percentile=80.0), expected)
    assert 0 < passed.count_nonzero() <= 4


@pytest.mark.parametrize("method", [backprop.gradient, backprop.guided_backprop])
def test_smoothgrad_without_noise_is_its_base_method(method, images):
    model = small_net("vgg")
    torch.testing.assert_close(backprop.smoothgrad(model, images, 2, method=method, noise_level=0.0, n_samples=3),
                               method(model, images, 2))


def test_smoothgrad_is_deterministic_under_seed_and_varies_with_it(images):
    model = small_net("allconv")
    first = backprop.smoothgrad(model, images, 1, n_samples=5, seed=3)
    torch.testing.assert_close(backprop.smoothgrad(model, images, 1, n_samples=5, seed=3, batch_size=4), first)
    assert not torch.allclose(backprop.smoothgrad(model, images, 1, n_samples=5, seed=4), first)


@pytest.mark.parametrize("variant, captum_name", [("mean", "smoothgrad"), ("square", "smoothgrad_sq"),
                                                   ("var", "vargrad")])
def test_smoothgrad_agrees_with_captum_noise_tunnel_in_distribution(variant, captum_name, images):
    model, x = small_net("vgg"), images[:1]
    sigma = 0.15 * (x.max() - x.min()).item()
    ours = backprop.smoothgrad(model, x, 1, n_samples=1000, variant=variant, batch_size=250)
    torch.manual_seed(0)
    theirs = ca.NoiseTunnel(ca.Saliency(model)).attribute(x, target=1, nt_type=captum_name, nt_samples=1000,
                                                          stdevs=sigma, abs=False, nt_samples_batch_size=250)
    correlation = torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1]
    assert correlation > 0.99


def test_smoothgrad_smooths_any_method_of_the_module(images):
    model = small_net("vgg")
    ig = functools.partial(backprop.integrated_gradients, steps=4)
    smoothed = backprop.smoothgrad(model, images, 0, method=ig, noise_level=0.0, n_samples=2)
    torch.testing.assert_close(smoothed, ig(model, images, 0))


@pytest.mark.parametrize("method", [
    backprop.gradient, backprop.guided_backprop, backprop.rectified_gradient,
    functools.partial(backprop.integrated_gradients, steps=6, batch_size=4),
    functools.partial(backprop.blur_integrated_gradients, max_sigma=5.0, steps=6, batch_size=5),
    functools.partial(backprop.smoothgrad, n_samples=3, batch_size=2)])
def test_a_batch_gives_the_same_maps_as_one_image_at_a_time(method, images):
    model = small_net("residual")
    target = torch.tensor([2, 0, 1])
    together = method(model, images, target)
    for i in range(len(images)):
        if getattr(method, "func", None) is backprop.smoothgrad:
            continue   # the noise depends on the batch; determinism is tested separately
        assert_matches(together[i:i + 1], method(model, images[i:i + 1], target[i:i + 1]))


# --- robustness -----------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda m, x: backprop.gradient(m, x[0], 0), ValueError, "x: expected a batch"),
    (lambda m, x: backprop.gradient(m, x.masked_fill(x > 2, float("nan")), 0), ValueError, "x: contains NaN"),
    (lambda m, x: backprop.gradient(m, x.long(), 0), TypeError, "floating-point"),
    (lambda m, x: backprop.guided_backprop(m, x, 9), ValueError, "target: class index 9 is out of range"),
    (lambda m, x: backprop.deconvnet(m, x, layer="features.44", channel=0), KeyError, "unknown layer name"),
    (lambda m, x: backprop.deconvnet(m, x, layer="features.4", channel=99), ValueError, r"channel: expected an int"),
    (lambda m, x: backprop.deconvnet(m, x, layer="features.4"), ValueError, "give both"),
    (lambda m, x: backprop.guided_backprop(m, x, 1, layer="features.4", channel=0), ValueError, "neuron mode"),
    (lambda m, x: backprop.deconvnet(m, x, layer="classifier.3", channel=0), ValueError, r"expected \[N, C, H, W\]"),
    (lambda m, x: backprop.smoothgrad(m, x, 0, variant="median"), ValueError, "variant"),
    (lambda m, x: backprop.smoothgrad(m, x, 0, n_samples=0), ValueError, "n_samples"),
    (lambda m, x: backprop.integrated_gradients(m, x, 0, rule="simpson"), ValueError, "rule: expected one of"),
    (lambda m, x: backprop.integrated_gradients(m, x, 0, steps=0), ValueError, "steps"),
    (lambda m, x: backprop.integrated_gradients(m, x, 0, baseline=torch.zeros(2, 3, 5, 5)), ValueError, "baseline"),
    (lambda m, x: backprop.integrated_gradients(m, x, 0, batch_size=0), ValueError, "batch_size"),
    (lambda m, x: backprop.blur_integrated_gradients(m, x, 0, max_sigma=0), ValueError, "max_sigma"),
    (lambda m, x: backprop.rectified_gradient(m, x, 0, percentile=100), ValueError, "percentile"),
])
def test_bad_input_is_rejected_clearly_and_leaves_the_model_unchanged(call, error, message, images):
    model = small_net("vgg")
    before = state(model)
    with pytest.raises(error, match=message):
        call(model, images)
    assert state(model) == before


def test_the_model_is_unchanged_after_every_method(images):
    model = small_net("residual").train()
    model.blocks[0].conv1.weight.requires_grad_(False)
    before = state(model)
    for method in (backprop.gradient, backprop.guided_backprop, backprop.deconvnet, backprop.rectified_gradient,
                   backprop.smoothgrad, backprop.integrated_gradients, backprop.blur_integrated_gradients):
        method(model, images, 1)
        assert state(model) == before, method.__name__
    backprop.deconvnet(model, images, layer="blocks.1", channel=0)
    assert state(model) == before


@pytest.mark.parametrize("name", SMALL_NETS)
def test_rectified_gradient_at_percentile_zero_is_the_gradient(name, images):
    model = small_net(name)
    torch.testing.assert_close(backprop.rectified_gradient(model, images, 2, percentile=0.0),
                               backprop.gradient(model, images, 2), rtol=0, atol=0)


@pytest.mark.parametrize("name", SMALL_NETS)
def test_rectified_gradient_at_threshold_zero_is_guided_backprop(name, images):
    model = small_net(name)
    torch.testing.assert_close(backprop.rectified_gradient(model, images, 2, threshold=0.0),
                               backprop.guided_backprop(model, images, 2), rtol=0, atol=0)


def test_blur_integrated_gradients_completeness_error_falls_with_steps(images):
    # The telescoping sum is exact only for a constant gradient; otherwise it is a quadrature of
    # ∫ ∇f(γ(σ)) · γ'(σ) dσ whose error shrinks as the steps get finer.
    model = small_net("residual")
    with torch.no_grad():
        difference = model(images)[:, 2] - model(data.gaussian_blur(images, 10.0))[:, 2]
    errors = [(backprop.blur_integrated_gradients(model, images, 2, max_sigma=10.0, steps=steps)
               .sum(dim=(1, 2, 3)) - difference).abs().max().item() for steps in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2]
