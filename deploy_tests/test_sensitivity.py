"""Measured per-block sensitivity and the allocation that prices it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bench.common import randomize_batchnorm
from ccpcsa.models import build_model
from ccpcsa.pruning.allocation import order_blocks, removable_blocks
from ccpcsa.pruning.sensitivity import block_sensitivity
from ccpcsa.surgery.cost import MacsCost
from ccpcsa.surgery.prune import ChannelPruner, plan_from_blocks

SMALL = "deploy_tests.byo_model:tiny_net"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(build_model(SMALL, 10, width=16).eval())


def test_silenced_channels_compute_what_their_removal_computes_and_are_restored():
    model = _model()
    pruner = ChannelPruner(model, 32, round_to=4, min_channels=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = {"down.0": [0, 5, 9, 30], "block.0": [1, 2, 3, 4]}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), pruner.silenced(plan):
        silenced = model(x)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # restored exactly
    with torch.no_grad():
        assert not torch.allclose(model(x), silenced)
    pruner.apply(plan)
    with torch.no_grad():
        torch.testing.assert_close(model(x), silenced, rtol=1e-4, atol=1e-5)


def test_block_sensitivity_is_the_marginal_loss_and_finds_the_dead_layer():
    model = _model()
    with torch.no_grad():  # half of 'down' is dead: those BN channels output 0 whatever their input, so they cost nothing
        model.down[1].weight[:16] = 0
        model.down[1].bias[:16] = 0
    pruner = ChannelPruner(model, 32, round_to=4, min_channels=4)
    rng = np.random.default_rng(0)
    scores = {g.key: rng.random(g.size) for g in pruner.groups}
    scores["down.0"][:16] -= 2  # the criterion puts the dead channels first in their group's order
    queues = removable_blocks(pruner, scores)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(2)]
    sens = block_sensitivity(pruner, queues, batches)
    assert set(sens) == set(queues) and all(len(sens[k]) == len(queues[k]) for k in queues)
    assert max(abs(v) for v in sens["down.0"][:4]) < 1e-6 and sum(sens["down.0"][4:]) > 1e-3
    # the marginals of a group add up to the loss with all its blocks silenced
    import torch.nn.functional as F
    with torch.no_grad():
        base = np.mean([float(F.cross_entropy(model(x), y)) for x, y in batches])
        with pruner.silenced(plan_from_blocks(queues["block.0"])):
            full = np.mean([float(F.cross_entropy(model(x), y)) for x, y in batches])
    assert abs(sum(sens["block.0"]) - (full - base)) < 1e-4
    assert sum(sens["block.0"]) > 1e-3
    # the measured allocation takes the dead layer's blocks before any live block
    order = order_blocks(pruner, scores, "sensitivity-macs", MacsCost(pruner), sens)
    keys = [b.key for b in order]
    n_dead = 4
    assert keys[:n_dead] == ["down.0"] * n_dead and len(order) == sum(len(q) for q in queues.values())
