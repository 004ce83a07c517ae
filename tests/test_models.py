"""EfficientNet-Lite0 reproduces its checkpoint exactly; the small nets train deterministically."""
import urllib.error

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from vizlib import data, models
from vizlib.mechanics import resolve_layer


def test_every_checkpoint_tensor_maps_to_exactly_one_parameter_of_the_same_shape():
    checkpoint = torch.load(models.efficientnet_lite0_checkpoint(), map_location="cpu", weights_only=True)
    renamed = {models._rename_checkpoint_key(k): v.shape for k, v in checkpoint.items()}
    ours = {k: v.shape for k, v in models.EfficientNetLite0().state_dict().items()}
    assert len(renamed) == len(checkpoint) and renamed == ours


def test_load_returns_eval_mode_with_bn_eps_1e_3_and_relu6(lite0):
    assert not any(m.training for m in lite0.modules())
    batchnorms = [m for m in lite0.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and all(m.eps == 1e-3 for m in batchnorms)
    activations = {type(m) for m in lite0.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Sigmoid))}
    assert activations == {nn.ReLU6}


def top(lite0, x, k):
    with torch.no_grad():
        probabilities = lite0(x).softmax(1)[0]
    values, indices = probabilities.topk(k)
    names = models.imagenet_classes()
    return [(names[i], v) for v, i in zip(values.tolist(), indices.tolist())]


def test_chelsea_is_tiger_cat_then_egyptian_cat_then_tabby(lite0, chelsea):
    # Reference probabilities of this checkpoint with its own preprocessing: 0.39 / 0.36 / 0.17.
    (first, p1), (second, p2), (third, p3) = top(lite0, chelsea, 3)
    assert (first, second, third) == ("tiger cat", "Egyptian cat", "tabby")
    assert [p1, p2, p3] == pytest.approx([0.39, 0.36, 0.17], abs=0.01)


def test_coffee_is_espresso_with_probability_095(lite0, coffee):
    (name, probability), = top(lite0, coffee, 1)
    assert name == "espresso" and probability == pytest.approx(0.95, abs=0.01)


def test_cat_and_coffee_shows_a_cat_first_and_a_coffee_class_in_the_top_5(lite0):
    names = [name for name, _ in top(lite0, data.preprocess(data.load_image("cat_and_coffee")), 5)]
    assert names[0] in {"tiger cat", "Egyptian cat", "tabby"}
    assert {"cup", "espresso", "coffee mug"} & set(names)


def test_layer_names_a_reader_can_pick(lite0, chelsea):
    sizes = {}
    names = ["stem", *[f"blocks.{i}" for i in range(16)], "head", "pool", "fc"]
    hooks = [resolve_layer(lite0, n).register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, o.shape))
             for n in names]
    try:
        with torch.no_grad():
            lite0(chelsea)
    finally:
        for hook in hooks:
            hook.remove()
    assert sizes["stem"] == (1, 32, 112, 112)
    assert sizes["blocks.15"] == (1, 320, 7, 7)
    assert sizes["head"] == (1, 1280, 7, 7)
    assert sizes["fc"] == (1, 1000)


@given(size=st.integers(1, 260), kernel_size=st.sampled_from([1, 3, 5, 7]), stride=st.integers(1, 3))
@settings(max_examples=200, deadline=None)
def test_same_padding_matches_tensorflow(size, kernel_size, stride):
    # TF "SAME": output = ceil(size / stride); the padding total is split with the extra pixel
    # at the bottom/right.
    height, width = size, size + 1
    x = torch.randn(1, 1, height, width)
    padded = models.SamePad2d(kernel_size, stride)(x)
    for axis, length in ((-2, height), (-1, width)):
        expected_total = max((-(-length // stride) - 1) * stride + kernel_size - length, 0)
        assert padded.shape[axis] - length == expected_total
    top, left = (padded.shape[-2] - height) // 2, (padded.shape[-1] - width) // 2
    torch.testing.assert_close(padded[..., top: top + height, left: left + width], x)
    out = nn.functional.conv2d(padded, torch.ones(1, 1, kernel_size, kernel_size), stride=stride)
    assert out.shape[-2:] == (-(-height // stride), -(-width // stride))


def test_imagenet_classes_are_the_1000_names():
    names = models.imagenet_classes()
    assert len(names) == 1000 and names[285] == "Egyptian cat" and names[967] == "espresso"


def small_dataset(n=64, size=32):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=generator)
    labels = torch.arange(n) % 4
    images[labels == 1, 0] += 1.0   # a learnable signal: class 1 is redder
    return images, labels


@pytest.mark.parametrize("make", [
    lambda: models.VGGNet(num_classes=4, input_size=32, widths=(4, 8), hidden=8),
    lambda: models.AllConvNet(num_classes=4, widths=(4, 8)),
    lambda: models.GAPNet(num_classes=4, widths=(4, 8)),
])
def test_training_is_deterministic_under_a_seed(make, tmp_path, monkeypatch):
    monkeypatch.setenv("VIZLIB_CACHE", str(tmp_path))
    first = models.train(make(), small_dataset(), epochs=2, batch_size=16, cache=False, progress=False)
    torch.manual_seed(123)   # the global RNG must not matter
    second = models.train(make(), small_dataset(), epochs=2, batch_size=16, cache=False, progress=False)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert not first.training


def test_training_caches_weights_keyed_by_the_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("VIZLIB_CACHE", str(tmp_path))
    trained = models.train(models.GAPNet(widths=(4, 8)), small_dataset(), epochs=1, batch_size=16, progress=False)
    assert len(list(tmp_path.glob("GAPNet-*.pt"))) == 1
    loaded = models.train(models.GAPNet(widths=(4, 8)), small_dataset(), epochs=1, batch_size=16, progress=False)
    for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    models.train(models.GAPNet(widths=(4, 8)), small_dataset(), epochs=2, batch_size=16, progress=False)
    assert len(list(tmp_path.glob("GAPNet-*.pt"))) == 2


def test_training_learns_a_simple_signal(tmp_path, monkeypatch):
    monkeypatch.setenv("VIZLIB_CACHE", str(tmp_path))
    images, labels = small_dataset(256)
    model = models.train(models.GAPNet(widths=(8, 16)), (images, (labels == 1).long()), epochs=4, batch_size=32, progress=False)
    assert models.accuracy(model, (images, (labels == 1).long())) > 0.95


def test_train_rejects_bad_datasets():
    with pytest.raises(TypeError, match="dataset:"):
        models.train(models.GAPNet(), [1, 2, 3])
    with pytest.raises(ValueError, match="dataset: labels"):
        models.train(models.GAPNet(), (torch.rand(4, 3, 8, 8), torch.rand(4)))
    with pytest.raises(ValueError, match="epochs"):
        models.train(models.GAPNet(), small_dataset(8), epochs=0)


def test_load_torchvision_offline_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    with pytest.raises(RuntimeError, match="needs internet.*load_efficientnet_lite0"):
        models.load_torchvision("resnet18")


def test_load_torchvision_rejects_unknown_names():
    with pytest.raises(ValueError, match="name: expected one of resnet18"):
        models.load_torchvision("alexnet9")


def test_gap_net_learns_real_handwritten_digits_in_a_few_epochs(tmp_path, monkeypatch):
    monkeypatch.setenv("VIZLIB_CACHE", str(tmp_path))
    train_set, test_set = data.digits(28).split(test_fraction=0.2, seed=0)
    model = models.train(models.GAPNet(1, 10, widths=(16, 32, 64), convs_per_stage=1), train_set, epochs=6, progress=False)
    assert models.accuracy(model, test_set) > 0.95


def test_a_net_trained_with_the_watermark_shortcut_cheats(tmp_path, monkeypatch):
    # The Clever-Hans set-up of the evaluation and applications chapters: a model trained on
    # watermarked shapes is near-perfect with the watermark and much worse without it.
    monkeypatch.setenv("VIZLIB_CACHE", str(tmp_path))
    net = models.GAPNet(widths=(16, 32, 64, 128), convs_per_stage=1)
    cheater = models.train(net, data.shapes(1000, size=64, seed=0, shortcut=True), epochs=4, progress=False)
    with_mark = models.accuracy(cheater, data.shapes(400, size=64, seed=1, shortcut=True))
    without_mark = models.accuracy(cheater, data.shapes(400, size=64, seed=1))
    assert with_mark > 0.95 and without_mark < with_mark - 0.25
