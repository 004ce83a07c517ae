"""The shared mechanics leave every model exactly as they found it and reject bad input clearly."""
import time

import pytest
import torch
import torchvision
from torch import nn

from vizlib import mechanics
from vizlib.mechanics import (activations, batches, capture, check_input, check_target, device, hook_count, preserved,
                              resolve_layer, scores_in_batches, swapped)


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=5).eval()


class GuidedReLU(nn.Module):
    calls = 0

    def forward(self, x):
        GuidedReLU.calls += 1
        return torch.relu(x)


# --- resolve_layer --------------------------------------------------------------------------------

def test_resolve_layer_finds_dotted_names(lite0):
    assert resolve_layer(lite0, "blocks.3") is lite0.blocks[3]
    assert resolve_layer(lite0, "blocks.3.depthwise.conv") is lite0.blocks[3].depthwise.conv


def test_resolve_layer_accepts_a_submodule_and_rejects_a_foreign_one(lite0):
    assert resolve_layer(lite0, lite0.head) is lite0.head
    with pytest.raises(ValueError, match="layer: .*not a submodule"):
        resolve_layer(lite0, nn.ReLU())


def test_unknown_layer_name_lists_close_matches(lite0):
    with pytest.raises(KeyError, match=r"unknown layer name 'block\.3'.*blocks\.3"):
        resolve_layer(lite0, "block.3")


# --- capture --------------------------------------------------------------------------------------

def test_capture_records_activation_and_its_gradient(tiny_vgg):
    x = torch.randn(2, 3, 32, 32)
    layer = tiny_vgg.features[5]
    with capture(tiny_vgg, layer) as store:
        score = tiny_vgg(x)[:, 1].sum()
        score.backward()
    expected_activation = tiny_vgg.features[:6](x)
    torch.testing.assert_close(store.activation, expected_activation)
    activation = tiny_vgg.features[:6](x).detach().requires_grad_()
    (expected_gradient,) = torch.autograd.grad(tiny_vgg.classifier(tiny_vgg.features[6:](activation))[:, 1].sum(), activation)
    torch.testing.assert_close(store.gradient, expected_gradient)


def test_capture_removes_every_hook_on_exit(lite0, chelsea):
    before = hook_count(lite0)
    with capture(lite0, "blocks.15") as store:
        lite0(chelsea.clone().requires_grad_())[0, 285].backward()
    assert store.gradient is not None and hook_count(lite0) == before == 0


def test_capture_removes_every_hook_when_the_body_raises(tiny_vgg):
    with pytest.raises(RuntimeError, match="boom"):
        with capture(tiny_vgg, "features.2"):
            tiny_vgg(torch.randn(1, 3, 32, 32))
            raise RuntimeError("boom")
    assert hook_count(tiny_vgg) == 0


def test_capture_in_a_loop_leaks_no_hooks(tiny_vgg):
    for _ in range(20):
        with capture(tiny_vgg, "features.2"):
            tiny_vgg(torch.randn(1, 3, 32, 32))
    assert hook_count(tiny_vgg) == 0


# --- swapped --------------------------------------------------------------------------------------

def test_swapped_replaces_inplace_and_reused_relus_and_restores_the_originals():
    model = resnet18()
    originals = dict(model.named_modules(remove_duplicate=False))
    x = torch.randn(1, 3, 64, 64)
    reference = model(x)
    GuidedReLU.calls = 0
    with swapped(model, lambda m: isinstance(m, nn.ReLU), lambda m: GuidedReLU()) as replaced:
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())
        # BasicBlock calls its single `relu` twice; the stem's relu once: 8 blocks × 2 + 1.
        torch.testing.assert_close(model(x), reference)
        assert GuidedReLU.calls == 17
        assert "layer1.0.relu" in replaced
    after = dict(model.named_modules(remove_duplicate=False))
    assert after.keys() == originals.keys()
    assert all(after[name] is originals[name] for name in originals)
    assert model.layer1[0].relu.inplace is True


def test_swapped_keeps_a_module_shared_under_two_names_shared():
    shared = nn.ReLU(inplace=True)
    model = nn.Sequential(nn.Linear(3, 3), shared, nn.Linear(3, 3), shared)
    with swapped(model, lambda m: isinstance(m, nn.ReLU), lambda m: GuidedReLU()):
        assert model[1] is model[3] and isinstance(model[1], GuidedReLU)
    assert model[1] is shared and model[3] is shared


def test_swapped_restores_the_originals_when_the_body_raises():
    model = resnet18()
    relu = model.relu
    with pytest.raises(RuntimeError, match="boom"):
        with swapped(model, lambda m: isinstance(m, nn.ReLU), lambda m: GuidedReLU()):
            raise RuntimeError("boom")
    assert model.relu is relu and model.layer4[1].relu.inplace


# --- preserved ------------------------------------------------------------------------------------

def test_preserved_restores_mode_and_requires_grad_even_on_error(tiny_vgg):
    tiny_vgg.train()
    tiny_vgg.features[1].eval()
    tiny_vgg.classifier[1].weight.requires_grad_(False)
    modes = [m.training for m in tiny_vgg.modules()]
    flags = [p.requires_grad for p in tiny_vgg.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        with preserved(tiny_vgg):
            assert not any(m.training for m in tiny_vgg.modules())
            assert not any(p.requires_grad for p in tiny_vgg.parameters())
            raise RuntimeError("boom")
    assert [m.training for m in tiny_vgg.modules()] == modes
    assert [p.requires_grad for p in tiny_vgg.parameters()] == flags


# --- check_input / check_target -------------------------------------------------------------------

def test_check_input_accepts_a_float_batch():
    x = torch.rand(2, 3, 8, 8)
    assert check_input(x) is x


@pytest.mark.parametrize("bad, error, message", [
    (torch.rand(3, 8, 8), ValueError, r"x: .*single image.*x\.unsqueeze\(0\)"),
    (torch.rand(8, 8), ValueError, r"x: expected 4 dimensions"),
    (torch.rand(1, 1, 3, 8, 8), ValueError, r"x: expected 4 dimensions"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, r"x: expected a floating-point tensor.*uint8"),
    (torch.full((1, 3, 8, 8), float("nan")), ValueError, r"x: contains NaN or inf"),
    (torch.full((1, 3, 8, 8), float("inf")), ValueError, r"x: contains NaN or inf"),
    (torch.rand(1, 224, 224, 3), ValueError, r"x: .*channels-last.*permute\(0, 3, 1, 2\)"),
    (torch.rand(0, 3, 8, 8), ValueError, r"x: expected a non-empty batch"),
    ([[1.0]], TypeError, r"x: expected a torch.Tensor"),
])
def test_check_input_rejects_bad_input_with_a_clear_error(bad, error, message):
    with pytest.raises(error, match=message):
        check_input(bad)


def test_check_target_expands_ints_and_picks_the_predicted_class():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert check_target(None, logits).tolist() == [1, 0]
    assert check_target(2, logits).tolist() == [2, 2]
    assert check_target(torch.tensor([0, 2]), logits).tolist() == [0, 2]
    assert check_target(torch.tensor(1), logits).tolist() == [1, 1]


@pytest.mark.parametrize("bad, error, message", [
    (3, ValueError, r"target: class index 3 is out of range for a model with 3 classes"),
    (-1, ValueError, r"target: class index -1 is out of range"),
    (torch.tensor([0, 1, 2]), ValueError, r"target: expected 2 class indices"),
    (torch.tensor([0.0, 1.0]), TypeError, r"target: expected an integer tensor"),
    ("cat", TypeError, r"target: expected an int"),
    (True, TypeError, r"target: .*bool"),
])
def test_check_target_rejects_bad_targets_with_a_clear_error(bad, error, message):
    with pytest.raises(error, match=message):
        check_target(bad, torch.zeros(2, 3))


def test_batches_cover_the_range_in_chunks():
    assert [(s.start, s.stop) for s in batches(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert [(s.start, s.stop) for s in batches(5, None)] == [(0, 5)]
    with pytest.raises(ValueError, match="batch_size"):
        list(batches(5, 0))


def test_device_is_cuda_exactly_when_available():
    assert device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_activations_returns_each_layer_output_of_one_forward_pass(tiny_vgg):
    x = torch.randn(2, 3, 32, 32)
    tiny_vgg.train()
    maps = activations(tiny_vgg, x, ["features.2", "features.6"])
    assert tiny_vgg.training and hook_count(tiny_vgg) == 0
    tiny_vgg.eval()
    torch.testing.assert_close(maps["features.2"], tiny_vgg.features[:3](x))
    torch.testing.assert_close(maps["features.6"], tiny_vgg.features[:7](x))


def test_capture_is_not_overwritten_by_a_following_inplace_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(32, 3))
    x = torch.randn(1, 1, 6, 6)
    with capture(model, "0") as store:
        model(x)[0, 1].backward()
    pre_activation = model[0](x).detach()
    assert pre_activation.min() < 0
    torch.testing.assert_close(store.activation.detach(), pre_activation)
    head = lambda z: model[3](model[2](torch.relu(z)))[0, 1]
    (expected,) = torch.autograd.grad(head(pre_activation.requires_grad_()), pre_activation)
    torch.testing.assert_close(store.gradient, expected)


def test_scores_in_batches_builds_each_chunk_once_and_matches_one_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    inputs = torch.randn(7, 3, 2, 2)
    target = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    chunks = []

    def make_batch(chunk):
        chunks.append(chunk)
        return inputs[chunk]

    scores = scores_in_batches(model, 7, make_batch, target, batch_size=3)
    assert [(c.start, c.stop) for c in chunks] == [(0, 3), (3, 6), (6, 7)]
    torch.testing.assert_close(scores, model(inputs).detach()[torch.arange(7), target])
    probabilities = scores_in_batches(model, 7, make_batch, target, batch_size=None, softmax=True)
    torch.testing.assert_close(probabilities, model(inputs).detach().softmax(-1)[torch.arange(7), target])


def test_scores_in_batches_accepts_a_black_box_callable():
    weights = torch.randn(12, 2)

    def black_box(images):
        return images.flatten(1) @ weights

    inputs = torch.randn(4, 3, 2, 2)
    scores = scores_in_batches(black_box, 4, lambda chunk: inputs[chunk], torch.ones(4, dtype=torch.long),
                                         batch_size=2)
    torch.testing.assert_close(scores, (inputs.flatten(1) @ weights)[:, 1])


def test_preserved_passes_a_black_box_callable_through():
    def black_box(images):
        return images.sum(dim=(1, 2, 3), keepdim=True)

    with preserved(black_box) as model:
        assert model is black_box


# --- batch_size="auto" ---------------------------------------------------------------------------

class _CountingNet(nn.Module):
    """A conv net that counts its forward calls and the batch sizes it saw."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(len(x))
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_auto_batch_size_picks_a_candidate_and_measures_only_once():
    net = _CountingNet().eval()
    example = torch.rand(3, 8, 8)
    chosen = mechanics.auto_batch_size(net, example)
    assert chosen in mechanics.AUTO_BATCH_CANDIDATES
    measured = len(net.calls)
    assert measured >= 4                           # one untimed and three timed calls per size
    assert mechanics.auto_batch_size(net, example[None]) == chosen
    assert len(net.calls) == measured              # cached: no second measurement
    assert net.training is False


class _SleepingModel(nn.Module):
    """A model whose forward pass of n images takes `fixed + per_image * n` seconds."""

    def __init__(self, fixed: float, per_image: float):
        super().__init__()
        self.fixed, self.per_image = fixed, per_image

    def forward(self, x):
        time.sleep(self.fixed + self.per_image * len(x))
        return x.flatten(1)[:, :3]


@pytest.mark.parametrize("fixed, per_image, expected", [
    (0.0, 0.01, 1),     # the same cost per image at every size: the smallest is taken
    (0.02, 0.005, 4),   # 25, 15, 10 ms per image: the largest tried is the cheapest
])
def test_auto_batch_size_takes_the_smallest_of_the_cheapest_sizes(monkeypatch, fixed, per_image, expected):
    monkeypatch.setattr(mechanics, "AUTO_BATCH_CANDIDATES", (1, 2, 4))
    assert mechanics.auto_batch_size(_SleepingModel(fixed, per_image), torch.rand(3, 4, 4)) == expected


def test_auto_batch_size_is_measured_again_for_another_input_shape():
    net = _CountingNet().eval()
    mechanics.auto_batch_size(net, torch.rand(3, 8, 8))
    measured = len(net.calls)
    mechanics.auto_batch_size(net, torch.rand(3, 12, 12))
    assert len(net.calls) > measured


def test_scores_in_batches_with_auto_equal_explicit_batches_and_use_the_chosen_size():
    net = _CountingNet().eval()
    inputs = torch.rand(50, 3, 8, 8)
    target = torch.randint(0, 3, (50,))
    explicit = mechanics.scores_in_batches(net, 50, lambda chunk: inputs[chunk], target, batch_size=7)
    net.calls.clear()
    auto = mechanics.scores_in_batches(net, 50, lambda chunk: inputs[chunk], target, batch_size="auto")
    torch.testing.assert_close(auto, explicit)
    chosen = mechanics.auto_batch_size(net, inputs[0])
    chunks = -(-50 // chosen)
    scored = net.calls[-chunks:]                     # the scoring calls come after the measurement
    assert scored == [chosen] * (50 // chosen) + ([50 % chosen] if 50 % chosen else [])


def test_a_wrong_batch_size_is_named_in_the_error():
    net = _CountingNet().eval()
    for wrong in (0, -3, 2.5, "fast", True):
        with pytest.raises(ValueError, match="batch_size"):
            mechanics.scores_in_batches(net, 4, lambda chunk: torch.rand(chunk.stop - chunk.start, 3, 8, 8),
                                        torch.zeros(4, dtype=torch.long), batch_size=wrong)


# --- inference_copy -------------------------------------------------------------------------------

def small_batchnorm_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 5, 3, bias=False), nn.BatchNorm2d(5), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(5, 3), nn.BatchNorm1d(3))
    for module in net.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-1, 1)
    return net.eval()


def test_inference_copy_folds_every_batchnorm_and_keeps_the_outputs():
    net = small_batchnorm_net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    fast = mechanics.inference_copy(net)
    assert fast is not net and not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in fast.modules())
    x = torch.randn(6, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2
    assert all(p.requires_grad for p in net.parameters())


def test_inference_copy_is_cached_until_the_weights_change():
    net = small_batchnorm_net()
    fast = mechanics.inference_copy(net)
    assert mechanics.inference_copy(net) is fast
    with torch.no_grad():
        net[0].weight.add_(0.5)
    renewed = mechanics.inference_copy(net)
    assert renewed is not fast
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(renewed(x), net(x), rtol=1e-5, atol=1e-5)


def test_inference_copy_of_lite0_matches_it(lite0, chelsea):
    with torch.no_grad():
        torch.testing.assert_close(mechanics.inference_copy(lite0)(chelsea), lite0(chelsea), rtol=1e-5, atol=1e-5)


def test_a_model_with_hooks_is_forwarded_as_it_is():
    net = small_batchnorm_net()
    handle = net[0].register_forward_hook(lambda *args: None)
    try:
        assert mechanics.inference_copy(net) is net
    finally:
        handle.remove()


def test_an_observed_model_keeps_its_copy_and_the_observer_sees_only_the_passes_asked_for():
    net = small_batchnorm_net()
    x = torch.randn(7, 3, 9, 9)
    target = torch.zeros(7, dtype=torch.long)
    seen = []
    with mechanics.observed(net, lambda module, inputs, output: seen.append(output.shape[0])):
        fast = mechanics.inference_copy(net)
        assert fast is not net
        scores = mechanics.scores_in_batches(net, 7, lambda chunk: x[chunk], target, batch_size="auto")
        with torch.no_grad():
            net(x[:2])
    # the check of the copy and the batch-size timing are not reported; the 7 scored images and the
    # direct pass are, once each
    assert sum(seen) == 7 + 2
    with torch.no_grad():
        torch.testing.assert_close(scores, net(x)[:, 0], rtol=1e-5, atol=1e-5)
    assert hook_count(net) == 0 and len(mechanics.inference_copy(net)._forward_hooks) == 0


def test_observed_removes_its_hook_when_the_body_raises():
    net = small_batchnorm_net()
    with pytest.raises(ValueError, match="inside"):
        with mechanics.observed(net, lambda *args: None):
            raise ValueError("inside")
    assert hook_count(net) == 0 and mechanics.inference_copy(net) is not net
    with pytest.raises(TypeError, match="model"):
        with mechanics.observed(lambda x: x, lambda *args: None):
            pass


def test_another_hook_beside_an_observer_still_disables_the_copy():
    net = small_batchnorm_net()
    handle = net.register_forward_hook(lambda *args: None)
    try:
        with mechanics.observed(net, lambda *args: None):
            assert mechanics.inference_copy(net) is net
    finally:
        handle.remove()


class MisregisteredBatchNorm(nn.Module):
    """A BatchNorm registered after a conv but applied before it: folding it would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.norm = nn.BatchNorm2d(3)
        self.norm.running_mean.fill_(2.0)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.conv(self.norm(x)).mean(dim=(2, 3)))


def test_scores_in_batches_drops_a_copy_whose_outputs_differ():
    torch.manual_seed(0)
    net = MisregisteredBatchNorm().eval()
    x = torch.randn(5, 3, 4, 4)
    target = torch.zeros(5, dtype=torch.long)
    scores = mechanics.scores_in_batches(net, 5, lambda chunk: x[chunk], target, batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(scores, net(x)[:, 0])
    assert mechanics.inference_copy(net) is net


def test_channels_last_restores_each_layout_and_keeps_values_and_identity_even_on_error(tiny_vgg):
    conv = tiny_vgg.features[0]
    already = nn.Parameter(torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last))
    tiny_vgg.register_parameter("extra", already)
    before = {name: tensor.clone() for name, tensor in tiny_vgg.state_dict().items()}
    weight = conv.weight
    with pytest.raises(RuntimeError, match="inside"):
        with mechanics.channels_last(tiny_vgg):
            assert conv.weight is weight
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)
            assert not conv.weight.is_contiguous()
            raise RuntimeError("inside")
    assert conv.weight is weight and conv.weight.is_contiguous()
    assert tiny_vgg.extra.is_contiguous(memory_format=torch.channels_last) and not tiny_vgg.extra.is_contiguous()
    for name, tensor in tiny_vgg.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)


def test_training_leaves_weights_and_gradients_contiguous_so_a_later_backward_does_not_warn():
    import warnings

    from vizlib import models

    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    net = models.train(models.GAPNet(widths=(4, 8)), (images, labels), epochs=1, cache=False, progress=False)
    assert all(parameter.is_contiguous() for parameter in net.parameters())
    assert all(parameter.grad.is_contiguous() for parameter in net.parameters() if parameter.grad is not None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net(images).sum().backward()
