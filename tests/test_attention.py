"""Attention modules: the papers' formulas by hand, invariance properties, parameter counts,
torchvision's SE as a second implementation, determinism, and bookkeeping (no hooks, no tensors)."""
import math

import pytest
import torch
import torchvision
from torch import nn

from vizlib import attention, data, models
from vizlib.mechanics import hook_count


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def relu(z):
    return max(z, 0.0)


def set_linear(layer, weight, bias):
    layer.weight.data = torch.tensor(weight)
    layer.bias.data = torch.tensor(bias)


# C = 4 channels, r = 2: W₁ is 2×4, W₂ is 4×2; a 1 × 4 × 2 × 3 feature map.
W1, B1 = [[0.5, -1.0, 0.25, 2.0], [-0.5, 1.5, 1.0, -0.25]], [0.1, -0.2]
W2, B2 = [[1.0, -2.0], [0.5, 0.5], [-1.5, 1.0], [2.0, 0.0]], [0.0, 0.3, -0.1, 0.2]
FEATURES = torch.tensor([[[1.0, 2.0, 0.0], [-1.0, 0.5, 3.0]],
                         [[0.0, -2.0, 1.0], [1.0, 1.0, 1.0]],
                         [[2.0, 2.0, 2.0], [2.0, -2.0, 0.0]],
                         [[-1.0, 0.0, 1.0], [0.5, 0.25, -0.5]]])[None]
KERNEL = [[[0.2, -0.1, 0.3], [0.0, 0.5, -0.2], [0.1, 0.1, -0.4]],       # on the channel-average map
          [[-0.3, 0.2, 0.0], [0.4, -0.1, 0.2], [0.0, -0.2, 0.1]]]       # on the channel-max map


def mlp_by_hand(z):
    hidden = [relu(sum(W1[h][c] * z[c] for c in range(4)) + B1[h]) for h in range(2)]
    return [sum(W2[c][h] * hidden[h] for h in range(2)) + B2[c] for c in range(4)]


def channel(c):
    return [v for row in FEATURES[0, c].tolist() for v in row]


def test_squeeze_excitation_equals_the_paper_formula_by_hand():
    se = attention.SqueezeExcitation(4, reduction=2)
    set_linear(se.reduce, W1, B1)
    set_linear(se.expand, W2, B2)
    # z_c = mean of channel c;  s = σ(W₂ ReLU(W₁ z + b₁) + b₂);  x̃_c = s_c · u_c   (Hu et al., Eq. 2–4)
    z = [sum(channel(c)) / 6 for c in range(4)]
    s = [sigmoid(v) for v in mlp_by_hand(z)]
    expected = torch.stack([s[c] * FEATURES[0, c] for c in range(4)])[None]
    torch.testing.assert_close(se(FEATURES), expected, rtol=1e-6, atol=1e-6)


def test_cbam_equals_the_paper_formula_by_hand():
    cbam = attention.CBAM(4, reduction=2, kernel_size=3)
    set_linear(cbam.mlp.reduce, W1, B1)
    set_linear(cbam.mlp.expand, W2, B2)
    cbam.spatial_conv.weight.data = torch.tensor(KERNEL)[None]
    # M_c = σ(MLP(avg) + MLP(max)) (Woo et al., Eq. 2); F' = M_c ⊗ F
    m_c = [sigmoid(a + b) for a, b in zip(mlp_by_hand([sum(channel(c)) / 6 for c in range(4)]),
                                          mlp_by_hand([max(channel(c)) for c in range(4)]))]
    refined = [[[m_c[c] * FEATURES[0, c, i, j].item() for j in range(3)] for i in range(2)] for c in range(4)]
    # M_s = σ(f³ˣ³([avg_c F'; max_c F'])), zero padding, cross-correlation (Eq. 3); F'' = M_s ⊗ F'
    pooled = [[[sum(refined[c][i][j] for c in range(4)) / 4 for j in range(3)] for i in range(2)],
              [[max(refined[c][i][j] for c in range(4)) for j in range(3)] for i in range(2)]]

    def at(m, i, j):
        return pooled[m][i][j] if 0 <= i < 2 and 0 <= j < 3 else 0.0

    m_s = [[sigmoid(sum(KERNEL[m][u][v] * at(m, i + u - 1, j + v - 1)
                        for m in range(2) for u in range(3) for v in range(3))) for j in range(3)] for i in range(2)]
    expected = torch.tensor([[[refined[c][i][j] * m_s[i][j] for j in range(3)] for i in range(2)]
                             for c in range(4)])[None]
    torch.testing.assert_close(cbam(FEATURES), expected, rtol=1e-6, atol=1e-6)
    with attention.recording(cbam):
        cbam(FEATURES)
        torch.testing.assert_close(cbam.channel_weights, torch.tensor([m_c]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cbam.spatial_mask, torch.tensor(m_s)[None, None], rtol=1e-6, atol=1e-6)


def test_squeeze_excitation_matches_torchvision_with_the_same_weights():
    torch.manual_seed(0)
    ours = attention.SqueezeExcitation(16, reduction=4)
    theirs = torchvision.ops.SqueezeExcitation(16, 4)
    theirs.fc1.weight.data = ours.reduce.weight.data[:, :, None, None].clone()
    theirs.fc1.bias.data = ours.reduce.bias.data.clone()
    theirs.fc2.weight.data = ours.expand.weight.data[:, :, None, None].clone()
    theirs.fc2.bias.data = ours.expand.bias.data.clone()
    x = torch.randn(3, 16, 5, 7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


@pytest.fixture
def positive_features():
    torch.manual_seed(0)
    return torch.rand(2, 8, 6, 5) + 0.5      # positive, so output / input is defined everywhere


def test_squeeze_excitation_scales_each_channel_by_one_factor(positive_features):
    torch.manual_seed(1)
    ratio = attention.SqueezeExcitation(8, reduction=2)(positive_features) / positive_features
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio), rtol=1e-5, atol=1e-6)
    assert ((ratio > 0) & (ratio < 1)).all()


def test_cbam_output_over_input_is_a_channel_vector_times_a_spatial_map(positive_features):
    # F''/F = M_c[c] · M_s[i, j]: every 2×2 minor of the [C, HW] ratio matrix vanishes, i.e. the
    # spatial step scales all channels of a location by the same factor.
    torch.manual_seed(2)
    cbam = attention.CBAM(8, reduction=2, kernel_size=3)
    ratio = (cbam(positive_features) / positive_features).flatten(2).double()     # [N, C, HW]
    rank_one = ratio[:, :1, :1] * ratio
    torch.testing.assert_close(rank_one, ratio[:, :, :1] * ratio[:, :1, :], rtol=1e-5, atol=1e-7)
    assert ((ratio > 0) & (ratio < 1)).all()


def test_cbam_spatial_step_divides_out_as_the_recorded_mask(positive_features):
    torch.manual_seed(3)
    cbam = attention.CBAM(8, reduction=4)
    with attention.recording(cbam):
        output = cbam(positive_features)
        refined = positive_features * cbam.channel_weights[:, :, None, None]
        spatial = cbam.spatial_mask
    torch.testing.assert_close(output / refined, spatial.expand_as(output), rtol=1e-5, atol=1e-6)
    assert spatial.shape == (2, 1, 6, 5) and ((spatial > 0) & (spatial < 1)).all()


@pytest.mark.parametrize("channels, reduction", [(16, 4), (64, 16), (12, 3)])
def test_parameter_counts_equal_the_published_formulas(channels, reduction):
    def count(module):
        return sum(p.numel() for p in module.parameters())

    mlp = 2 * channels ** 2 // reduction + channels // reduction + channels     # 2C²/r weights + biases
    assert count(attention.SqueezeExcitation(channels, reduction)) == mlp
    for k in (3, 7):
        assert count(attention.CBAM(channels, reduction, kernel_size=k)) == mlp + 2 * k * k


# ---------------------------------------------------------------- attention_maps and bookkeeping


@pytest.fixture
def small_cbam_net():
    torch.manual_seed(0)
    return models.train(attention.AttentionNet("cbam", widths=(4, 8)), data.shapes(32, size=16), epochs=1,
                        cache=False, progress=False)


def test_attention_maps_lists_every_module_with_its_shapes(small_cbam_net):
    x = data.shapes(3, size=16, seed=5).images
    maps = attention.attention_maps(small_cbam_net, x)
    assert list(maps) == ["features.stage1.attention", "features.stage2.attention"]
    assert maps["features.stage1.attention"]["channel"].shape == (3, 4)
    assert maps["features.stage1.attention"]["spatial"].shape == (3, 1, 16, 16)
    assert maps["features.stage2.attention"]["spatial"].shape == (3, 1, 8, 8)


def test_a_strided_stem_halves_every_mask():
    net = attention.AttentionNet("cbam", widths=(4, 8), stem_stride=2).eval()
    maps = attention.attention_maps(net, torch.zeros(2, 3, 16, 16))
    assert [m["spatial"].shape for m in maps.values()] == [(2, 1, 8, 8), (2, 1, 4, 4)]
    with pytest.raises(ValueError, match="stem_stride"):
        attention.AttentionNet(stem_stride=3)


def test_attention_maps_leaves_no_hooks_no_tensors_and_the_modes(small_cbam_net):
    net = small_cbam_net.train()
    before = ({k: v.clone() for k, v in net.state_dict().items()}, [m.training for m in net.modules()])
    attention.attention_maps(net, data.shapes(2, size=16, seed=5).images)
    assert hook_count(net) == 0
    assert [m.training for m in net.modules()] == before[1]
    for module in attention.attention_modules(net).values():
        assert module.channel_weights is None and module.spatial_mask is None
        assert not any(isinstance(v, torch.Tensor) for v in vars(module).values())
    # eval mode inside: BatchNorm's running statistics were not updated
    assert all(torch.equal(v, before[0][k]) for k, v in net.state_dict().items())


def test_recording_cleans_up_when_the_forward_raises(small_cbam_net):
    modules = attention.attention_modules(small_cbam_net)
    with pytest.raises(RuntimeError, match="interrupted"):
        with attention.recording(small_cbam_net):
            small_cbam_net(torch.zeros(1, 3, 16, 16))
            assert all(m.spatial_mask.shape[0] == 1 for m in modules.values())
            raise RuntimeError("interrupted")
    assert hook_count(small_cbam_net) == 0
    assert all(m.channel_weights is None for m in attention.attention_modules(small_cbam_net).values())


def test_attention_maps_equal_the_module_formula_inside_a_net(small_cbam_net):
    x = data.shapes(2, size=16, seed=6).images
    stage1 = small_cbam_net.features.stage1
    with torch.no_grad():
        features = stage1.residual(small_cbam_net.features.stem(x))
        module = stage1.attention
        expected = torch.sigmoid(module.mlp(features.mean(dim=(2, 3))) + module.mlp(features.amax(dim=(2, 3))))
    got = attention.attention_maps(small_cbam_net, x)["features.stage1.attention"]["channel"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_attention_maps_reads_torchvision_squeeze_excitation():
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    maps = attention.attention_maps(net, x)
    se_modules = [m for m in net.modules() if isinstance(m, torchvision.ops.SqueezeExcitation)]
    assert len(maps) == len(se_modules) > 0
    name, first = next(iter(maps.items()))
    module = net.get_submodule(name)
    with torch.no_grad():
        inputs = {}
        handle = module.register_forward_hook(lambda m, i, o: inputs.setdefault("x", i[0]))
        net(x)
        handle.remove()
        expected = module._scale(inputs["x"]).flatten(1)
    torch.testing.assert_close(first["channel"], expected)
    assert hook_count(net) == 0


class SpatialFirstCBAM(attention.CBAM):
    """CBAM with the two gates in the reverse order: a subclass that reuses the gates."""

    def forward(self, x):
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        located = x * self.spatial_gate(self.spatial_conv(pooled))
        weights = self.channel_gate(self.mlp(located.mean(dim=(2, 3))) + self.mlp(located.amax(dim=(2, 3))))
        return located * weights[:, :, None, None]


def test_attention_maps_reads_a_subclass_that_reorders_the_gates(positive_features):
    torch.manual_seed(4)
    module = SpatialFirstCBAM(8, reduction=2, kernel_size=3)
    maps = attention.attention_maps(nn.Sequential(module), positive_features)["0"]
    with torch.no_grad():
        ratio = module(positive_features) / positive_features
    # the output over the input is still M_c[k] · M_s[i, j], now with M_s computed first
    torch.testing.assert_close(ratio, maps["channel"][:, :, None, None] * maps["spatial"], rtol=1e-5, atol=1e-6)
    assert hook_count(module) == 0


def test_a_model_without_attention_modules_is_refused_by_name():
    with pytest.raises(ValueError, match="GAPNet has no attention modules"):
        attention.attention_maps(models.GAPNet(), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="no attention modules"):
        attention.attention_maps(attention.AttentionNet(None, widths=(4,)), torch.zeros(1, 3, 16, 16))


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="not divisible by reduction"):
        attention.SqueezeExcitation(10, reduction=4)
    with pytest.raises(ValueError, match="not divisible by reduction"):
        attention.CBAM(6, reduction=4)
    with pytest.raises(ValueError, match="kernel_size"):
        attention.CBAM(8, reduction=2, kernel_size=4)
    with pytest.raises(ValueError, match="channels"):
        attention.SqueezeExcitation(0)
    with pytest.raises(ValueError, match=r"x: expected a feature map \[N, 8, H, W\]"):
        attention.SqueezeExcitation(8, 2)(torch.zeros(1, 4, 3, 3))
    with pytest.raises(ValueError, match="attention: expected"):
        attention.AttentionNet("sk")
    with pytest.raises(ValueError, match="x: expected"):
        attention.attention_maps(attention.AttentionNet("se", widths=(4,), reduction=2), torch.zeros(3, 16, 16))


def test_same_seed_training_is_deterministic_and_differs_by_architecture():
    dataset = data.shapes(32, size=16)
    runs = [models.train(attention.AttentionNet(kind, widths=(4, 8)), dataset, epochs=1, cache=False,
                         progress=False).state_dict() for kind in ("cbam", "cbam")]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    reprs = {kind: repr(attention.AttentionNet(kind, widths=(4, 8))) for kind in (None, "se", "cbam")}
    assert len(set(reprs.values())) == 3      # models.train's cache key tells the three apart


# ---------------------------------------------------------------- class attention


class QuadrantNet(nn.Module):
    """features = x; class c is the mean of quadrant c of channel 0. So ∂y^c/∂A is 1/16 on
    quadrant c and 0 elsewhere: LayerCAM (ReLU(∂y^c/∂A) ⊙ A) of a constant image is the
    quadrant's indicator, and Grad-CAM (the mean gradient times A) is proportional to the image."""

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()

    def forward(self, x):
        a = self.features(x)[:, 0]
        h, w = a.shape[-2] // 2, a.shape[-1] // 2
        quadrants = [a[:, :h, :w], a[:, :h, w:], a[:, h:, :w], a[:, h:, w:]]
        return torch.stack([q.mean(dim=(1, 2)) for q in quadrants], dim=1)


def test_class_attention_mask_of_a_known_map_is_its_thresholded_region():
    x = torch.ones(2, 1, 8, 8)
    mask = attention.class_attention_mask(QuadrantNet(), x, torch.tensor([1, 2]), layer="features",
                                          method="layer_cam", threshold=0.5)
    expected = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    expected[0, 0, :4, 4:] = True
    expected[1, 0, 4:, :4] = True
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    chunked = attention.class_attention_mask(QuadrantNet(), x, torch.tensor([1, 2]), layer="features",
                                             method="layer_cam", threshold=0.5, batch_size=1)
    assert torch.equal(chunked, expected)


def test_class_attention_net_fills_outside_the_mask():
    helper = QuadrantNet()
    pipeline = attention.ClassAttentionNet(helper, QuadrantNet(), layer="features", fill=-1.0)
    x = torch.ones(1, 1, 8, 8)
    x[0, 0, 4:, 4:] = 2.0                      # the helper predicts quadrant 3
    masked = pipeline.masked(x)
    assert (masked[0, 0, 4:, 4:] == 2).all() and (masked[0, 0, :4] == -1).all()
    torch.testing.assert_close(pipeline(x), QuadrantNet()(masked))


def test_class_attention_arguments_are_checked():
    x = torch.ones(2, 1, 8, 8)
    with pytest.raises(ValueError, match="method"):
        attention.class_attention_mask(QuadrantNet(), x, layer="features", method="saliency")
    with pytest.raises(ValueError, match="threshold"):
        attention.class_attention_mask(QuadrantNet(), x, layer="features", threshold=0)
    with pytest.raises(ValueError, match="target"):
        attention.class_attention_mask(QuadrantNet(), x, torch.tensor([0, 1, 2]), layer="features")


def test_train_with_class_attention_trains_on_masked_images_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("VIZLIB_CACHE", str(tmp_path))
    dataset = data.shapes(32, size=16)
    helper = models.train(attention.AttentionNet(None, widths=(4, 8)), dataset, epochs=1, progress=False)
    settings = dict(layer="features", threshold=0.4, epochs=1, progress=False)
    first = attention.train_with_class_attention(helper, attention.AttentionNet("se", widths=(4, 8), reduction=2),
                                                 dataset, **settings)
    masked = first.masked(dataset.images)
    direct = models.train(attention.AttentionNet("se", widths=(4, 8), reduction=2), (masked, dataset.labels),
                          epochs=1, cache=False, progress=False)
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in first.classifier.state_dict().items())
    assert len(list(tmp_path.iterdir())) == 2     # the helper and the classifier on the masked set
    assert (masked[~attention.class_attention_mask(helper, dataset.images, layer="features",
                                                   threshold=0.4).expand_as(masked)] == 0).all()
