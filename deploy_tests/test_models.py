"""Model zoo: reference parameter/MAC counts, forward shapes, registry errors."""

from __future__ import annotations

import pytest
import torch

from ccpcsa.errors import UserError
from ccpcsa.models import build_model, count_complexity, list_models, native_input_size

# (name, kwargs, num_classes, params expected, params rel. tol, MACs expected, MACs rel. tol)
# torch-pruning's counter also counts BN/ReLU/add work, so MACs sit 1–7% above the papers' conv+fc figures.
REFERENCE = [
    ("resnet56", {"shortcut": "A"}, 10, 853_018, 0.0, 125.5e6, 0.03),
    ("resnet56", {}, 10, 0.85e6, 0.01, 125.5e6, 0.03),
    ("resnet50", {}, 1000, 25_557_032, 0.0, 4.1e9, 0.03),
    ("resnet101", {}, 1000, 44_549_160, 0.0, 7.8e9, 0.03),
    ("vgg16_bn", {}, 10, 15.0e6, 0.03, 314e6, 0.02),
    ("mobilenet_v2", {}, 1000, 3_504_872, 0.0, 300e6, 0.07),
]


@pytest.mark.parametrize("name,kwargs,classes,params,ptol,macs,mtol", REFERENCE)
def test_reference_counts(name, kwargs, classes, params, ptol, macs, mtol):
    model = build_model(name, classes, **kwargs)
    c = count_complexity(model, native_input_size(name))
    assert abs(c.params - params) <= ptol * params, c
    assert abs(c.macs - macs) <= mtol * macs, c


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet50_cifar", "vgg16_bn", "mobilenet_v2_cifar"])
def test_cifar_forward(name):
    model = build_model(name, 10).eval()
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_unknown_model_lists_known_names():
    with pytest.raises(UserError) as e:
        build_model("resnet21")
    msg = str(e.value)
    assert "resnet20" in msg and "did you mean" in msg and "\n" not in msg
    assert set(list_models()) >= {"resnet20", "resnet56", "resnet110", "resnet50", "resnet101", "vgg16_bn", "mobilenet_v2"}


def test_bring_your_own_model(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes=10, width=8):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("my_models:tiny", 5, width=12)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    with pytest.raises(UserError, match="cannot import"):
        build_model("no_such_pkg.mod:f")
    with pytest.raises(UserError, match="no callable"):
        build_model("my_models:nope")
