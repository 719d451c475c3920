"""Two torchvision architectures a new user hit (issue #37, item 6): GoogLeNet with the user's own ``model.kwargs``
(its training-mode forward returns ``GoogLeNetOutputs``) and VGG's 7×7 adaptive pooling at a 64×64 input."""

from __future__ import annotations

import warnings

import pytest
import torch

from ccpcsa.errors import UserError
from ccpcsa.models.outputs import main_logits
from ccpcsa.models.registry import build_model
from ccpcsa.training.speed import batch_loss
from export.metadata import DeployMetadata
from export.onnx_export import export_onnx

TV = "torchvision.models"


def test_googlenet_keeps_the_loaders_defaults_under_user_kwargs():
    # the zoo config's kwargs {weights: null}: the loader's aux_logits False is kept beneath them
    m = build_model(f"{TV}:googlenet", 10, weights=None)
    assert m.aux_logits is False and m.aux1 is None and m.aux2 is None
    # the user may still ask for the auxiliary heads
    assert build_model(f"{TV}:googlenet", 10, weights=None, aux_logits=True).aux1 is not None


def test_a_tuple_output_trains_on_its_main_logits():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = build_model(f"{TV}:googlenet", 10, weights=None, aux_logits=True)
    m.train()
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    out = m(x)
    assert type(out).__name__ == "GoogLeNetOutputs" and main_logits(out) is out.logits
    loss, logits = batch_loss(m, x, y)
    assert logits.shape == (4, 10) and torch.isfinite(loss)
    loss.backward()
    assert m.fc.weight.grad is not None and m.fc.weight.grad.abs().sum() > 0  # the main head learns
    assert m.aux1.fc2.weight.grad is None  # the auxiliary heads are not in the objective
    assert main_logits((logits, None)) is logits and main_logits({"out": logits}) is logits
    with pytest.raises(TypeError, match="returned str"):
        main_logits("logits")


def test_vgg_at_64_pixels_names_the_input_size_that_exports(tmp_path):
    m = build_model(f"{TV}:vgg11_bn", 10, weights=None)
    meta = DeployMetadata(class_names=[str(i) for i in range(10)], mean=[0.5] * 3, std=[0.25] * 3, input_size=64)
    with pytest.raises(UserError) as err:
        export_onnx(m, tmp_path / "vgg.onnx", meta)
    msg = str(err.value)
    assert "\n" not in msg and "cannot export VGG" in msg
    assert "avgpool (AdaptiveAvgPool2d to 7×7) gets a 2×2 map at input 64×64" in msg and "224×224 inputs" in msg
    assert not (tmp_path / "vgg.onnx").exists()
