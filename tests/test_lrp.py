"""LRP, deep Taylor and DeepLIFT agree with Captum, zennit and exact identities.

Tolerances: comparisons with Captum run in float32 (rtol 1e-5, atol 1e-5 × max |reference|).
Comparisons with zennit run in float64 and are exact to 1e-9: zennit's merged BatchNorm keeps its
eps (it scales by 1/sqrt(1 + eps)) and its Sum/AvgPool rule adds a 1e-6 stabilizer where ours splits
exactly, so the test nets use BatchNorm eps = 0 and zennit's composites get Norm(1e-30) there.
"""
import captum.attr as ca
import pytest
import torch
import torchvision
from captum.attr._utils import lrp_rules
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
from zennit.layer import Sum
from zennit.rules import Norm
from zennit.torchvision import ResNetCanonizer
from zennit.types import AvgPool

from vizlib import backprop, lrp, models
from vizlib.mechanics import hook_count

from test_backprop import randomized   # random BatchNorm statistics

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]


def assert_matches(ours, theirs, rtol=1e-5):
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=rtol * theirs.abs().max().item())


class PlainVGG(nn.Module):
    """conv/ReLU/max-pool stages and a dense head with biases; the flatten is functional, as
    Captum's LRP has no rule for nn.Flatten."""

    def __init__(self, pool=nn.MaxPool2d):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                                      nn.ReLU(), pool(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), pool(2))
        self.classifier = nn.Sequential(nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class ResidualNet(nn.Module):
    """Two torchvision BasicBlocks: BatchNorm, `out += identity` and one ReLU used twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(torchvision.models.resnet.BasicBlock(8, 8),
                                    torchvision.models.resnet.BasicBlock(8, 8))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def state(model):
    return ([(name, id(module)) for name, module in model.named_modules(remove_duplicate=False)],
            [module.training for module in model.modules()], [p.requires_grad for p in model.parameters()],
            hook_count(model), [p.detach().clone() for p in model.parameters()],
            [b.detach().clone() for b in model.buffers()])


def assert_same_state(before, after):
    assert before[:4] == after[:4]
    for old, new in zip(before[4] + before[5], after[4] + after[5]):
        assert torch.equal(old, new)


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


TARGET = torch.tensor([0, 1, 3])


# --- against Captum -------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, captum_rule, options", [
    ("epsilon", lambda: lrp_rules.EpsilonRule(0.25), {"epsilon": 0.25}),
    ("epsilon", lambda: lrp_rules.EpsilonRule(1e-6), {"epsilon": 1e-6}),
    ("gamma", lambda: lrp_rules.GammaRule(0.25), {"gamma": 0.25}),
    ("alpha_beta", lambda: lrp_rules.Alpha1_Beta0_Rule(), {}),
])
def test_lrp_equals_captum_with_one_rule_on_every_layer(rule, captum_rule, options, images):
    model = PlainVGG().eval()
    for module in model.modules():
        if next(module.children(), None) is None:
            module.rule = captum_rule()
    theirs = ca.LRP(model).attribute(images, target=TARGET)
    for module in model.modules():
        if hasattr(module, "rule"):
            del module.rule
    ours = lrp.lrp(model, images, TARGET, rule=rule, convention="captum", **options)
    assert_matches(ours, theirs)


def test_deeplift_equals_captum_on_average_pooled_net(images):
    model = randomized(models.VGGNet(in_channels=3, num_classes=4, input_size=16, widths=(4, 8)))
    model.features = nn.Sequential(*[nn.AvgPool2d(2) if isinstance(m, nn.MaxPool2d) else m for m in model.features])
    ours, delta = lrp.deeplift(model, images, TARGET, return_delta=True)
    theirs, their_delta = ca.DeepLift(model).attribute(images, target=TARGET, return_convergence_delta=True)
    assert_matches(ours, theirs)
    torch.testing.assert_close(delta, their_delta.to(delta.dtype), rtol=0, atol=1e-5)


def test_deeplift_balances_exactly_where_captum_loses_its_max_pool_rule(images):
    model = randomized(models.VGGNet(in_channels=3, num_classes=4, input_size=16, widths=(4, 8)))
    attributions, delta = lrp.deeplift(model, images, TARGET, return_delta=True)
    with torch.no_grad():
        difference = (model(images) - model(torch.zeros_like(images))).gather(1, TARGET[:, None]).squeeze(1)
    torch.testing.assert_close(attributions.sum(dim=(1, 2, 3)), difference, rtol=1e-5, atol=1e-6)
    assert delta.abs().max() < 1e-5


# --- against zennit --------------------------------------------------------------------------------

def zennit_relevance(model, x, composite):
    with Gradient(model=model, composite=composite) as attributor:
        logits = model(x)
        _, relevance = attributor(x, torch.eye(4, dtype=x.dtype)[TARGET] * logits.gather(1, TARGET[:, None]))
    return relevance


@pytest.mark.parametrize("net", ["vgg", "resnet"])
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_lrp_composites_equal_zennit(net, composite):
    if net == "vgg":
        model = models.VGGNet(in_channels=3, num_classes=4, input_size=32, widths=(4, 8))
        canonizer = SequentialMergeBatchNorm
    else:
        model = ResidualNet()
        canonizer = ResNetCanonizer
    model = randomized(model, eps=0.0).double()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64).clamp(-1, 1)
    exact_sums = [(Sum, Norm(1e-30)), (AvgPool, Norm(1e-30))]
    if composite == "epsilon_plus_flat":
        theirs = zennit_relevance(model, x, EpsilonPlusFlat(layer_map=exact_sums, canonizers=[canonizer()]))
        ours = lrp.lrp(model, x, TARGET, composite=composite)
    else:
        theirs = zennit_relevance(model, x, EpsilonGammaBox(low=-1.0, high=1.0, layer_map=exact_sums,
                                                            canonizers=[canonizer()]))
        ours = lrp.lrp(model, x, TARGET, composite=composite, low=-1.0, high=1.0)
    assert_matches(ours, theirs, rtol=1e-9)


# --- exact identities ------------------------------------------------------------------------------

def bias_free(model):
    for module in model.modules():
        if getattr(module, "bias", None) is not None:
            module.bias.data.zero_()
    return model


def test_lrp_zero_on_bias_free_relu_net_is_gradient_times_input(images):
    model = bias_free(PlainVGG().eval())
    assert_matches(lrp.lrp(model, images, TARGET, rule="zero"), backprop.input_x_gradient(model, images, TARGET))


def test_lrp_zero_on_relu_net_with_biases_is_still_gradient_times_input(images):
    """R_k = z_k ∂f/∂z_k at one layer gives R_j = a_j ∂f/∂a_j below it, biases or not (Ancona et al., 2018)."""
    model = PlainVGG().eval()
    assert_matches(lrp.lrp(model, images, TARGET, rule="zero"), backprop.input_x_gradient(model, images, TARGET))


def test_relevance_is_conserved_at_every_layer_of_a_bias_free_net(images):
    model = bias_free(PlainVGG().eval())
    relevance, layers = lrp.lrp(model, images, TARGET, rule="zero", return_layers=True)
    score = model(images).gather(1, TARGET[:, None]).squeeze(1).detach()
    for name, layer_relevance in {"input": relevance, **layers}.items():
        torch.testing.assert_close(layer_relevance.flatten(1).sum(1), score, rtol=1e-5, atol=1e-6, msg=name)


def test_bias_absorbs_exactly_the_missing_relevance(images):
    """R_in(dense 2) = Σ_k R_k (z_k − b_k) / z_k: LRP-0's loss at a layer is what its bias takes."""
    model = PlainVGG().eval()
    _, layers = lrp.lrp(model, images, TARGET, rule="zero", return_layers=True)
    hidden = torch.relu(model.classifier[0](model.features(images).flatten(1))).detach()
    z = model.classifier[2](hidden).gather(1, TARGET[:, None]).squeeze(1).detach()
    bias = model.classifier[2].bias.detach()[TARGET]
    torch.testing.assert_close(layers["classifier.2"].sum(1), z * (z - bias) / z, rtol=1e-5, atol=1e-6)


def two_layer_net():
    """3 inputs → 2 ReLU units → 2 outputs, with weights a reader can follow."""
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.5, 1.0, -1.0]]))
        net[0].bias.copy_(torch.tensor([0.1, -0.2]))
        net[2].weight.copy_(torch.tensor([[1.5, -0.5], [-1.0, 2.0]]))
        net[2].bias.copy_(torch.tensor([0.05, 0.0]))
    return net.eval()


class Image2Vector(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.flatten(1))


def closed_form(x, rule, epsilon=0.0, gamma=0.25, alpha=1.0, beta=0.0):
    """The rule as explicit matrices, for inputs a ≥ 0 (x is chosen positive)."""
    net = two_layer_net()
    w1, b1, w2, b2 = net[0].weight, net[0].bias, net[2].weight, net[2].bias
    hidden = torch.relu(x @ w1.T + b1)
    relevance = torch.zeros(2)
    relevance[0] = (hidden @ w2.T + b2)[0]

    def propagate(a, w, b, r):
        if rule in ("zero", "epsilon"):
            z = a @ w.T + b
            return a * ((r / (z + epsilon * torch.where(z >= 0, 1.0, -1.0))) @ w)
        if rule == "gamma":
            wp, bp = w + gamma * w.clamp(min=0), b + gamma * b.clamp(min=0)
            wn, bn = w + gamma * w.clamp(max=0), b + gamma * b.clamp(max=0)
            z = a @ w.T + b
            zp, zn = a @ wp.T + bp, a @ wn.T + bn
            up, un = torch.where(z > 0, r / (zp + 1e-6), 0.0), torch.where(z > 0, 0.0, r / (zn - 1e-6))
            return a * (up @ wp + un @ wn)
        zp = a @ w.clamp(min=0).T + b.clamp(min=0)
        zn = a @ w.clamp(max=0).T + b.clamp(max=0)
        return a * ((alpha * r / (zp + 1e-6)) @ w.clamp(min=0) - (beta * r / (zn - 1e-6)) @ w.clamp(max=0))

    return propagate(x, w1, b1, propagate(hidden, w2, b2, relevance))


@pytest.mark.parametrize("rule, options", [("zero", {}), ("epsilon", {"epsilon": 0.5}), ("gamma", {"gamma": 0.25}),
                                           ("alpha_beta", {"alpha": 2.0, "beta": 1.0}), ("zplus", {})])
def test_each_rule_equals_its_closed_form_on_a_two_layer_net(rule, options):
    x = torch.tensor([[0.8, 0.3, 0.5]])
    ours = lrp.lrp(Image2Vector(two_layer_net()), x.view(1, 3, 1, 1), 0, rule=rule, **options)
    closed = closed_form(x[0], rule, **{"epsilon": 0.5} if rule == "epsilon" else options)
    torch.testing.assert_close(ours.flatten(), closed, rtol=1e-5, atol=1e-6)


def test_deeplift_sums_to_delta_on_lite0(lite0, chelsea):
    attributions, delta = lrp.deeplift(lite0, chelsea, 285, return_delta=True)
    with torch.no_grad():
        difference = (lite0(chelsea) - lite0(torch.zeros_like(chelsea)))[:, 285]
    assert (delta.abs() < 1e-4 * difference.abs().clamp(min=1)).all()


def test_relevance_is_conserved_across_lite0_blocks_without_biases(lite0, chelsea):
    """BatchNorm folded, residual adds split in proportion: with the folded biases zeroed and LRP-0,
    every block input carries exactly f_c(x)."""
    import copy

    model = copy.deepcopy(lite0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.bias.data.zero_()
            module.running_mean.zero_()
        if isinstance(module, nn.Linear):
            module.bias.data.zero_()
    relevance, layers = lrp.lrp(model, chelsea, 285, rule="zero", return_layers=True)
    score = model(chelsea)[0, 285].item()
    cuts = ["stem", *[f"blocks.{i}" for i in range(16)], "head", "pool", "fc"]
    sums = torch.tensor([relevance.sum().item()] + [layers[name].sum().item() for name in cuts])
    torch.testing.assert_close(sums, torch.full_like(sums, score), rtol=1e-3, atol=1e-3)


def test_lite0_lrp_runs_and_leaves_model_unchanged(lite0, chelsea):
    before = state(lite0)
    relevance = lrp.lrp(lite0, chelsea, 285, composite="epsilon_gamma_box", low=-127 / 128, high=1.0)
    assert relevance.shape == chelsea.shape and torch.isfinite(relevance).all()
    assert_same_state(before, state(lite0))


# --- batching, state, errors -----------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda m, x, t: lrp.lrp(m, x, t),
    lambda m, x, t: lrp.lrp(m, x, t, composite="epsilon_plus_flat", init="softmax_gradient"),
    lambda m, x, t: lrp.deep_taylor(m, x, t, low=-3.0, high=3.0),
    lambda m, x, t: lrp.deeplift(m, x, t),
])
def test_batched_equals_per_image_and_model_is_unchanged(call, images):
    model = randomized(ResidualNet())
    before = state(model)
    batched = call(model, images, TARGET)
    single = torch.cat([call(model, images[i:i + 1], TARGET[i:i + 1]) for i in range(3)])
    assert_matches(batched, single)
    assert_same_state(before, state(model))


def test_contrastive_init_sums_to_zero_at_the_output(images):
    model = bias_free(PlainVGG().eval())
    relevance = lrp.lrp(model, images, TARGET, rule="zero", init="contrastive")
    torch.testing.assert_close(relevance.flatten(1).sum(1), torch.zeros(3), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"rule": "eps"}, "rule: expected one of zero, epsilon"),
    ({"composite": "plus_flat"}, "composite: expected one of epsilon_plus_flat"),
    ({"first_layer": "zbox"}, "low: the zbox rule needs"),
    ({"init": "softmax"}, "init: expected one of"),
    ({"rule": "alpha_beta", "alpha": 2.0, "beta": 0.5}, "alpha, beta"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message, images):
    model = PlainVGG().eval()
    before = state(model)
    with pytest.raises(ValueError, match=message):
        lrp.lrp(model, images, TARGET, **kwargs)
    assert_same_state(before, state(model))


def test_target_out_of_range_raises_and_leaves_model_unchanged(images):
    model = randomized(ResidualNet())
    before = state(model)
    with pytest.raises(ValueError, match="target: class index 7 is out of range"):
        lrp.lrp(model, images, 7)
    assert_same_state(before, state(model))


@pytest.mark.parametrize("method", [lrp.lrp, lrp.deeplift])
def test_unsupported_layer_is_named(method, images):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(4))
    model(images)
    with pytest.raises(TypeError, match="layer '1' is a GELU"):
        method(model, images, TARGET)
