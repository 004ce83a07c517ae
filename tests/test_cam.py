"""Class activation maps: agreement with Captum, exact identities, hand-computed values, bookkeeping."""
import gc
import math

import pytest
import torch
from captum.attr import GuidedGradCam, LayerGradCam
from torch import nn

from vizlib import cam, models
from vizlib.mechanics import hook_count

GRADIENT_METHODS = [cam.grad_cam, cam.grad_cam_plus_plus, cam.layer_cam]
ALL_METHODS = [cam.cam, *GRADIENT_METHODS, cam.score_cam, cam.smooth_grad_cam_plus_plus]


class LinearReadout(nn.Module):
    """A = x at layer "features"; y = V · flatten(A): so ∂y^c/∂A = V[c], known by hand."""

    def __init__(self, readout: torch.Tensor):
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(readout[0].numel(), len(readout), bias=False)
        self.fc.weight.data = readout.flatten(1)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


# Two 2×2 channels; class 0 reads them with V[0], class 1 is the constant 0.
ACTIVATIONS = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],
                            [[0.0, 2.0], [0.0, 0.0]]])[None]
READOUT = torch.stack([torch.tensor([[[1.0, -1.0], [0.0, 2.0]],
                                     [[1.0, 1.0], [0.0, 0.0]]]),
                       torch.zeros(2, 2, 2)])


@pytest.fixture
def readout_net():
    return LinearReadout(READOUT)


@pytest.fixture
def small_gap_net():
    torch.manual_seed(0)
    return models.GAPNet(num_classes=4, widths=(4, 8), convs_per_stage=1).eval()


@pytest.fixture
def shapes_batch():
    torch.manual_seed(1)
    return torch.rand(3, 3, 16, 16)


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


# ---------------------------------------------------------------- exact identities and hand-computed values


def test_grad_cam_equals_cam_on_gap_linear_head(lite0, chelsea):
    g = cam.grad_cam(lite0, chelsea, target=285, layer="head", size=None)
    c = cam.cam(lite0, chelsea, target=285, layer="head", size=None)
    h, w = g.shape[-2:]
    torch.testing.assert_close(g * h * w, c, rtol=1e-5, atol=1e-5)   # α_k = w_k / Z  (survey §2.1.3)


def test_grad_cam_equals_cam_over_spatial_size_on_a_small_gap_net(small_gap_net, shapes_batch):
    for relu in (False, True):
        g = cam.grad_cam(small_gap_net, shapes_batch, target=2, layer="features", size=None, relu=relu)
        c = cam.cam(small_gap_net, shapes_batch, target=2, layer="features", size=None, relu=relu)
        torch.testing.assert_close(g * g.shape[-2] * g.shape[-1], c, rtol=1e-5, atol=1e-6)


def test_cam_averages_to_the_logit_minus_bias(small_gap_net, shapes_batch):
    c = cam.cam(small_gap_net, shapes_batch, target=1, layer="features", size=None, relu=False)
    logits = small_gap_net(shapes_batch).detach()
    torch.testing.assert_close(c.mean(dim=(1, 2, 3)) + small_gap_net.fc.bias[1].detach(), logits[:, 1],
                               rtol=1e-5, atol=1e-6)


def test_grad_cam_plus_plus_matches_hand_computed_map(readout_net):
    # Channel 0: ΣA = 2, g = [[1,-1],[0,2]]: α = g²/(2g² + 2g³) = [[1/4, 0 (0 denominator)],[0 (0/0), 1/6]],
    #   w_0 = 1/4·1 + 1/6·2 = 7/12.  Channel 1: ΣA = 2, g = [[1,1],[0,0]]: α = 1/4 twice, w_1 = 1/2.
    # L = 7/12·A_0 + 1/2·A_1.
    expected = torch.tensor([[7 / 12, 1.0], [0.0, 7 / 12]])[None, None]
    saliency = cam.grad_cam_plus_plus(readout_net, ACTIVATIONS, target=0, layer="features", size=None)
    torch.testing.assert_close(saliency, expected, rtol=1e-6, atol=1e-7)


def test_grad_cam_matches_hand_computed_map(readout_net):
    # α_k = mean of g: α_0 = (1 - 1 + 0 + 2)/4 = 1/2, α_1 = 2/4 = 1/2.
    expected = torch.tensor([[0.5, 1.0], [0.0, 0.5]])[None, None]
    saliency = cam.grad_cam(readout_net, ACTIVATIONS, target=0, layer="features", size=None)
    torch.testing.assert_close(saliency, expected, rtol=1e-6, atol=1e-7)


def test_score_cam_matches_hand_computed_map(readout_net):
    # Masks: H_0 = A_0 (already in [0,1]), H_1 = A_1 / 2. Class 1's logit is 0, so p_0 = σ(y_0).
    # x∘H_0 keeps A_0's diagonal: y_0 = 1 + 2 = 3.  x∘H_1 keeps A_1's 2: y_0 = 1·2 = 2.  Baseline 0: y_0 = 0.
    alpha_0, alpha_1 = sigmoid(3) - sigmoid(0), sigmoid(2) - sigmoid(0)
    expected = torch.tensor([[alpha_0, 2 * alpha_1], [0.0, alpha_0]])[None, None]
    saliency = cam.score_cam(readout_net, ACTIVATIONS, target=0, layer="features", size=None)
    torch.testing.assert_close(saliency, expected, rtol=1e-6, atol=1e-7)


def test_layer_cam_matches_hand_computed_map(readout_net):
    # ReLU(g) ⊙ A summed over channels: channel 0 gives [[1,0],[0,2]], channel 1 gives [[0,2],[0,0]].
    expected = torch.tensor([[1.0, 2.0], [0.0, 2.0]])[None, None]
    saliency = cam.layer_cam(readout_net, ACTIVATIONS, target=0, layer="features", size=None)
    torch.testing.assert_close(saliency, expected)


def test_score_cam_weights_equal_softmax_increases_computed_directly(small_gap_net, shapes_batch):
    weights = cam.score_cam_weights(small_gap_net, shapes_batch, target=3, layer="features.4", batch_size=5)
    with torch.no_grad():
        activations = small_gap_net.features[:5](shapes_batch)           # layer "features.4", 8×8
        baseline = small_gap_net(torch.zeros_like(shapes_batch)).softmax(1)[:, 3]
        expected = torch.empty_like(weights)
        for k in range(activations.shape[1]):
            mask = nn.functional.interpolate(activations[:, k:k + 1], size=(16, 16), mode="bilinear")
            low, high = mask.amin(dim=(2, 3), keepdim=True), mask.amax(dim=(2, 3), keepdim=True)
            mask = (mask - low) / (high - low)
            expected[:, k] = small_gap_net(shapes_batch * mask).softmax(1)[:, 3] - baseline
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)


def test_smooth_grad_cam_plus_plus_without_noise_is_grad_cam_plus_plus(small_gap_net, shapes_batch):
    smooth = cam.smooth_grad_cam_plus_plus(small_gap_net, shapes_batch, layer="features.4", samples=3,
                                           noise_level=0.0)
    plain = cam.grad_cam_plus_plus(small_gap_net, shapes_batch, layer="features.4")
    torch.testing.assert_close(smooth, plain, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- agreement with Captum


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layer", ["features.10", "features.13"])
def test_grad_cam_equals_captum_layer_grad_cam_on_a_small_vgg(tiny_vgg, layer, relu):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = cam.grad_cam(tiny_vgg.eval(), x, target=torch.tensor([1, 3]), layer=layer, relu=relu, size=None)
    theirs = LayerGradCam(tiny_vgg, tiny_vgg.get_submodule(layer)).attribute(
        x, target=torch.tensor([1, 3]), relu_attributions=relu)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("relu", [False, True])
def test_grad_cam_equals_captum_layer_grad_cam_on_lite0(lite0, chelsea, relu):
    ours = cam.grad_cam(lite0, chelsea, target=281, layer="blocks.15", relu=relu, size=None)
    theirs = LayerGradCam(lite0, lite0.blocks[15]).attribute(chelsea, target=281, relu_attributions=relu)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())


def test_guided_grad_cam_equals_captum_with_nearest_upsampling(tiny_vgg):
    net = tiny_vgg.eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = cam.guided_grad_cam(net, x, target=torch.tensor([0, 2]), layer="features.10", interpolation="nearest")
    theirs = GuidedGradCam(net, net.features[10]).attribute(x, target=torch.tensor([0, 2]))
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * theirs.abs().max().item())


# ---------------------------------------------------------------- shapes, options, batches


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda f: f.__name__)
def test_batched_maps_equal_per_image_maps(method, small_gap_net, shapes_batch):
    options = dict(layer="features", target=torch.tensor([0, 1, 3]))
    if method is cam.smooth_grad_cam_plus_plus:
        options["samples"] = 3
    batched = method(small_gap_net, shapes_batch, **options)
    single = torch.cat([method(small_gap_net, shapes_batch[i:i + 1], **{**options, "target": options["target"][i]})
                        for i in range(len(shapes_batch))])
    assert batched.shape == (3, 1, 16, 16)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda f: f.__name__)
def test_size_none_gives_the_layer_resolution_and_normalize_gives_unit_range(method, small_gap_net, shapes_batch):
    options = {"samples": 2} if method is cam.smooth_grad_cam_plus_plus else {}
    raw = method(small_gap_net, shapes_batch, layer="features", size=None, **options)
    # Without the ReLU no map is constant (a random net can make a rectified map all zeros).
    scaled = method(small_gap_net, shapes_batch, layer="features", relu=False, normalize=True, **options)
    assert raw.shape == (3, 1, 8, 8)
    torch.testing.assert_close(scaled.amin(dim=(1, 2, 3)), torch.zeros(3))
    torch.testing.assert_close(scaled.amax(dim=(1, 2, 3)), torch.ones(3))


def test_nearest_upsampling_repeats_each_cell(small_gap_net, shapes_batch):
    raw = cam.grad_cam(small_gap_net, shapes_batch, layer="features", size=None)
    nearest = cam.grad_cam(small_gap_net, shapes_batch, layer="features", interpolation="nearest")
    torch.testing.assert_close(nearest, raw.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))


def test_relu_false_keeps_negative_evidence(small_gap_net, shapes_batch):
    signed = cam.grad_cam(small_gap_net, shapes_batch, layer="features", relu=False, size=None)
    rectified = cam.grad_cam(small_gap_net, shapes_batch, layer="features", size=None)
    assert signed.min() < 0
    torch.testing.assert_close(rectified, signed.clamp(min=0))


def test_a_list_of_layers_gives_the_map_of_each_layer(small_gap_net, shapes_batch):
    layers = ["features.2", "features"]
    together = cam.layer_cam(small_gap_net, shapes_batch, layer=layers, size=None)
    for layer, saliency in zip(layers, together):
        torch.testing.assert_close(saliency, cam.layer_cam(small_gap_net, shapes_batch, layer=layer, size=None))
    assert [tuple(s.shape[-2:]) for s in together] == [(16, 16), (8, 8)]


def test_fuse_takes_the_pixelwise_maximum_of_tanh_scaled_maps():
    shallow = torch.tensor([[0.0, 1.0], [2.0, 4.0]])[None, None]
    deep = torch.tensor([[3.0]])[None, None]      # resized to 2×2: constant 3, scaled to tanh(2)
    fused = cam.fuse([shallow, deep], gamma=2.0)
    expected = torch.maximum(torch.tanh(2 * shallow / 4), torch.full_like(shallow, math.tanh(2.0)))
    torch.testing.assert_close(fused, expected)


# ---------------------------------------------------------------- bookkeeping and errors


@pytest.mark.parametrize("method", [*ALL_METHODS, cam.guided_grad_cam], ids=lambda f: f.__name__)
def test_a_hundred_calls_leave_no_hooks_and_no_new_tensors(method):
    torch.manual_seed(0)
    net = models.GAPNet(num_classes=4, widths=(2,), convs_per_stage=1)   # tiny: the loop tests bookkeeping
    x = torch.rand(1, 3, 8, 8)
    options = {"samples": 1} if method is cam.smooth_grad_cam_plus_plus else {}

    def live_tensors():
        gc.collect()
        return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))

    method(net, x, layer="features", **options)
    before = live_tensors()
    for _ in range(100):
        method(net, x, layer="features", **options)
    assert live_tensors() <= before
    assert hook_count(net) == 0
    assert all(p.grad is None for p in net.parameters())


def test_model_state_is_restored(small_gap_net, shapes_batch):
    small_gap_net.train()
    cam.grad_cam(small_gap_net, shapes_batch, layer="features")
    assert all(module.training for module in small_gap_net.modules())
    assert all(p.requires_grad for p in small_gap_net.parameters())


def test_unknown_layer_lists_close_names(lite0, chelsea):
    with pytest.raises(KeyError, match="blocks.15"):
        cam.grad_cam(lite0, chelsea, layer="block.15")


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda f: f.__name__)
def test_a_layer_without_a_4d_output_is_rejected(method, small_gap_net, shapes_batch):
    with pytest.raises(ValueError, match="4-D feature map"):
        method(small_gap_net, shapes_batch, layer="flatten")
    assert hook_count(small_gap_net) == 0


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda f: f.__name__)
def test_a_target_out_of_range_is_rejected(method, small_gap_net, shapes_batch):
    with pytest.raises(ValueError, match="out of range"):
        method(small_gap_net, shapes_batch, target=4, layer="features")
    assert hook_count(small_gap_net) == 0


def test_cam_without_gap_linear_head_suggests_grad_cam(readout_net, tiny_vgg, small_gap_net, shapes_batch):
    with pytest.raises(ValueError, match="grad_cam"):
        cam.cam(readout_net, ACTIVATIONS, layer="features")
    with pytest.raises(ValueError, match="grad_cam"):
        cam.cam(tiny_vgg, torch.rand(1, 3, 32, 32), layer="features")
    with pytest.raises(ValueError, match="grad_cam"):   # a layer before the last convolutions
        cam.cam(small_gap_net, shapes_batch, layer="features.2")
    assert hook_count(small_gap_net) == 0


def test_a_single_image_without_batch_dimension_is_rejected(small_gap_net, shapes_batch):
    with pytest.raises(ValueError, match="unsqueeze"):
        cam.grad_cam(small_gap_net, shapes_batch[0], layer="features")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", [*ALL_METHODS, cam.guided_grad_cam], ids=lambda f: f.__name__)
def test_maps_are_computed_on_the_device_of_x(method, small_gap_net, shapes_batch):
    options = {"samples": 2} if method is cam.smooth_grad_cam_plus_plus else {}
    on_gpu = method(small_gap_net.cuda(), shapes_batch.cuda(), layer="features", **options)
    on_cpu = method(small_gap_net.cpu(), shapes_batch, layer="features", **options)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-5)
