"""Old checkpoints still load: a pruned model with BAM attached, in the ``ccpcsa-checkpoint/1`` layout.

The layout below was read off a checkpoint written by the code before the package move (``ccpcsa/prune.py``,
``ccpcsa/attention.py``, ``ccpcsa/checkpoint.py``, commit f2e8647): ``deploy_tests.byo_model:tiny_net`` (width 16)
with BAM attached (reduction 16, dilation 4) and three 4-channel blocks pruned (the residual stream 16 → 12, ``down``
and ``head`` 32 → 28). The test writes that dict by hand — plain tensors of those shapes, filled from a seeded
generator; no weight file is committed — and loads it with today's :func:`load_checkpoint`. ``OLD_LOGITS`` are what
the code before the move computed from this very dict, so the rebuilt architecture and its forward are unchanged.
A checkpoint stores no module path (only the model's name and kwargs, BAM's options and plain tensors), so moving
modules cannot break it; this test would catch it if that ever changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ccpcsa.io.checkpoint import load_checkpoint
from ccpcsa.models.attention import BAM

TINY = "deploy_tests.byo_model:tiny_net"


def _bam(prefix: str, c: int, h: int = 4) -> list[tuple[str, str, tuple[int, ...]]]:
    """The tensors of one BAM on ``c`` channels with hidden width ``h`` (its width is not pruned: max(16 // 16, 4))."""
    return [(f"{prefix}.channel_gate.fc1", "linear", (h, c)), (f"{prefix}.channel_gate.bn", "bn", (h,)),
            (f"{prefix}.channel_gate.fc2", "linear", (c, h)), (f"{prefix}.spatial_gate.reduce.0", "conv+bias", (h, c, 1, 1)),
            (f"{prefix}.spatial_gate.reduce.1", "bn", (h,)), (f"{prefix}.spatial_gate.dilated.0", "conv+bias", (h, h, 3, 3)),
            (f"{prefix}.spatial_gate.dilated.1", "bn", (h,)), (f"{prefix}.spatial_gate.dilated.3", "conv+bias", (h, h, 3, 3)),
            (f"{prefix}.spatial_gate.dilated.4", "bn", (h,)), (f"{prefix}.spatial_gate.final", "conv+bias", (1, h, 1, 1))]


#: (module, kind, weight shape) in the order of the old file's state_dict.
OLD_LAYOUT = [
    ("stem.0", "conv", (12, 3, 3, 3)), ("stem.1", "bn", (12,)),
    ("block.body.0", "conv", (12, 12, 3, 3)), ("block.body.1", "bn", (12,)), *_bam("block.bam", 12),
    ("down.0", "conv", (28, 12, 3, 3)), ("down.1", "bn", (28,)), *_bam("down.2.bam", 28),
    ("head.0", "conv", (28, 28, 3, 3)), ("head.1", "bn", (28,)),
    ("fc", "linear", (10, 28)),
]

#: The old code's logits for the two seeded images of :func:`_images` (2 × 10).
OLD_LOGITS = [
    [0.46478, -0.09788, 0.63449, -0.18938, 0.18826, 0.25519, 0.29147, 0.29831, -0.05935, 0.31136],
    [0.42536, -0.12544, 0.65706, -0.1765, 0.22567, 0.18825, 0.27841, 0.35546, -0.06264, 0.3366],
]


def _state_dict(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Seeded tensors in the shapes of :data:`OLD_LAYOUT` (BN variances positive, counters int64 scalars)."""
    def rnd(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    state: dict[str, torch.Tensor] = {}
    for name, kind, shape in OLD_LAYOUT:
        if kind == "bn":
            n = shape[0]
            state.update({f"{name}.weight": 1 + rnd(n), f"{name}.bias": rnd(n), f"{name}.running_mean": rnd(n),
                          f"{name}.running_var": 0.5 + torch.rand(n, generator=gen),
                          f"{name}.num_batches_tracked": torch.tensor(7, dtype=torch.int64)})
        else:
            state[f"{name}.weight"] = rnd(*shape)
            if kind in ("linear", "conv+bias"):
                state[f"{name}.bias"] = rnd(shape[0])
    return state


def _old_checkpoint() -> dict[str, Any]:
    """The dict the old ``save_checkpoint`` wrote for the pruned BAM model (stage ``prune``)."""
    return {
        "format": "ccpcsa-checkpoint/1",
        "model": {"name": TINY, "num_classes": 10, "input_size": 32, "kwargs": {"width": 16}},
        "attention": {"reduction": 16, "dilation": 4},
        "state_dict": _state_dict(torch.Generator().manual_seed(0)),
        "classes": [f"c{i}" for i in range(10)],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "meta": {"stage": "prune", "val_accuracy": 12.5},
        "train_state": None,
    }


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_pruned_bam_checkpoint_of_the_old_layout_loads(tmp_path: Path) -> None:
    payload = _old_checkpoint()
    path = tmp_path / "pruned.pt"
    with open(path, "wb") as fh:
        torch.save(payload, fh)
    ck = load_checkpoint(path, expect_classes=10, expect_model=TINY)
    assert ck.source == "checkpoint"
    assert (ck.spec.name, ck.spec.num_classes, ck.spec.input_size, ck.spec.kwargs) == (TINY, 10, 32, {"width": 16})
    assert ck.spec.attention == {"reduction": 16, "dilation": 4}
    assert (ck.classes, ck.mean, ck.std, ck.meta, ck.train_state) == (
        payload["classes"], payload["mean"], payload["std"], payload["meta"], None)
    bams = {n: m.channel_gate.fc1.in_features for n, m in ck.model.named_modules() if isinstance(m, BAM)}
    assert bams == {"block.bam": 12, "down.2.bam": 28}
    own = ck.model.state_dict()
    assert list(own) == list(payload["state_dict"])
    assert all(torch.equal(own[k], v) for k, v in payload["state_dict"].items())
    with torch.no_grad():
        logits = ck.model(_images())
    assert torch.allclose(logits, torch.tensor(OLD_LOGITS), atol=1e-4), logits.tolist()
