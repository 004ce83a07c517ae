"""The explorer shows what vizlib computes, answers every control, cancels cleanly, and refuses
bad arguments by name. Its latency is measured in benchmarks/bench_explorer.py, not here."""
import base64

import pytest
import torch
from torch import nn

from conftest import model_state
from vizlib import cam, data, models, registry
from vizlib.explorer import LITE0_LAYERS, Explorer, default_layers
from vizlib.mechanics import hook_count


@pytest.fixture(scope="module")
def shapes_images():
    images = data.shapes(2, seed=1).images
    return {"first": images[:1], "second": images[1:]}


@pytest.fixture
def small_net():
    """An untrained GAP net on 64×64 shapes: what the maps are does not matter, only that the
    explorer's equal the direct calls."""
    torch.manual_seed(0)
    return models.GAPNet(widths=(8, 16, 16), convs_per_stage=1).eval()


@pytest.fixture
def explorer(small_net, shapes_images):
    return Explorer(small_net, shapes_images).wait()


def test_default_layers_are_lite0_stages_and_the_small_nets_stage_outputs():
    assert default_layers(models.EfficientNetLite0()) == list(LITE0_LAYERS)
    net = models.GAPNet(widths=(8, 16, 16), convs_per_stage=1)
    # features: conv, bn, relu, pool, conv, bn, relu, pool, conv, bn, relu
    assert default_layers(net) == ["features", "features.6", "features.2"]
    with pytest.raises(ValueError, match="layers: no default layers for a Linear"):
        default_layers(nn.Linear(2, 2))


def test_cam_and_grad_cam_from_the_retained_pass_equal_vizlib_cam_on_lite0(lite0, chelsea, coffee):
    explorer = Explorer(lite0, {"chelsea": chelsea, "coffee": coffee}).wait()
    runner_up = explorer.class_picker.options[1][1]
    cases = [("chelsea", chelsea, "grad-cam", cam.grad_cam, layer, target)
             for layer in ("head", "blocks.10") for target in (None, runner_up)]
    cases += [("chelsea", chelsea, "cam", cam.cam, "head", runner_up),
              ("coffee", coffee, "grad-cam", cam.grad_cam, "blocks.4", None),
              ("coffee", coffee, "cam", cam.cam, "head", None)]
    for image, x, method, function, layer, target in cases:
        explorer.select(image=image, method=method, layer=layer, class_=target).wait()
        assert explorer.state == "ready", explorer.error
        expected = function(lite0, x, explorer.class_picker.value, layer=layer)
        # The same operations in the same order; the tolerance covers a different summation order.
        torch.testing.assert_close(explorer.saliency, expected, rtol=1e-5, atol=1e-7)
    assert hook_count(lite0) == 0


def test_cam_where_it_is_undefined_shows_the_error_and_keeps_the_picture(lite0, chelsea):
    explorer = Explorer(lite0, {"chelsea": chelsea}).wait()
    before = explorer.image_bytes
    explorer.select(method="cam", layer="blocks.10").wait()
    assert explorer.state == "error"
    assert "use grad_cam" in explorer.caption.value and "failed" in explorer.caption.value
    assert explorer.image_bytes == before


@pytest.mark.parametrize("name", list(registry.METHODS))
def test_every_method_in_the_explorer_equals_its_direct_call(name, small_net, shapes_images, explorer):
    entry = registry.method(name)
    target = explorer.class_picker.options[1][1]
    explorer.select(method=name, class_=target, image="second").wait()
    assert explorer.state == "ready", explorer.error
    options = {}
    if entry.layer:
        options["layer"] = explorer.layers[0]
    if entry.main_parameter is not None:
        parameter, values = entry.main_parameter
        options[parameter] = explorer.parameter_picker.value
        assert explorer.parameter_picker.value == entry.shapes.get(parameter, values[0])
    expected = entry(small_net, shapes_images["second"], target, setting="shapes", **options)
    # Float-level only: batch_size="auto" may pick another batch size for the second call (another
    # summation order); a wrong class or parameter differs by the map's own scale.
    torch.testing.assert_close(explorer.saliency, expected, rtol=1e-4, atol=1e-3 * float(expected.abs().max()))
    assert hook_count(small_net) == 0


@pytest.mark.parametrize("name, value", [("integrated gradients", 8), ("occlusion", 8)])
def test_the_main_parameter_reaches_the_method(name, value, small_net, shapes_images, explorer):
    explorer.select(method=name, parameter=value).wait()
    parameter = registry.method(name).main_parameter[0]
    expected = registry.method(name)(small_net, shapes_images["first"], explorer.class_picker.value,
                                     setting="shapes", **{parameter: value})
    torch.testing.assert_close(explorer.saliency, expected, rtol=1e-5, atol=1e-7)
    assert f"{parameter} = {value}" in explorer.caption.value


def test_each_control_changes_the_picture_and_the_caption(explorer):
    pictures = [explorer.image_bytes]
    explorer.class_picker.value = explorer.class_picker.options[2][1]
    explorer.wait()
    pictures.append(explorer.image_bytes)
    explorer.layer_picker.value = explorer.layers[2]
    explorer.wait()
    pictures.append(explorer.image_bytes)
    assert f"layer {explorer.layers[2]}" in explorer.caption.value
    explorer.method_picker.value = "smoothgrad"
    explorer.wait()
    pictures.append(explorer.image_bytes)
    assert explorer.layer_picker.layout.display == "none"
    assert explorer.parameter_picker.description == "n_samples"
    explorer.parameter_picker.value = 8
    explorer.wait()
    pictures.append(explorer.image_bytes)
    assert "n_samples = 8" in explorer.caption.value
    explorer.image_picker.value = "second"
    explorer.wait()
    pictures.append(explorer.image_bytes)
    assert len(set(pictures)) == len(pictures), "some change left the picture as it was"
    assert all(picture.startswith(b"\x89PNG") for picture in pictures)
    assert explorer.last_latency > 0 and f"{explorer.last_latency * 1e3:.0f} ms" in explorer.caption.value


def test_a_page_without_a_kernel_shows_the_current_picture_and_caption(explorer):
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    shown = base64.b64encode(explorer.image_bytes).decode("ascii")
    assert f'src="data:image/png;base64,{shown}"' in bundle["text/html"]
    assert explorer.caption.value in bundle["text/html"]


def test_class_control_offers_the_top_k_with_probabilities_and_adds_a_chosen_class(explorer):
    probabilities = explorer.model(explorer.images["first"]).softmax(1)[0]
    labels, indices = zip(*explorer.class_picker.options)
    assert list(indices) == probabilities.topk(4).indices.tolist()   # 4 classes, top_k=5
    assert labels[0] == f"{data.SHAPE_CLASSES[indices[0]]} ({probabilities[indices[0]]:.1%})"
    wide = Explorer(explorer.model, explorer.images, top_k=1).wait()
    wide.select(class_="triangle").wait()
    assert [index for _, index in wide.class_picker.options][-1] == data.SHAPE_CLASSES.index("triangle")
    assert "class triangle" in wide.caption.value


def test_cancelling_stops_the_method_shows_it_and_leaves_the_model_unchanged(small_net, shapes_images):
    explorer = Explorer(small_net, shapes_images).wait()
    picture = explorer.image_bytes
    small_net.train()   # the user's own state: train mode, one frozen layer
    small_net.features[0].weight.requires_grad_(False)
    forwards = []

    def press_cancel_on_the_third_forward(module, inputs, output):
        forwards.append(len(inputs[0]))
        if len(forwards) == 3:
            explorer.cancel_button.click()

    handle = small_net.fc.register_forward_hook(press_cancel_on_the_third_forward)
    before = model_state(small_net)
    explorer.select(method="rise").wait()
    after = model_state(small_net)
    handle.remove()
    assert explorer.state == "cancelled"
    assert len(forwards) == 3, "the forward after the cancel press ran"
    assert "cancelled" in explorer.caption.value and explorer.progress.description == "cancelled"
    assert explorer.progress_box.layout.display is None   # the cancelled bar stays visible
    assert explorer.image_bytes == picture
    assert after == before
    explorer.select(method="gradient").wait()
    assert explorer.state == "ready" and hook_count(small_net) == 0


def test_a_new_choice_cancels_the_running_method(small_net, shapes_images):
    explorer = Explorer(small_net, shapes_images).wait()
    explorer.select(method="shapley exact")
    explorer.select(method="grad-cam").wait()
    assert explorer.state == "ready" and "grad-cam" in explorer.caption.value
    torch.testing.assert_close(explorer.saliency, cam.grad_cam(small_net, shapes_images["first"],
                                                               explorer.class_picker.value, layer="features"))


def test_images_may_be_a_list(small_net, shapes_images):
    explorer = Explorer(small_net, list(shapes_images.values())).wait()
    assert explorer.image_picker.options == ("image 0", "image 1") and explorer.state == "ready"


@pytest.mark.parametrize("arguments, message", [
    (dict(images={}), "images: expected at least one image"),
    (dict(images={"pair": torch.zeros(2, 3, 64, 64)}), r"images\['pair'\]: expected one image"),
    (dict(images={"hwc": torch.zeros(1, 64, 64, 3)}), r"images\['hwc'\]: .* looks channels-last"),
    (dict(classes=["a", "b"]), "classes: expected 4 names"),
    (dict(setting="imagenet"), "setting: expected one of"),
    (dict(top_k=0), "top_k: expected a positive int"),
    (dict(layers=[]), "layers: expected at least one layer"),
])
def test_bad_construction_arguments_are_named(small_net, shapes_images, arguments, message):
    with pytest.raises(ValueError, match=message):
        Explorer(small_net, **{"images": shapes_images, **arguments})


def test_bad_model_and_unknown_layer_are_named(small_net, shapes_images):
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        Explorer(lambda x: x, shapes_images)
    with pytest.raises(KeyError, match="layer: unknown layer name 'feature'"):
        Explorer(small_net, shapes_images, layers=["feature"])


@pytest.mark.parametrize("arguments, message", [
    (dict(class_="zebra"), "class_: unknown class name 'zebra'"),
    (dict(class_=4), r"class_: expected a class name or an index in \[0, 4\)"),
    (dict(image="third"), "image: unknown image 'third'"),
    (dict(method="grad_camm"), "method: unknown method 'grad_camm'"),
    (dict(method="gradient", layer="features"), "layer: method 'gradient' takes no layer"),
    (dict(layer="fc"), "layer: unknown layer 'fc'"),
    (dict(method="smoothgrad", parameter=7), r"parameter: n_samples must be one of \(8, 16, 32, 64\)"),
    (dict(method="gradient", parameter=8), "parameter: method 'gradient' has no main parameter"),
])
def test_bad_selections_are_named_and_change_nothing(explorer, arguments, message):
    picture, method = explorer.image_bytes, explorer.method_picker.value
    with pytest.raises(ValueError, match=message):
        explorer.select(**arguments)
    assert explorer.image_bytes == picture and explorer.method_picker.value == method
