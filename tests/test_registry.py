"""The method registry (vizlib.registry, vizlib.explain): complete, runnable, and truthful about costs.

Every entry runs with its "shapes" defaults on an untrained GAPNet (fixed seed, 64×64 inputs);
its forward and backward passes are counted with hooks and compared exactly with its declared
formulas, and the model must come back unchanged.
"""
import inspect
import re
from pathlib import Path

import pytest
import torch

import vizlib
from vizlib import (attention, backprop, cam, data, lrp, maximization, mechanics, models, perturbation, registry,
                    surrogate)

ROOT = Path(__file__).resolve().parents[1]

# The public functions of each family module that are NOT attribution methods, i.e. not
# f(model, x, target, ...) -> a map of x for the class target. Every other public function must be
# registered, so a new method fails `test_every_public_attribution_function_is_registered` until it
# has an entry. (evaluation and robustness are not listed: they score or attack methods, they do
# not produce maps.)
NOT_METHODS = {
    perturbation: {
        "fill", "gaussian_blur", "inpaint",          # fills for removed pixels
        "grid_segments", "superpixels",              # segmentations for leave-one-out, LIME, SHAP
        "blur_pyramid", "blur_by_mask",              # meaningful perturbation's blur
        "rise_masks",                                # RISE's mask generator
    },
    backprop: {"quadrature"},                        # integration nodes for integrated gradients
    lrp: set(),
    cam: {
        "score_cam_weights",                         # Score-CAM's channel weights [N, C], not a map
        "fuse",                                      # combines maps of several layers (LayerCAM)
    },
    attention: {
        "attention_modules", "recording",            # find / record a net's built-in attention
        "attention_maps",                            # an attention net's own maps: no target class
        # 1[Grad-CAM-like map >= θ]: a binary training mask of the registered CAM methods
        "class_attention_mask",
        "train_with_class_attention",                # trains a net
    },
    surrogate: {
        "shapley_values",                            # exact Shapley values of a given game
        "lime_kernel", "shapley_kernel", "shapley_coalitions",   # sampling and weighting helpers
    },
    # Activation maximization synthesizes inputs for a unit or class; it explains no given x.
    maximization: {
        "class_logit", "class_log_prob", "channel", "neuron", "direction", "diversity", "dream", "match",
        "l2", "mean_prior", "total_variation", "blur_every", "clip", "standard_transforms",
        "maximize", "deep_dream", "invert", "top_activating_patches", "train_generator", "dgn_am",
    },
}

NAMES = list(registry.METHODS)


def public_functions(module) -> dict[str, object]:
    return {name: getattr(module, name) for name in module.__all__ if inspect.isfunction(getattr(module, name))}


def test_every_public_attribution_function_is_registered():
    registered = {entry.function for entry in registry.METHODS.values()}
    for module, helpers in NOT_METHODS.items():
        functions = public_functions(module)
        assert helpers <= set(functions), f"{module.__name__}: not public functions: {helpers - set(functions)}"
        for name, function in functions.items():
            if name in helpers:
                assert function not in registered, f"{module.__name__}.{name} is registered and listed as a helper"
            else:
                assert function in registered, f"{module.__name__}.{name} is public but not in vizlib.registry"


def test_every_entry_is_a_function_of_model_x_target_from_its_family_module():
    for entry in registry.METHODS.values():
        assert entry.function.__module__ == f"vizlib.{entry.family}", entry.name
        assert list(inspect.signature(entry.function).parameters)[:3] == ["model", "x", "target"], entry.name
        assert entry.resolution in ("pixel", "region") and entry.section.startswith("2.1."), entry.name
        assert (ROOT / "book" / f"{entry.chapter}.ipynb").is_file(), entry.name
        assert not (entry.model_agnostic and entry.gradients), entry.name   # a black box has no gradients


def test_both_settings_give_every_required_argument_and_only_real_ones():
    lite0 = models.EfficientNetLite0()   # untrained: only its layer names are needed
    shapes_net = models.GAPNet()
    for entry in registry.METHODS.values():
        parameters = inspect.signature(entry.function).parameters
        keywords = {name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        required = {name for name in keywords if parameters[name].default is inspect.Parameter.empty}
        for setting, net in (("lite0", lite0), ("shapes", shapes_net)):
            defaults = getattr(entry, setting)
            assert required <= set(defaults) <= keywords, (entry.name, setting)
            if entry.layer:
                mechanics.resolve_layer(net, defaults["layer"])
        # `layer` tells the explorer that the method needs a layer of the model.
        assert entry.layer == ("layer" in required), entry.name


def test_main_parameter_is_a_parameter_whose_candidates_hold_both_defaults():
    for entry in registry.METHODS.values():
        if entry.main_parameter is None:
            continue
        name, values = entry.main_parameter
        assert isinstance(values, tuple) and len(values) >= 2, entry.name
        for setting in registry.SETTINGS:
            assert entry.parameters(setting)[name] in values, (entry.name, setting)


# --- running every entry -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    network = models.GAPNet(widths=(8, 8)).train()   # train mode: the methods must restore it
    images = data.shapes(2, seed=3).images
    mechanics.auto_batch_size(network, images[:1])   # times its batch sizes once, before any count
    return network


@pytest.fixture(scope="module")
def shapes():
    return data.shapes(2, seed=3)


class PassCounter:
    """Images forwarded through `model` (its output's batch size) and images whose output receives a
    gradient, counted by hooks on the model's output."""

    def __init__(self, model):
        self.forwards = self.backwards = 0
        self.handle = model.register_forward_hook(self.forward)

    def forward(self, module, inputs, output):
        self.forwards += len(output)
        if output.requires_grad:
            output.register_hook(lambda grad, count=len(output): self.backward(count))

    def backward(self, count):
        self.backwards += count

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def state(model):
    return ({name: tensor.clone() for name, tensor in model.state_dict().items()},
            [module.training for module in model.modules()], [p.requires_grad for p in model.parameters()])


def assert_unchanged(model, before):
    tensors, modes, flags = before
    after_tensors, after_modes, after_flags = state(model)
    for name, tensor in tensors.items():
        torch.testing.assert_close(after_tensors[name], tensor, rtol=0, atol=0, msg=name)
    assert after_modes == modes and after_flags == flags
    assert mechanics.hook_count(model) == 0


@pytest.mark.parametrize("name", NAMES)
def test_entry_runs_with_its_defaults_and_costs_the_passes_it_declares(name, net, shapes):
    entry = registry.method(name)
    x, target = shapes.images, shapes.labels
    declared = entry.passes(net, x)   # before counting: K (Score-CAM) needs a forward pass of its own
    before = state(net)
    with PassCounter(net) as counter:
        saliency = vizlib.explain(net, x, name, target)
    assert saliency.shape == (2, 3 if entry.per_channel else 1, 64, 64)
    assert torch.isfinite(saliency).all() and saliency.abs().sum() > 0
    assert (counter.forwards / len(x), counter.backwards / len(x)) == declared
    assert_unchanged(net, before)


def painted(scores, segments):
    """Each segment's score on its pixels, [N, 1, H, W]."""
    maps = torch.zeros(len(scores), 1, *segments.shape[-2:], dtype=scores.dtype)
    for label in range(scores.shape[1]):
        maps[:, 0, segments == label] = scores[:, label, None]
    return maps


# Cheaper options where only the calling convention is tested (the defaults ran above).
GRID_2 = perturbation.grid_segments(64, 64, 2)
CHEAP = {"occlusion": dict(window=16, stride=16), "rise": dict(n_masks=16), "lime": dict(n_samples=16),
         "kernel shap": dict(segments=GRID_2, n_samples=16), "shapley exact": dict(segments=GRID_2),
         "prediction difference": dict(window=16, stride=16, samples=2), "meaningful perturbation": dict(steps=4)}


@pytest.mark.parametrize("name", NAMES)
def test_explain_equals_the_direct_call(name, net, shapes):
    entry = registry.method(name)
    x, target = shapes.images[:1], shapes.labels[:1]
    options = CHEAP.get(name, {})
    result = entry.function(net, x, target, **{**entry.shapes, **options})
    if isinstance(result, surrogate.SegmentAttribution):
        expected = result.map
    elif isinstance(result, perturbation.LearnedMask):
        expected = 1 - result.mask                     # the deleted region is the explanation
    elif isinstance(result, tuple):
        expected = result[0]                           # leave-one-out: (map, drops)
    elif entry.function is surrogate.segment_probe:
        expected = painted(result, entry.shapes["segments"])
    else:
        expected = result
    torch.testing.assert_close(vizlib.explain(net, x, name, target, setting="shapes", **options), expected,
                               rtol=0, atol=0)


@pytest.mark.parametrize("name", [entry.name for entry in registry.METHODS.values() if entry.model_agnostic])
def test_model_agnostic_entries_need_only_a_black_box(name, net, shapes):
    entry = registry.method(name)
    net.eval()
    try:
        def black_box(images):   # a plain function: no modules, hooks or gradients
            with torch.no_grad():
                return net(images)

        x, target = shapes.images[:1], shapes.labels[:1]
        options = {**CHEAP.get(name, {}), "batch_size": 4}
        torch.testing.assert_close(entry(black_box, x, target, **options), entry(net, x, target, **options),
                                   rtol=1e-5, atol=1e-6)
    finally:
        net.train()


# --- names, settings, errors ---------------------------------------------------------------------

def test_a_function_name_calls_its_first_entry():
    assert registry.method("grad_cam") is registry.method("grad-cam")
    assert registry.method("lrp") is registry.method("lrp epsilon")
    assert registry.method("integrated_gradients").name == "integrated gradients"


def test_unknown_method_and_bad_setting_are_clear_errors(net, shapes):
    with pytest.raises(KeyError, match="known: occlusion, leave-one-out"):
        vizlib.explain(net, shapes.images, "gradcam")
    with pytest.raises(ValueError, match="setting: expected one of 'lite0', 'shapes'"):
        vizlib.explain(net, shapes.images, "gradient", setting="imagenet")
    with pytest.raises(ValueError, match="setting"):
        registry.method("gradient").passes(setting="mnist")


def test_explain_picks_the_lite0_setting_for_efficientnet_lite0_and_shapes_otherwise():
    assert registry._default_setting(models.EfficientNetLite0()) == "lite0"
    assert registry._default_setting(models.GAPNet()) == "shapes"


def test_explain_passes_options_over_the_defaults(net, shapes):
    x, target = shapes.images[:1], shapes.labels[:1]
    torch.testing.assert_close(vizlib.explain(net, x, "smoothgrad", target, n_samples=3),
                               backprop.smoothgrad(net, x, target, n_samples=3), rtol=0, atol=0)


def test_methods_lists_the_registry_in_order():
    assert [entry.name for entry in vizlib.methods()] == NAMES
    assert [entry.name for entry in vizlib.methods("cam")] == registry.names("cam")
    assert set(registry.names(leaderboard=True)) < set(NAMES)


# --- the tables of chapter 0 ---------------------------------------------------------------------

BIB_KEYS = set(re.findall(r"^@\w+\{([^,]+),", (ROOT / "references.bib").read_text(), flags=re.M))


def test_table_gives_the_passes_at_the_defaults_of_the_setting():
    rows = {row["name"]: row for row in registry.table("lite0")}
    assert list(rows) == NAMES
    assert (rows["smoothgrad"]["forwards"], rows["smoothgrad"]["backwards"]) == ("1 + n_samples = 17",
                                                                                 "n_samples = 16")
    assert rows["occlusion"]["forwards"] == "1 + P = 170"   # 13 × 13 placements of the window
    assert (rows["gradient"]["forwards"], rows["gradient"]["backwards"]) == ("1", "1")
    assert rows["score-cam"]["forwards"] == "2 + K"   # K: the channels of the layer, known with a model
    assert registry.table("shapes")[0]["forwards"] == "1 + P = 226"
    assert rows["score-cam"]["needs"] == "activations" and rows["lime"]["needs"] == "outputs"
    assert "| pixel | no | gradients | `1 + n_samples` = 17 | `n_samples` = 16 |" in registry.markdown("lite0")


def test_markdown_cites_only_known_keys_and_links_real_chapters():
    text = registry.markdown("lite0") + "\n" + registry.taxonomy_markdown()
    cited = {key for group in re.findall(r"\{cite\}`([^`]+)`", text) for key in group.split(",")}
    assert cited and cited <= BIB_KEYS, cited - BIB_KEYS
    for target in re.findall(r"\{doc\}`([^`]+)`", text):
        assert (ROOT / "book" / f"{target}.ipynb").is_file(), target
    plain = registry.markdown("lite0", cite=False)
    assert "{cite}" not in plain and len(plain.splitlines()) == len(NAMES) + 2


def test_taxonomy_lists_every_method_in_the_row_of_its_section():
    rows = registry.taxonomy_markdown().splitlines()[2:]
    assert len(rows) == len(registry.FAMILIES)
    sections = [family.section for family in registry.FAMILIES]
    for entry in registry.METHODS.values():
        row = rows[sections.index(entry.section)]
        assert entry.title in row, entry.name
