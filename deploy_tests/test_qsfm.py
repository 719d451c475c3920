"""QSFM (arXiv 2105.06052): all-pairs SSIM/PSNR, greedy pair elimination, lossless compensation of
duplicated / affinely scaled channels, and one-shot pruning of MobileNetV2 down to a runnable ONNX model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ccpcsa.criteria import ScoreContext, get_criterion, list_criteria
from ccpcsa.criteria.qsfm import QSFMCriterion, elimination_scores, greedy_pair_elimination, redundancy
from ccpcsa.criteria.similarity import (
    global_psnr,
    global_ssim,
    pairwise_similarity,
    scale_to_range,
    ssim_sums,
)
from ccpcsa.models import build_model, count_complexity
from ccpcsa.surgery.macs_target import prune_to_target
from ccpcsa.surgery.prune import ChannelPruner


def _naive_ssim(a: torch.Tensor, b: torch.Tensor, win: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Textbook SSIM of two maps (Wang et al. 2004) with a 2-D Gaussian window, zero padding renormalised."""
    a = scale_to_range(a[None, None].double())[0, 0]
    b = scale_to_range(b[None, None].double())[0, 0]
    r = win // 2
    g = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma**2))
    k = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t[None, None], k, padding=r)[0, 0] / F.conv2d(torch.ones_like(t)[None, None], k, padding=r)[0, 0]

    mua, mub = blur(a), blur(b)
    va, vb, cab = blur(a * a) - mua**2, blur(b * b) - mub**2, blur(a * b) - mua * mub
    c1, c2 = 0.01**2, 0.03**2
    return (((2 * mua * mub + c1) * (2 * cab + c2)) / ((mua**2 + mub**2 + c1) * (va + vb + c2))).mean()


@pytest.mark.parametrize("shape", [(3, 5, 9, 13), (2, 4, 5, 6)])  # separable path and Kronecker path
def test_batched_all_pairs_ssim_equals_naive(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    x[:, 1] = 2 * x[:, 0] + 1
    n, c = shape[:2]
    batched = ssim_sums(x, chunk_elements=300) / n  # tiny chunks: exercises image and row chunking
    ref = torch.tensor([[float(sum(_naive_ssim(x[k, i], x[k, j]) for k in range(n)) / n) for j in range(c)] for i in range(c)],
                       dtype=torch.float64)
    torch.testing.assert_close(batched, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, batched.T)


def test_ssim_self_is_one_and_psnr_identical_is_capped():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 8, 8)
    x[:, 1] = x[:, 0]
    x[:, 3] = 0.0  # constant map
    s = pairwise_similarity(x, "ssim")
    torch.testing.assert_close(s.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert s[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert s[0, 2] < 0.9
    p = pairwise_similarity(x, "psnr")
    assert torch.isfinite(p).all()
    assert p[0, 1] == pytest.approx(100.0) and p.diagonal().eq(100.0).all()
    assert p[0, 2] < 40
    v = torch.randn(32, 3, dtype=torch.float64)
    v[:, 2] = 3 * v[:, 0] - 2  # affine copy across samples
    gs, gp = global_ssim(v), global_psnr(v)
    assert gs[0, 2] == pytest.approx(1.0, abs=1e-9) and gs.diagonal().sub(1).abs().max() < 1e-9
    assert torch.isfinite(gp).all() and gp[0, 2] == pytest.approx(100.0)


def test_greedy_pair_elimination_and_scores():
    s = np.array([[1.0, 0.9, 0.2, 0.1],
                  [0.9, 1.0, 0.3, 0.8],
                  [0.2, 0.3, 1.0, 0.5],
                  [0.1, 0.8, 0.5, 1.0]])
    energy = np.array([1.0, 2.0, 1.0, 3.0])
    e = greedy_pair_elimination(s, energy)
    # (0,1) at 0.9: 0 has less energy → removed, twin 1; then (1,3) at 0.8: 1 removed, twin 3; then (2,3) at 0.5
    assert e.order == [0, 1, 2] and e.twins == [1, 3, 3] and e.kept == 3
    assert e.similarity == pytest.approx([0.9, 0.8, 0.5])
    sc = elimination_scores(e, 4)
    assert list(np.argsort(sc)) == [0, 1, 2, 3] and sc[3] > 2
    assert sc[0] == pytest.approx(0.1) and sc[1] == pytest.approx(0.2, abs=1e-8)
    np.testing.assert_allclose(redundancy(s), [0.9, 0.9, 0.5, 0.8])


def test_registered_names():
    assert {"qsfm", "qsfm-ssim", "qsfm-psnr"} <= set(list_criteria())
    assert isinstance(get_criterion("qsfm"), QSFMCriterion) and get_criterion("qsfm").metric == "ssim"
    assert get_criterion("qsfm-psnr").metric == "psnr" and get_criterion("qsfm-psnr").name == "qsfm-psnr"
    assert not get_criterion("qsfm").collects_training_stats


class _TwoConv(nn.Module):
    """conv1 (bias) → [ReLU | identity] → conv2 (k×k, no bias) → BN → ReLU → pool → fc."""

    def __init__(self, relu: bool, k2: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.act = nn.ReLU() if relu else nn.Identity()
        self.conv2 = nn.Conv2d(8, 8, k2, padding=k2 // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.bn2(self.conv2(self.act(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _prune_twin(relu: bool, k2: int, scale: float, shift: float, compensate: bool = True):
    torch.manual_seed(0)
    net = _TwoConv(relu, k2)
    with torch.no_grad():
        net.conv1.weight[5] = scale * net.conv1.weight[2]
        net.conv1.bias[5] = scale * net.conv1.bias[2] + shift
        net.bn2.running_mean.uniform_(-1, 1)
        net.bn2.running_var.uniform_(0.5, 2.0)
    net.eval()
    calib = [torch.randn(16, 3, 12, 12) for _ in range(2)]
    pruner = ChannelPruner(net, 12, round_to=1, min_channels=1)
    crit = QSFMCriterion("ssim")
    scores = crit.score(ScoreContext(net, pruner, batches=lambda: ((x, torch.zeros(len(x))) for x in calib)))
    first_removed, twin = crit.removal_pairs()["conv1"][0]
    assert {first_removed, twin} == {2, 5}  # QSFM finds the copy
    assert int(np.argmin(scores["conv1"])) == first_removed and scores["conv1"][first_removed] < 1e-5
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        before = net(x)
    reports = []

    def hook(plan):
        if compensate:
            reports.append(crit.compensate(pruner, plan))

    plan, _ = prune_to_target(pruner, {"conv1": scores["conv1"]}, blocks=1, before_apply=hook)
    assert plan == {"conv1": [first_removed]} and net.conv1.out_channels == 7 and net.conv2.in_channels == 7
    with torch.no_grad():
        after = net(x)
    return before, after, reports


def test_duplicated_channel_after_relu_is_removed_losslessly():
    before, after, (report,) = _prune_twin(relu=True, k2=3, scale=1.0, shift=0.0)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    g = report.groups["conv1"]
    assert g.status == "compensated" and g.consumers[0].module == "conv2" and g.consumers[0].mean_r2 == pytest.approx(1.0)
    before, after, _ = _prune_twin(relu=True, k2=3, scale=1.0, shift=0.0, compensate=False)
    assert (after - before).abs().max() > 1e-3  # without compensation the removal is not free


def test_scaled_copy_is_removed_losslessly():
    before, after, (report,) = _prune_twin(relu=False, k2=1, scale=2.0, shift=1.0)  # F_5 = 2·F_2 + 1
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    c = report.groups["conv1"].consumers[0]
    assert c.bias_target == "bn:bn2" and not c.border_approximate  # β folded into BN running mean


def test_compensation_skipped_where_a_bam_gate_consumes_the_channels():
    from ccpcsa.models.attention import BAM, attach_bam
    from ccpcsa.surgery.compensation import compensate, find_consumers

    model = build_model("resnet20", 10)
    attach_bam(model, 32)
    pruner = ChannelPruner(model, 32)
    mods = dict(model.named_modules())
    cons = find_consumers(pruner)
    bam_groups = [g.key for g in pruner.groups if any(isinstance(mods.get(n), BAM) for n in g.members)]
    assert bam_groups and all(cons[k].blockers for k in bam_groups)
    plain = next(g.key for g in pruner.groups if g.key.endswith(".conv1") and g.key not in bam_groups)
    assert [c.module for c in cons[plain].consumers] == [plain.replace("conv1", "conv2")]
    report = compensate(pruner, {bam_groups[0]: [0]}, {bam_groups[0]: [(0, 1)]}, {}, cons)
    assert bam_groups[0] in report.skipped and "BAM" in report.skipped[bam_groups[0]]


def test_l1_oneshot_reports_compensation_skipped(tiny_data):
    from ccpcsa.pruning.oneshot_prune import prune_oneshot

    torch.manual_seed(0)
    r = prune_oneshot(_TwoConv(True, 3), tiny_data, "l1", 0.3, input_size=16, calibration_images=16, round_to=2,
                      min_channels=2, evaluate_splits=False)
    assert r.final.macs <= 0.7 * r.base.macs * 1.0005
    assert r.compensation is not None and not r.compensation.compensated
    assert all("no twin" in why for why in r.compensation.skipped.values())


def test_qsfm_oneshot_with_finetune_mode(tiny_data):
    from ccpcsa.pruning.oneshot_prune import prune_oneshot
    from ccpcsa.training.engine import TrainConfig

    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.01, schedule="constant", max_steps_per_epoch=2, amp=False, augment=False)
    r = prune_oneshot(_TwoConv(True, 3), tiny_data, "qsfm-psnr", 0.3, input_size=16, calibration_images=32, round_to=2,
                      min_channels=2, finetune_epochs=1, train_cfg=cfg)
    assert r.criterion == "qsfm-psnr" and r.finetune_epochs == 1
    assert r.final.macs <= 0.7 * r.base.macs * 1.0005
    assert all(0 <= a <= 100 for a in (r.test_before, r.test_pruned, r.test_final))
    assert r.compensation is not None and r.compensation.compensated
    s = r.summary()
    assert s["channels_removed"] == sum(len(v) for v in r.plan.values()) > 0


@pytest.fixture(scope="module")
def tiny_data():
    from ccpcsa.data import load_data

    return load_data("synthetic?size=16&train=256&test=64", seed=0, progress=False)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy (dynamo=False) exporter is what the pipeline uses
def test_mobilenet_v2_oneshot_qsfm_exports_to_onnx(tiny_data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from ccpcsa.pruning.oneshot_prune import prune_oneshot

    torch.manual_seed(0)
    model = build_model("mobilenet_v2_cifar", 10)
    r = prune_oneshot(model, tiny_data, "qsfm", 0.3, input_size=16, calibration_images=4, evaluate_splits=False)
    assert r.final == count_complexity(r.model, 16)
    assert r.final.macs <= 0.7 * r.base.macs * 1.0005 and r.final.params < r.base.params
    dw = [m for m in r.model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)
    rep = r.compensation
    assert rep is not None and rep.compensated and not rep.skipped
    assert any(g.channelwise for g in rep.groups.values())  # depthwise members carried, compensated downstream
    model = r.model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y = model(x)
    path = tmp_path / "mnv2_qsfm.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(out, y.numpy(), atol=1e-4, rtol=0)
