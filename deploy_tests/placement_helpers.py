"""What the placement tests share (:mod:`deploy_tests.test_placement`, :mod:`deploy_tests.test_gpu_speed`): the tiny
model and a short training config (each module has its own ``data`` fixture: a small synthetic data set)."""

from __future__ import annotations

import torch
from torch import nn

from ccpcsa.training.engine import TrainConfig
from deploy_tests.byo_model import tiny_net


def _tiny(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return tiny_net(10, 8).to(dtype)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=32, lr=0.05, schedule="constant", max_steps_per_epoch=4, amp=False, augment=True)
    return TrainConfig(**{**base, **kw})
