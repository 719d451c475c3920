"""Distillation from cached views (``prune.recovery.distill.views``, issue #38 item 1): the teacher's logits computed
once for K augmented views per image are the logits the teacher gives on the very batches the student trains on."""

from __future__ import annotations

import copy

import pytest
import torch

from ccpcsa.data import BatchLoader, views
from ccpcsa.errors import UserError
from ccpcsa.models import build_model
from ccpcsa.training import teacher_views as tv
from ccpcsa.training.speed import Distillation, batch_loss


def _teacher(classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("deploy_tests.byo_model:tiny_net", classes, width=8).eval()


def test_every_batch_carries_the_teachers_logits_of_its_own_images(synthetic_data):
    data = synthetic_data
    teacher = _teacher(data.num_classes)
    pool = tv.build_pool(teacher, data.train, data.mean, data.std, 3, seed=5, device=torch.device("cpu"), progress=False)
    assert pool.logits.shape == (len(data.train), 3, data.num_classes)
    loader = BatchLoader(data.train, 32, data.mean, data.std, shuffle=True, augment=True, seed=1, drop_last=True, views=pool)
    seen: dict[int, set[bytes]] = {}
    for epoch in range(4):
        loader.set_epoch(epoch)
        order = loader.indices()
        for b, (x, y, t) in enumerate(loader):
            with torch.no_grad():
                assert torch.allclose(t, teacher(x), atol=1e-5)  # the cached logits are those of exactly this batch
            idx = order[b * 32:(b + 1) * 32]
            assert torch.equal(y, torch.from_numpy(data.train.labels[idx]))
            for i, img in zip(idx, x, strict=True):
                seen.setdefault(int(i), set()).add(img.numpy().tobytes())
    # every visit is one of the image's 3 views, and the views differ (crops and flips were drawn)
    assert max(len(v) for v in seen.values()) <= 3
    assert sum(len(v) for v in seen.values()) > 1.5 * len(seen)


def test_cached_logits_give_the_online_distillation_loss(synthetic_data):
    teacher = _teacher(synthetic_data.num_classes)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, synthetic_data.num_classes, (8,))
    kd = Distillation(teacher, alpha=0.7, temperature=4.0)
    online, _ = batch_loss(student, x, y, distill=kd)
    with torch.no_grad():
        cached, _ = batch_loss(student, x, y, distill=kd, teacher_logits=teacher(x))
        other, _ = batch_loss(student, x, y, distill=kd, teacher_logits=teacher(x) + torch.randn(8, synthetic_data.num_classes))
    assert cached.item() == pytest.approx(online.item(), rel=1e-6)
    assert other.item() != pytest.approx(online.item(), rel=1e-3)


def test_the_pool_is_seeded_and_plain_images_without_augmentation(synthetic_data):
    a = views.draw_views(50, 4, seed=3)
    b = views.draw_views(50, 4, seed=3)
    c = views.draw_views(50, 4, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (50, 4) and int(a[0].max()) <= 2 * views.PAD
    teacher = _teacher(synthetic_data.num_classes)
    plain = tv.build_pool(teacher, synthetic_data.train, synthetic_data.mean, synthetic_data.std, 4, 0, torch.device("cpu"),
                          augment=False, progress=False)
    assert plain.k == 1 and plain.pad == 0
    x, _ = next(iter(BatchLoader(synthetic_data.train, 16, synthetic_data.mean, synthetic_data.std)))
    with torch.no_grad():
        assert torch.allclose(plain.logits[:16, 0], teacher(x), atol=1e-5)


def test_a_pool_too_large_is_one_line_naming_the_key(synthetic_data, monkeypatch):
    monkeypatch.setattr(tv, "MAX_POOL_BYTES", 1000)
    with pytest.raises(UserError, match=r"prune.recovery.distill.views=2 would cache .* lower it or set 0"):
        tv.build_pool(_teacher(synthetic_data.num_classes), synthetic_data.train, synthetic_data.mean, synthetic_data.std, 2,
                      0, torch.device("cpu"), progress=False)


def test_the_loop_builds_the_pool_once_and_never_runs_the_teacher_in_a_step(synthetic_data, monkeypatch):
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import PruneConfig, run_pruning
    from ccpcsa.training.engine import TrainConfig

    builds: list[int] = []
    real = tv.build_pool

    def counting(*args, **kwargs):
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tv, "build_pool", counting)
    forwards: list[int] = []
    results: dict[int, int] = {}
    for k in (0, 2):
        torch.manual_seed(0)
        model = build_model("deploy_tests.byo_model:tiny_net", synthetic_data.num_classes, width=16)
        cfg = PruneConfig.of(criterion__name="l1", target__flops_reduction=0.3, steps__flops_reduction=0.3,
                             steps__max_iterations=1, steps__tolerance=100.0, widths__round_to=4, widths__min_channels=4,
                             recovery__finetune_epochs=1, recovery__final_finetune_epochs=1, recovery__distill__enabled=True,
                             recovery__distill__views=k)
        teacher = copy.deepcopy(model).eval()
        forwards.clear()
        teacher.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
        res = run_pruning(model, synthetic_data, get_criterion("l1"), cfg, TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=3),
                          input_size=synthetic_data.input_size, progress=False, teacher=teacher)
        results[k] = sum(forwards)
        recorded = res.summary()["teacher_views"]
        assert recorded is None if k == 0 else (recorded["views"], recorded["images"]) == (2, len(synthetic_data.train))
    n = len(synthetic_data.train)
    assert len(builds) == 1  # the statistics epoch, the fine-tune and the final fine-tune share one pool
    assert results[0] == 3 * 3 * 32  # online: one teacher forward per step of the three fits
    assert results[2] == 2 * n  # cached: the pool's forwards only


def test_views_must_be_a_count(tmp_path):
    from ccpcsa.pruning.loop import PruneConfig

    for bad in (-1, 1.5, True):
        with pytest.raises(UserError, match="prune.recovery.distill.views must be an integer ≥ 0"):
            PruneConfig.of(recovery__distill__views=bad).validate()


def test_resident_and_host_loaders_give_the_same_view_batches(synthetic_data):
    data = synthetic_data
    pool = tv.build_pool(_teacher(data.num_classes), data.train, data.mean, data.std, 2, 0, torch.device("cpu"), progress=False)
    host, resident = (BatchLoader(data.train, 16, data.mean, data.std, shuffle=True, augment=True, seed=2, resident=r,
                                  views=pool) for r in (False, True))
    for loader in (host, resident):
        loader.set_epoch(3)
    for a, b in zip(host, resident, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="another dataset"):
        BatchLoader(data.val, 16, data.mean, data.std, views=pool)


def test_the_report_says_the_fine_tunes_distilled_from_cached_views():
    from pipeline.records import ReportView
    from pipeline.report import pruning_lines

    base = {"alignment": 16, "alignment_reason": "AVX-512", "allocation": "global"}
    cached = pruning_lines(ReportView.from_dict({"pruning": {**base, "teacher_views": {"views": 4, "images": 45000,
                                                                                        "seconds": 231.6}}}))
    assert ("Distilled from cached teacher logits: 4 view(s) of each of 45000 training images, built in 232 s "
            "(`prune.recovery.distill.views`).") in cached
    assert not any("cached teacher" in line for line in pruning_lines(ReportView.from_dict({"pruning": base})))
