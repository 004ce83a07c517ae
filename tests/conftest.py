"""Shared fixtures: the pretrained model and the photos are built once per test session.

Every test that uses `lite0` is also checked to leave it exactly as it found it: no hooks, the
same modules, eval mode and the same `requires_grad` flags.
"""
import pytest
import torch

from vizlib import data, models
from vizlib.mechanics import hook_count


@pytest.fixture(scope="session")
def lite0():
    return models.load_efficientnet_lite0()


def model_state(model):
    return {
        "modules": [(name, id(module)) for name, module in model.named_modules(remove_duplicate=False)],
        "training": [module.training for module in model.modules()],
        "requires_grad": [parameter.requires_grad for parameter in model.parameters()],
        "hooks": hook_count(model),
    }


@pytest.fixture(autouse=True)
def lite0_left_unchanged(request):
    if "lite0" not in request.fixturenames:
        yield
        return
    model = request.getfixturevalue("lite0")
    before = model_state(model)
    yield
    assert model_state(model) == before, "the test left EfficientNet-Lite0 changed"


@pytest.fixture(scope="session")
def chelsea():
    return data.preprocess(data.load_image("chelsea"))


@pytest.fixture(scope="session")
def coffee():
    return data.preprocess(data.load_image("coffee"))


@pytest.fixture
def tiny_vgg():
    torch.manual_seed(0)
    return models.VGGNet(in_channels=3, num_classes=4, input_size=32, widths=(4, 8))
