"""Shared fixtures: the pretrained model and the photos are built once per test session."""
import pytest
import torch

from vizlib import data, models


@pytest.fixture(scope="session")
def lite0():
    return models.load_efficientnet_lite0()


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
