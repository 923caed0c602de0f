"""clrctl.model.build: built-in architectures on digits- and CIFAR-shaped input, torchvision models
with adapted input channels, user factories, and one-line errors for every failure."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from clrctl.config.schema import ModelConfig
from clrctl.errors import ConfigError
from clrctl.model.build import build_model


def build(name: str, shape=(1, 8, 8), classes: int = 10, **kwargs) -> nn.Module:
    return build_model(ModelConfig(name=name, **kwargs), shape, classes)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet20", "resnet56", "torchvision:resnet18"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_builds_and_forwards(name, shape):
    model = build(name, shape, classes=7)
    assert model(torch.randn(2, *shape)).shape == (2, 7)


def test_mlp_layers_and_flat_input():
    model = build("mlp", (5,), classes=3, hidden=[4, 6])
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 4), (4, 6), (6, 3)]
    assert model(torch.randn(2, 5)).shape == (2, 3)
    assert build("mlp", (5,), classes=3, hidden=[])(torch.randn(2, 5)).shape == (2, 3)


@pytest.mark.parametrize("name", ["lenet", "resnet20"])
def test_image_models_refuse_flat_input(name):
    with pytest.raises(ConfigError, match=r"^model\.name: 'lenet|resnet20' needs image input"):
        build(name, (32,))


def test_resnet_parameter_counts_match_he_et_al():
    # He et al. 2015, §4.2 table: ResNet-20 0.27M, ResNet-56 0.85M (option A, 10 classes).
    assert n_params(build("resnet20", (3, 32, 32))) == 269_722
    assert n_params(build("resnet56", (3, 32, 32))) == 853_018


def test_resnet20_structure_option_a_shortcuts():
    model = build("resnet20", (3, 32, 32))
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 19  # 1 + 3 x 3 x 2, no 1x1 shortcut
    assert model.conv.in_channels == 3 and build("resnet20", (1, 8, 8)).conv.in_channels == 1


def test_torchvision_first_conv_adapted_to_one_channel():
    model = build("torchvision:resnet18", (1, 32, 32))
    assert model.conv1.in_channels == 1
    assert (model.conv1.out_channels, model.conv1.kernel_size, model.conv1.stride) == (64, (7, 7), (2, 2))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_torchvision_nested_first_conv_and_args():
    model = build("torchvision:mobilenet_v3_small", (1, 32, 32), args={"dropout": 0.0})
    assert model.features[0][0].in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_torchvision_unknown_name_suggests():
    with pytest.raises(ConfigError) as info:
        build("torchvision:resnet181")
    assert str(info.value).startswith("model.name: unknown torchvision model 'resnet181' (did you mean resnet18")


def test_torchvision_bad_args_name_model_args():
    with pytest.raises(ConfigError, match=r"^model\.args: torchvision model 'resnet18'"):
        build("torchvision:resnet18", args={"no_such_option": 1})


# ---------------------------------------------------------------------------------------
# user models

USER_MODULE = '''
import torch

def small(num_classes, input_shape, width=4):
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], width),
        torch.nn.Linear(width, num_classes))

def fixed():
    return torch.nn.Linear(64, 10)

def anything(**kwargs):
    return torch.nn.Linear(64, kwargs["num_classes"])

class Factory:
    @staticmethod
    def make(num_classes):
        return torch.nn.Linear(64, num_classes)

NOT_CALLABLE = 3

def boom():
    raise ValueError("no good\\nsecond line")

def not_a_module():
    return [1, 2]
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user module ``clrctl_test_user_models`` importable from ``tmp_path`` (the cwd)."""
    (tmp_path / "clrctl_test_user_models.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "clrctl_test_broken.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for name in ("clrctl_test_user_models", "clrctl_test_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return "clrctl_test_user_models"


def test_user_model_from_working_directory_gets_what_it_accepts(user_module):
    model = build(f"{user_module}:small", (1, 8, 8), classes=5, args={"width": 3})
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5) and model[1].out_features == 3
    assert build(f"{user_module}:fixed").out_features == 10  # takes no keywords at all
    assert build(f"{user_module}:anything", classes=4).out_features == 4  # **kwargs
    assert build(f"{user_module}:Factory.make", classes=6).out_features == 6


@pytest.mark.parametrize("spec, problem", [
    ("clrctl_test_no_such_module:f", "cannot import module 'clrctl_test_no_such_module'"),
    ("clrctl_test_broken:f", "cannot import module 'clrctl_test_broken': No module named 'no_such_dependency_xyz'"),
    ("clrctl_test_user_models:missing", "module 'clrctl_test_user_models' has no attribute 'missing'"),
    ("clrctl_test_user_models:NOT_CALLABLE", "'clrctl_test_user_models:NOT_CALLABLE' is a int, not a callable"),
    ("clrctl_test_user_models:boom", "'clrctl_test_user_models:boom' raised ValueError: no good"),
    ("clrctl_test_user_models:not_a_module", "returned list, expected a torch.nn.Module"),
    ("clrctl_test_user_models:small", "raised TypeError"),  # args it does not take
])  # fmt: skip
def test_user_model_failures_are_one_line_config_errors(user_module, spec, problem):
    args = {"depth": 3} if spec.endswith(":small") else {}
    with pytest.raises(ConfigError) as info:
        build(spec, args=args)
    message = str(info.value)
    assert message.startswith("model.name: ") and problem in message and "\n" not in message


def test_odd_feature_maps_mnist_shaped():
    # 28 -> 14 -> 7 -> 4: the option-A shortcut's subsampling must match the strided conv.
    for name in ("resnet20", "lenet"):
        assert build(name, (1, 28, 28))(torch.randn(2, 1, 28, 28)).shape == (2, 10)
