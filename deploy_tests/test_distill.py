"""Knowledge distillation in every fine-tune of the pruning loop (``prune.recovery.distill.enabled``, issue #13)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ccpcsa.models import build_model
from ccpcsa.training.speed import Distillation, batch_loss


def test_distillation_loss_is_the_hinton_objective():
    torch.manual_seed(0)
    student = build_model("deploy_tests.byo_model:tiny_net", 10).eval()
    teacher = copy.deepcopy(student)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    ce, logits = batch_loss(student, x, y)
    same, _ = batch_loss(student, x, y, distill=Distillation(teacher, alpha=0.7, temperature=4.0))
    assert same.item() == pytest.approx(0.3 * ce.item(), rel=1e-5)  # identical teacher: the KL term is 0
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other, _ = batch_loss(student, x, y, distill=Distillation(teacher, alpha=0.7, temperature=4.0))
    zt = teacher(x)
    kl = F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(zt / 4, 1), reduction="batchmean")
    assert other.item() == pytest.approx(0.3 * ce.item() + 0.7 * 16 * kl.item(), rel=1e-4)
    assert other.item() > same.item()
    pure, _ = batch_loss(student, x, y, distill=Distillation(teacher, alpha=0.0))
    assert pure.item() == pytest.approx(ce.item())


def test_pruning_loop_distills_from_the_unpruned_model(synthetic_data):
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import PruneConfig, run_pruning
    from ccpcsa.training.engine import TrainConfig

    tc = TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=3, lr=0.05)
    results = {}
    for distill in (False, True):
        torch.manual_seed(0)
        model = build_model("deploy_tests.byo_model:tiny_net", synthetic_data.num_classes, width=16)
        cfg = PruneConfig.of(criterion__name="l1", target__flops_reduction=0.3, steps__flops_reduction=0.3, steps__max_iterations=1, steps__tolerance=100.0,
                          widths__round_to=4, widths__min_channels=4, recovery__finetune_epochs=1, recovery__final_finetune_epochs=1, recovery__distill__enabled=distill)
        res = run_pruning(model, synthetic_data, get_criterion("l1"), cfg, tc, input_size=synthetic_data.input_size, progress=False)
        results[distill] = [p.detach().clone() for p in res.model.parameters()]
    # same seed, same plan: only the objective differs, so the fine-tuned weights differ
    assert any(not torch.equal(a, b) for a, b in zip(results[False], results[True], strict=True))


def test_the_teacher_is_the_unpruned_model(synthetic_data, monkeypatch):
    import ccpcsa.pruning.loop as loop
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import PruneConfig, run_pruning
    from ccpcsa.surgery.prune import channels_per_layer
    from ccpcsa.training.engine import TrainConfig

    seen = []
    real_fit = loop.fit

    def spy(*args, **kwargs):
        seen.append(kwargs.get("distill"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(loop, "fit", spy)
    torch.manual_seed(0)
    model = build_model("deploy_tests.byo_model:tiny_net", synthetic_data.num_classes, width=16)
    before = channels_per_layer(model)
    cfg = PruneConfig.of(criterion__name="l1", target__flops_reduction=0.3, steps__flops_reduction=0.3, steps__max_iterations=1, steps__tolerance=100.0,
                      widths__round_to=4, widths__min_channels=4, recovery__finetune_epochs=1, recovery__final_finetune_epochs=1, recovery__distill__enabled=True, recovery__distill__weight=0.5,
                      recovery__distill__temperature=2.0)
    res = run_pruning(model, synthetic_data, get_criterion("l1"), cfg, TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=2),
                      input_size=synthetic_data.input_size, progress=False)
    assert len(seen) == 3 and all(d is not None for d in seen)  # the training epoch, the fine-tune, the final fine-tune
    assert all(d.alpha == 0.5 and d.temperature == 2.0 for d in seen)
    assert channels_per_layer(seen[-1].teacher) == before != channels_per_layer(res.model)
    assert not any(p.requires_grad for p in seen[-1].teacher.parameters())
