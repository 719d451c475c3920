"""What makes :func:`ccpcsa.training.engine.fit` fast on a GPU without changing what it computes.

- **No host sync per step.** :class:`StepMonitor` accumulates loss and correct predictions on the device
  and checks the loss for NaN/Inf once every ``interval`` steps (every step on the CPU, where a check
  costs nothing): the window's losses and the running sums are copied to pinned host memory
  asynchronously and read one window later, after waiting on a CUDA event created with
  ``blocking=True`` — the waiting thread sleeps instead of spinning, so several runs sharing one GPU
  (and its host's cores) do not starve each other. A non-finite loss still raises the same
  ``RuntimeError("loss became nan at epoch E, step S; lower train.lr")`` naming the first bad step, at
  most two windows later on a GPU.
- **torch.compile** (``train.compile``: ``auto`` | ``on`` | ``off``): ``auto`` compiles only on CUDA, in a
  single process, for fits of at least :data:`COMPILE_MIN_STEPS` steps (compilation costs tens of seconds
  and has to pay for itself) and never while forward hooks are attached (the pruning loop's statistics
  hooks record Python state that a compiled graph would not replay). ``on`` compiles wherever it can.
  The mode is ``reduce-overhead``, i.e. inductor kernels replayed as CUDA graphs. If compiling or the
  first compiled steps fail, :class:`StepRunner` says so once and continues in eager mode.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.outputs import main_logits

if TYPE_CHECKING:
    from .feature_distill import FeatureTaps
    from .teacher_views import TeacherViews

COMPILE_CHOICES = ("auto", "on", "off")
#: ``auto`` compiles only fits of at least this many optimizer steps (≈ 10 CIFAR-10 epochs at batch 256).
COMPILE_MIN_STEPS = 2000
#: Arguments of ``torch.compile`` (tests swap in ``{"backend": "eager"}`` to exercise the plumbing on a CPU).
COMPILE_KWARGS: dict[str, Any] = {"mode": "reduce-overhead"}
#: Compiled steps guarded by the eager fallback (compilation and CUDA-graph capture happen in the first ones).
GUARDED_STEPS = 3
#: Steps between loss checks / progress updates on CUDA (on the CPU the loss is checked every step).
CUDA_CHECK_EVERY = 10


def check_interval(device: torch.device) -> int:
    """Steps between host-side loss checks: :data:`CUDA_CHECK_EVERY` on CUDA, 1 elsewhere."""
    return CUDA_CHECK_EVERY if device.type == "cuda" else 1


def has_forward_hooks(model: nn.Module) -> bool:
    """True when any submodule of ``model`` (or the global registry) has a forward or forward-pre hook."""
    from torch.nn.modules import module as module_mod

    if getattr(module_mod, "_global_forward_hooks", None) or getattr(module_mod, "_global_forward_pre_hooks", None):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def compile_decision(choice: str, device: torch.device, total_steps: int, distributed: bool, hooks: bool) -> tuple[bool, str]:
    """``(compile?, why)`` for ``train.compile == choice`` (see the module docstring for the rules)."""
    if choice == "off":
        return False, "train.compile is off"
    if hooks:
        return False, "forward hooks are attached (statistics collection)"
    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    if choice == "on":
        return True, "train.compile is on"
    if device.type != "cuda":
        return False, "auto: not a CUDA device"
    if distributed:
        return False, "auto: distributed run"
    if total_steps < COMPILE_MIN_STEPS:
        return False, f"auto: {total_steps} steps < {COMPILE_MIN_STEPS} (compilation would not pay)"
    return True, f"auto: CUDA, {total_steps} steps"


def describe_exception(exc: BaseException) -> str:
    """One line: the exception's type and first message line, plus its root cause's (compiler errors wrap it)."""
    def line(e: BaseException) -> str:
        text = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__

    root = exc
    for _ in range(10):  # bounded: a cause chain can loop
        nxt = getattr(root, "inner_exception", None) or root.__cause__
        if not isinstance(nxt, BaseException) or nxt is root:
            break
        root = nxt
    return line(exc) if root is exc else f"{line(exc)} ← {line(root)}"


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a frozen ``teacher``: weight ``alpha`` of the distillation term, temperature ``T``;
    ``views``: the teacher's logits cached for a pool of augmented views (:mod:`ccpcsa.training.teacher_views`) instead
    of a teacher forward per batch; ``features``: weight β of the stage-output term
    (:mod:`ccpcsa.training.feature_distill`; needs the teacher forward, so no ``views``)."""

    teacher: nn.Module
    alpha: float = 0.7
    temperature: float = 4.0
    views: TeacherViews | None = None
    features: float = 0.0


def batch_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0,
               distill: Distillation | None = None,
               teacher_logits: torch.Tensor | None = None,
               taps: FeatureTaps | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training objective of one batch: ``(loss, logits)`` with ``loss`` the mean cross-entropy (with
    ``label_smoothing``) of ``net(x)`` in float32 against ``y`` — or, with ``distill``, knowledge distillation
    (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015):

        loss = (1 − α) · CE(z_s, y) + α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))

    with z_t the teacher's logits on the same ``x`` (eval mode, no gradient) — ``teacher_logits`` when given (cached
    for these very images, :mod:`ccpcsa.training.teacher_views`), else a forward of ``distill.teacher``; T² keeps the
    soft term's gradient on the scale of the hard one. With ``taps`` (hooks on both nets' stage outputs, entered by
    the fit) the loss adds ``taps.weight · L_feat`` (:mod:`ccpcsa.training.feature_distill`), which needs the teacher's
    forward on this batch (no cached ``teacher_logits``). Models whose training-mode output is a tuple or namedtuple
    train on their main logits (:func:`ccpcsa.models.outputs.main_logits`). The one place the objective lives."""
    logits = main_logits(net(x))  # training-mode forwards may add auxiliary heads' logits (GoogLeNet)
    ce = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    if distill is None or (distill.alpha == 0 and taps is None):
        return ce, logits
    if taps is not None and teacher_logits is not None:
        raise ValueError("feature distillation needs the teacher's forward on the batch, not cached teacher logits")
    if teacher_logits is None:
        with torch.no_grad():
            teacher_logits = main_logits(distill.teacher(x)).float()
    t = distill.temperature
    kl = F.kl_div(F.log_softmax(logits.float() / t, dim=1), F.log_softmax(teacher_logits / t, dim=1), reduction="batchmean",
                  log_target=True)
    loss = (1 - distill.alpha) * ce + distill.alpha * t * t * kl
    return (loss + taps.weight * taps.loss() if taps is not None else loss), logits


class StepRunner:
    """Forward + backward of one training step through ``net``, or through its compiled version when ``use_compile``.

    The first :data:`GUARDED_STEPS` compiled steps are guarded: if one raises, the failure is reported once
    (``self.note``), the gradients are cleared and the step is redone eagerly; eager mode is then kept.
    """

    def __init__(self, net: nn.Module, use_compile: bool, reason: str, label_smoothing: float, autocast: Any,
                 report: Any = None, distill: Distillation | None = None, taps: FeatureTaps | None = None) -> None:
        self.net = net
        self.taps = taps
        self.label_smoothing = label_smoothing
        self.distill = distill
        self.autocast = autocast
        self.report = report or (lambda msg: warnings.warn(msg, RuntimeWarning, stacklevel=3))
        self.calls = 0
        self.compiled: nn.Module | None = None
        self.note = reason
        if use_compile:
            try:
                self.compiled = torch.compile(net, **COMPILE_KWARGS)
            except Exception as exc:  # noqa: BLE001 — any failure to set up compilation means eager
                self._fallback(exc)

    @property
    def is_compiled(self) -> bool:
        """Whether steps currently run through the compiled module."""
        return self.compiled is not None

    def _fallback(self, exc: BaseException) -> None:
        why = describe_exception(exc)
        self.compiled = None
        self.note = f"compile failed, eager: {why}"
        self.report(f"torch.compile failed ({why}); training continues in eager mode (set train.compile=off to skip the attempt)")

    def _run(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
             teacher_logits: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            loss, logits = batch_loss(net, x, y, self.label_smoothing, self.distill, teacher_logits, self.taps)
        loss.backward()
        return loss, logits

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 teacher_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of one batch (gradients must have been cleared); returns ``(loss, logits)``.
        ``teacher_logits``: the batch's cached teacher logits (:func:`batch_loss`)."""
        if self.compiled is None:
            return self._run(self.net, x, y, teacher_logits)
        if hasattr(torch, "compiler") and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            torch.compiler.cudagraph_mark_step_begin()
        if self.calls >= GUARDED_STEPS:
            return self._run(self.compiled, x, y, teacher_logits)
        try:
            out = self._run(self.compiled, x, y, teacher_logits)
        except Exception as exc:  # noqa: BLE001 — redone eagerly; a real error raises again there
            self._fallback(exc)
            for p in self.net.parameters():
                p.grad = None
            return self._run(self.net, x, y, teacher_logits)
        self.calls += 1
        return out


class StepMonitor:
    """Per-epoch training loss / accuracy accumulated on the device, and the deferred NaN/Inf check.

    Call :meth:`observe` with each step's loss before the optimizer step and :meth:`accumulate` after it,
    :meth:`finish` at the end of the epoch (it checks the remaining steps and returns the totals).
    ``interval == 1`` checks immediately (``RuntimeError`` before the update is applied).
    """

    def __init__(self, device: torch.device, interval: int, epoch: int) -> None:
        self.device = device
        self.interval = max(1, int(interval))
        self.epoch = epoch
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0
        self._window: list[tuple[int, torch.Tensor]] = []
        self._pending: list[tuple[Any, int, int, torch.Tensor]] = []  # (event, first step, seen, host values)
        self.latest: tuple[float, float, int] | None = None  # (loss sum, correct, seen) of the last checked window

    def _raise(self, value: float, step: int) -> None:
        raise RuntimeError(f"loss became {value} at epoch {self.epoch + 1}, step {step}; lower train.lr")

    def observe(self, step: int, loss: torch.Tensor) -> None:
        """Record step ``step``'s loss; checks it now (interval 1) or with its window."""
        if self.interval == 1:
            if not bool(torch.isfinite(loss)):
                self._raise(float(loss), step)
            return
        self._window.append((step, loss.detach()))
        if len(self._window) >= self.interval:
            self._rotate()
            while len(self._pending) > 1:  # keep one window in flight: the device never waits for the host
                self._check(*self._pending.pop(0))

    def accumulate(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Add one step's summed loss and correct predictions (device ops only, no sync)."""
        n = int(y.shape[0])
        self.loss_sum += loss.detach().double() * n
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += n

    def _rotate(self) -> None:
        """Queue the window's losses and the running sums for an asynchronous copy to the host."""
        if not self._window:
            return
        first = self._window[0][0]
        vals = torch.cat([torch.stack([v for _, v in self._window]).double(), self.loss_sum.view(1),
                          self.correct.double().view(1)])
        cuda = self.device.type == "cuda"
        host = torch.empty(vals.shape, dtype=vals.dtype, pin_memory=cuda)
        host.copy_(vals, non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event(blocking=True)
            event.record()
        self._pending.append((event, first, self.seen, host))
        self._window = []

    def _check(self, event: Any, first: int, seen: int, host: torch.Tensor) -> None:
        if event is not None:
            event.synchronize()  # blocking-sync event: sleeps, does not spin
        values = host.tolist()
        losses = values[:-2]
        for j, v in enumerate(losses):
            if v != v or v in (float("inf"), float("-inf")):
                self._raise(v, first + j)
        self.latest = (values[-2], values[-1], seen)

    def progress(self) -> tuple[float, float, int] | None:
        """``(loss sum, correct, images)`` as of the last checked window (no sync); on the CPU, current values."""
        if self.interval == 1:
            return float(self.loss_sum), float(self.correct), self.seen
        return self.latest

    def finish(self) -> tuple[float, float, float]:
        """Check every remaining step; return ``(loss sum, correct, images)`` of the epoch (one sync)."""
        self._rotate()
        while self._pending:
            self._check(*self._pending.pop(0))
        if self.device.type == "cuda":  # wait for the last steps without spinning, then read the sums
            event = torch.cuda.Event(blocking=True)
            event.record()
            event.synchronize()
        return float(self.loss_sum), float(self.correct), float(self.seen)
