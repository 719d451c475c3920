"""Feature distillation at the stage outputs (``prune.recovery.distill.features``, issue #38 item 1): the stage ends of
a real resnet20, the relative squared error the loss adds, the stages a narrowed student leaves out, the one-line
errors, and a fit whose stage outputs move towards the teacher's only when the term is on."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ccpcsa.errors import UserError
from ccpcsa.models import build_model
from ccpcsa.models.depth import drop_blocks
from ccpcsa.training.feature_distill import FeatureTaps, stage_ends
from ccpcsa.training.speed import Distillation, batch_loss

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", 10).eval()


def test_the_stage_ends_of_resnet20_are_the_last_block_of_each_stage():
    assert stage_ends(_resnet20(), 32) == ["layer1.2", "layer2.2", "layer3.2"]


def test_the_term_is_the_relative_squared_error_at_every_stage_output():
    """Identical nets: the loss is the logit-distillation loss alone. A student with ``layer1.1`` removed: the loss adds
    β · mean over the three stages of ‖f_s − f_t‖² / ‖f_t‖², computed here by hand from the stage outputs.
    """
    teacher = _resnet20()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    kd = Distillation(teacher, alpha=0.7, temperature=4.0, features=2.0)
    same = copy.deepcopy(teacher)
    with FeatureTaps(same, teacher, 32, kd.features) as taps:
        with_taps, _ = batch_loss(same, x, y, distill=kd, taps=taps)
    plain, _ = batch_loss(same, x, y, distill=kd)
    assert with_taps.item() == pytest.approx(plain.item(), abs=1e-6)

    student = copy.deepcopy(teacher)
    drop_blocks(student, ["layer1.1"])
    with FeatureTaps(student, teacher, 32, kd.features) as taps:
        assert taps.names == ["layer1.2", "layer2.2", "layer3.2"] and not taps.left_out
        loss, _ = batch_loss(student, x, y, distill=kd, taps=taps)
    plain, _ = batch_loss(student, x, y, distill=kd)
    outs: dict[str, list[torch.Tensor]] = {"s": [], "t": []}
    for key, net in (("s", student), ("t", teacher)):
        hooks = [getattr(net, layer)[2].register_forward_hook(lambda _m, _a, o, k=key: outs[k].append(o.detach()))
                 for layer in ("layer1", "layer2", "layer3")]
        with torch.no_grad():
            net(x)
        for h in hooks:
            h.remove()
    by_hand = sum(((s - t) ** 2).sum() / (t ** 2).sum() for s, t in zip(outs["s"], outs["t"], strict=True)) / 3
    assert by_hand.item() > 0.01  # a block removed moves every later stage output
    assert (loss - plain).item() == pytest.approx(2.0 * by_hand.item(), rel=1e-4)


def test_the_term_has_a_gradient_and_each_step_needs_its_own_forwards():
    teacher = _resnet20()
    student = copy.deepcopy(teacher)
    drop_blocks(student, ["layer2.1"])
    student.train()
    x = torch.randn(4, 3, 32, 32)
    with FeatureTaps(student, teacher, 32, 1.0) as taps:
        student(x)
        with torch.no_grad():
            teacher(x)
        taps.loss().backward()
        assert student.layer2[0].conv1.weight.grad is not None and student.layer2[0].conv1.weight.grad.abs().sum() > 0
        assert student.layer3[0].conv1.weight.grad.abs().sum() > 0
        with pytest.raises(RuntimeError, match="layer1.2 was not computed in this step"):
            taps.loss()  # read once: stale outputs of the last step are never used again
    # the fit's hooks are gone
    assert not any(m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))


def test_a_narrowed_stage_is_left_out_and_none_left_is_one_line():
    """A student whose stage-2 residual stream lost channels (``scope: all``) keeps the stages of the teacher's shape;
    when every stage is narrowed, the error names the key and both ways out."""
    from ccpcsa.surgery.prune import ChannelPruner

    teacher = _resnet20()
    student = copy.deepcopy(teacher)
    ChannelPruner(student, 32, round_to=4, min_channels=4).apply({"layer2.0.shortcut.0": list(range(16))})
    with FeatureTaps(student, teacher, 32, 1.0) as taps:
        assert taps.names == ["layer1.2", "layer3.2"]
        assert list(taps.left_out) == ["layer2.2"]
        assert "(1, 16, 16, 16) vs teacher (1, 32, 16, 16)" in taps.left_out["layer2.2"]
        assert "left out: layer2.2" in taps.describe()
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    plain(torch.randn(1, 3, 32, 32))
    with pytest.raises(UserError) as err:
        FeatureTaps(plain, copy.deepcopy(plain), 32, 1.0)
    assert "prune.widths.scope=internal" in str(err.value) and "features=0" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("sets, says", [
    (["prune.recovery.distill.features=-1"], "prune.recovery.distill.features must be a number ≥ 0"),
    (["prune.recovery.distill.features=0.5", "prune.recovery.distill.views=2"],
     "set prune.recovery.distill.views=0 or prune.recovery.distill.features=0"),
])
def test_bad_settings_are_one_line(sets, says):
    from pipeline.config import load_config

    with pytest.raises(UserError) as err:
        load_config(SMOKE, ["prune.recovery.distill.enabled=true", *sets])
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_fit_pulls_the_stage_outputs_towards_the_teachers_only_with_the_term(synthetic_data):
    """The same student (a resnet20 with ``layer1.1`` removed), the same seed and steps, logit distillation in both:
    with β = 5 the relative feature error to the teacher on held-out images ends at least 10 % under the one with
    β = 0."""
    from ccpcsa.training.engine import TrainConfig, fit

    teacher = _resnet20()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (synthetic_data.mean, synthetic_data.std))
    x = (torch.as_tensor(synthetic_data.val.images[:64]).permute(0, 3, 1, 2).float().div(255) - mean) / std
    with torch.no_grad():  # BatchNorm statistics of these images, so eval-mode features are the teacher's real ones
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        teacher.train()(x)
    teacher.eval()
    start = copy.deepcopy(teacher)  # before the first fit freezes the teacher's parameters
    drop_blocks(start, ["layer1.1"])
    errors = {}
    for beta in (0.0, 5.0):
        student = copy.deepcopy(start)
        kd = Distillation(teacher, alpha=0.7, temperature=4.0, features=beta)
        fit(student, synthetic_data, TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=20, lr=0.01, amp=False),
            progress=False, distill=kd)
        with FeatureTaps(student, teacher, synthetic_data.input_size, 1.0) as taps, torch.no_grad():
            student.eval()(x)
            teacher(x)
            errors[beta] = taps.loss().item()
    assert errors[5.0] < 0.9 * errors[0.0]


def test_the_loop_records_the_matched_stages_and_the_report_says_them(synthetic_data):
    """A resnet20 with ``layer1.1`` removed whole and channels cut inside the blocks: the final fine-tune matches all
    three stage outputs, the pruning summary records them and report.md says so in one line."""
    from ccpcsa.criteria import get_criterion
    from ccpcsa.pruning.loop import PruneConfig, run_pruning
    from ccpcsa.training.engine import TrainConfig
    from pipeline.records import ReportView
    from pipeline.report import pruning_lines

    torch.manual_seed(0)
    model = build_model("resnet20", synthetic_data.num_classes)
    cfg = PruneConfig.of(criterion__name="l1", target__flops_reduction=0.25, steps__flops_reduction=0.25,
                         steps__max_iterations=1, steps__tolerance=100.0, widths__round_to=8, widths__scope="internal",
                         depth__drop_blocks=["layer1.1"], recovery__finetune_epochs=1,
                         recovery__final_finetune_epochs=1,
                         recovery__distill__enabled=True, recovery__distill__features=1.0)
    res = run_pruning(model, synthetic_data, get_criterion("l1"), cfg,
                      TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=3, lr=0.02, amp=False),
                      input_size=synthetic_data.input_size, progress=False)
    recorded = res.summary()["feature_distill"]
    assert recorded == {"weight": 1.0, "stages": ["layer1.2", "layer2.2", "layer3.2"], "left_out": {}}
    pruning = {"alignment": 8, "alignment_reason": "x", "allocation": "global", "feature_distill": recorded}
    lines = pruning_lines(ReportView.from_dict({"pruning": pruning}))
    assert ("Feature distillation at the stage outputs (β = 1, `prune.recovery.distill.features`): `layer1.2`, "
            "`layer2.2`, `layer3.2`.") in lines
