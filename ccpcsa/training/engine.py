"""Training engine: fit / fine-tune / evaluate, checkpoints, resume, DDP.

SGD with momentum (Nesterov by default) and weight decay; a per-step learning-rate schedule —
``cosine`` (linear warm-up then half-cosine to 0) or ``onecycle`` (linear ramp from lr/25 to lr over
``pct_start`` of the steps, then cosine down to lr/1e4; Smith & Topin 2019) or ``constant``;
optional label smoothing; channels_last; AMP (bfloat16 autocast) on CUDA and on CPUs with native bf16
(:func:`ccpcsa.placement.amp_dtype`); seeded.

Placement goes through :mod:`ccpcsa.placement`: a model handed over on another device or dtype is moved
to the run's device (float32) by ``fit``, ``evaluate`` and ``predict_logits``. On CUDA the data set is held
on the device, augmented there, the loss is checked without a host sync per step and long fits are
compiled (``train.compile``; see :mod:`ccpcsa.training.speed`); the CPU path computes exactly what it did.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import placement
from ..data import ArrayDataset, BatchLoader, DataSplits
from ..data.views import ViewPool
from ..errors import UserError, first_line
from ..io.checkpoint import ModelSpec, read_checkpoint_dict, save_checkpoint
from ..models.outputs import main_logits
from . import distributed as ddp
from .feature_distill import FeatureTaps
from .speed import (
    COMPILE_CHOICES,
    Distillation,
    StepMonitor,
    StepRunner,
    check_interval,
    compile_decision,
    has_forward_hooks,
)

SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass
class TrainConfig:
    """Hyper-parameters of one fit. ``max_steps_per_epoch`` (None = full epoch) bounds smoke runs.
    ``compile``: ``auto`` (compile long single-process CUDA fits), ``on`` or ``off`` (see :mod:`ccpcsa.training.speed`)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_epochs: float = 1.0
    pct_start: float = 0.25
    label_smoothing: float = 0.0
    augment: bool = True
    channels_last: bool = False
    amp: bool = True
    seed: int = 0
    eval_batch_size: int = 500
    max_steps_per_epoch: int | None = None
    compile: str = "auto"

    def validate(self) -> None:
        """Raise :class:`UserError` for values that cannot train."""
        if self.epochs < 0:
            raise UserError(f"train.epochs must be ≥ 0, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"train.batch_size must be ≥ 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"train.lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay < math.inf:
            raise UserError(f"train.weight_decay must be a finite number ≥ 0, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs < math.inf:
            raise UserError(f"train.warmup_epochs must be ≥ 0, got {self.warmup_epochs}")
        if not 0 < self.pct_start < 1:
            raise UserError(f"train.pct_start must be in (0, 1), got {self.pct_start}")
        if self.eval_batch_size < 1:
            raise UserError(f"train.eval_batch_size must be ≥ 1, got {self.eval_batch_size}")
        if self.seed < 0:
            raise UserError(f"train.seed must be ≥ 0, got {self.seed}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"train.schedule '{self.schedule}' unknown; use one of {', '.join(SCHEDULES)}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise UserError(f"train.max_steps_per_epoch must be ≥ 1 or null, got {self.max_steps_per_epoch}")
        if self.compile not in COMPILE_CHOICES:
            raise UserError(f"train.compile '{self.compile}' unknown; use one of {', '.join(COMPILE_CHOICES)}")


def check_device(device: str, key: str = "device") -> None:
    """UserError unless ``device`` is ``auto`` or a torch device string usable on this machine."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"{key} '{device}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is '{device}' but no CUDA GPU is visible; use auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"{key} is '{device}' but only {torch.cuda.device_count()} CUDA device(s) are visible")


@dataclass
class FitResult:
    """Per-epoch history and the final metrics of a fit; ``speed`` says how it ran (device, compiled or not
    and why, resident data, steps between host checks)."""

    history: list[dict[str, float]] = field(default_factory=list)
    val_accuracy: float = float("nan")
    seconds: float = 0.0
    speed: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, total: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` of ``total`` (see module docstring)."""
    if cfg.schedule == "constant" or total <= 0:
        return 1.0
    t = min(step, total) / total
    if cfg.schedule == "onecycle":
        p = max(cfg.pct_start, 1e-6)
        if t < p:
            return 1 / 25 + (1 - 1 / 25) * t / p
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t - p) / (1 - p)))
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


@dataclass
class TrainStream:
    """Several fits run as one pass over the data (the pruning loop's statistics epochs, fine-tunes and final
    fine-tune). ``step`` counts the batches the stream's fits have consumed: the next fit continues the data where the
    last one stopped — batch ``step`` of the stream is batch ``step mod B`` of data epoch ``⌊step / B⌋`` (``B``
    batches per epoch, each data epoch its own seeded permutation and augmentation draws) — so fits of partial epochs
    never repeat the same images, order and augmentations."""

    step: int = 0


def stream_batches(loader: BatchLoader, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of ``loader`` from its global batch index ``start`` on (:class:`TrainStream`): data epoch
    ``⌊start / len(loader)⌋`` from batch ``start mod len(loader)``, then the following epochs. Skipped batches of the
    first epoch are drawn and dropped, so the augmentation draws are those of an uninterrupted run."""
    n = len(loader)
    epoch, skip = divmod(start, n)
    while True:
        loader.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """The per-step autocast context for ``dtype`` (decided once per fit by :func:`ccpcsa.placement.amp_dtype`)."""
    if dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(device.type, dtype=dtype)


#: On CUDA, evaluation batches hold at least this many pixels (4096 images of 32×32), never fewer than asked.
GPU_EVAL_PIXELS = 4096 * 32 * 32


def eval_batch_size(batch_size: int, device: torch.device, image_hw: int) -> int:
    """``batch_size`` on the CPU; on CUDA at least ``GPU_EVAL_PIXELS / image_hw`` images (large batches keep the GPU busy;
    eval-mode results do not depend on the batch size)."""
    if device.type != "cuda":
        return batch_size
    return max(batch_size, GPU_EVAL_PIXELS // max(1, image_hw))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Any) -> None:
    """Re-estimate every BatchNorm's running mean/variance on ``batches()`` (train-mode forward, no gradients,
    no labels): ``μ = mean of batch means``, ``σ² = mean of batch variances`` (``momentum=None``: cumulative
    average). Weights are untouched. Leaves the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x, _ in batches():
            model(placement.inputs_for(model, x))
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.eval()


def _run_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The device an entry point runs on: ``device`` (the model is moved there), else where the model is."""
    placement.place(model, device)
    return placement.module_device(model)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, mean: Any, std: Any, batch_size: int = 500,
                   device: torch.device | str | None = None, channels_last: bool = False) -> np.ndarray:
    """Float32 logits (N, classes) of ``model`` in eval mode on uint8 NHWC ``images``, as a host array.

    ``device``: where to run (the model is moved there, float32); None = where the model already is."""
    dev = _run_device(model, device)
    model.eval()
    ds = ArrayDataset(images, np.zeros(len(images), dtype=np.int64))
    bs = eval_batch_size(batch_size, dev, int(images.shape[1] * images.shape[2]) if images.ndim == 4 else 1)
    out = [main_logits(model(x)).float() for x, _ in BatchLoader(ds, bs, mean, std, device=dev, channels_last=channels_last)]
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ArrayDataset, mean: Any, std: Any, batch_size: int = 500,
             device: torch.device | str | None = None, channels_last: bool = False) -> tuple[float, float]:
    """(top-1 accuracy in percent, mean cross-entropy) of ``model`` on ``dataset`` in eval mode.

    ``device``: where to run (the model is moved there, float32); None = where the model already is.
    On CUDA the batches are large (:func:`eval_batch_size`) and the sums stay on the device until the end."""
    if len(dataset) == 0:
        return float("nan"), float("nan")
    dev = _run_device(model, device)
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    bs = eval_batch_size(batch_size, dev, int(dataset.images.shape[1] * dataset.images.shape[2]))
    for x, y in BatchLoader(dataset, bs, mean, std, device=dev, channels_last=channels_last):
        logits = main_logits(model(x)).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    n = len(dataset)
    return 100.0 * float(correct) / n, float(loss_sum) / n


def _check_resume(raw: dict[str, Any], spec: ModelSpec | None, checkpoint: str | os.PathLike[str]) -> None:
    """UserError when the checkpoint to resume from was written for another model or class count than ``spec``."""
    if spec is None:
        return
    m = raw.get("model") or {}
    if m.get("name") != spec.name or m.get("num_classes") != spec.num_classes:
        raise UserError(
            f"cannot resume from {checkpoint}: it holds '{m.get('name')}' with {m.get('num_classes')} classes, this run "
            f"trains '{spec.name}' with {spec.num_classes}; delete it, drop --resume or write to another checkpoint path"
        )


def fit(model: nn.Module, data: DataSplits, cfg: TrainConfig, *, device: torch.device | str | None = None,
        checkpoint: str | os.PathLike[str] | None = None, spec: ModelSpec | None = None, resume: bool = False,
        progress: bool = True, desc: str = "train", dist_info: ddp.DistInfo | None = None,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None, distill: Distillation | None = None,
        stream: TrainStream | None = None) -> FitResult:
    """Train ``model`` in place on ``data.train`` for ``cfg.epochs`` epochs; evaluate on ``data.val`` each epoch.

    With ``checkpoint`` (and ``spec``), the model plus optimizer/schedule state is written atomically
    after every epoch (rank 0 only); with ``resume=True`` training continues from that file's epoch.
    Under torchrun the model is wrapped in DDP and each rank trains on its own shard.
    ``device``: where to train (the model is moved there, float32); None = where the model already is.
    ``FitResult.speed`` records how the fit ran (compiled or not and why, resident data, check interval).
    ``distill``: knowledge distillation from a frozen teacher (:func:`ccpcsa.training.speed.batch_loss`); the teacher is
    placed on the training device in eval mode; with ``distill.views`` its logits come from the pool of cached views
    (built at the first fit that needs it, :mod:`ccpcsa.training.teacher_views`). ``stream``: this fit is part of a longer run (:class:`TrainStream`):
    its data continue where the stream's last fit stopped, and ``stream.step`` advances by the steps taken.
    """
    cfg.validate()
    device = _run_device(model, device)
    info = dist_info or ddp.DistInfo()
    seed_everything(cfg.seed)
    _prepare(model, device, cfg.channels_last)
    opt = _optimizer(model, cfg, device)
    amp, _ = placement.amp_dtype(device, cfg.amp)  # once per fit, not per step
    if distill is not None:
        _place_teacher(distill.teacher, device, cfg.channels_last)
    pool = distill.views.pool(distill.teacher, data.train, data.mean, data.std, device, augment=cfg.augment,
                              channels_last=cfg.channels_last, autocast=lambda: _autocast(device, amp),
                              progress=progress and info.is_main) \
        if distill is not None and distill.views is not None and distill.alpha > 0 else None
    loader, steps_per_epoch = _train_loader(data, cfg, info, device, pool)
    total = steps_per_epoch * cfg.epochs
    result = FitResult()
    start_epoch = _resume(model, opt, cfg, checkpoint, spec, result) if resume and checkpoint is not None else 0
    net = _wrapped(model, device) if info.enabled else model
    taps = FeatureTaps(model, distill.teacher, data.input_size, distill.features) \
        if distill is not None and distill.features > 0 else None
    with taps if taps is not None else contextlib.nullcontext():  # the hooks live for this fit only
        if taps is not None and info.is_main:
            tqdm.write(f"{desc}: {taps.describe()}")
        use_compile, why = compile_decision(cfg.compile, device, total - start_epoch * steps_per_epoch, info.enabled,
                                            has_forward_hooks(model))
        runner = StepRunner(net, use_compile, why, cfg.label_smoothing, lambda: _autocast(device, amp),
                            report=lambda msg: tqdm.write(f"{desc}: {msg}") if info.is_main else None, distill=distill,
                            taps=taps)
        interval = check_interval(device)
        result.speed = {"device": str(device), "amp": placement.amp_label(device, cfg.amp), "compile": cfg.compile,
                        "compiled": runner.is_compiled, "compile_note": runner.note,
                        "resident_data": loader.resident, "check_every": interval,
                        "fused_optimizer": bool(opt.param_groups[0].get("fused")),
                        "teacher_views": pool.k if pool is not None else None,
                        "feature_distill": taps.record() if taps is not None else None}
        t0 = time.perf_counter()
        step = start_epoch * steps_per_epoch
        batches = stream_batches(loader, stream.step) if stream is not None else None
        for epoch in range(start_epoch, cfg.epochs):
            net.train()
            if batches is None:
                loader.set_epoch(epoch)
            te = time.perf_counter()
            monitor = StepMonitor(device, interval, epoch)
            bar = tqdm(total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{cfg.epochs}",
                       disable=not (progress and info.is_main), leave=False, dynamic_ncols=True)
            epoch_batches = itertools.islice(batches, steps_per_epoch) if batches is not None else loader
            for i, batch in enumerate(epoch_batches):
                if i >= steps_per_epoch:
                    break
                _step(runner, opt, monitor, i, batch, cfg.lr * lr_factor(step, total, cfg, steps_per_epoch))
                step += 1
                if stream is not None:
                    stream.step += 1
                bar.update(1)
                if not bar.disable and (i + 1) % max(interval, POSTFIX_EVERY) == 0:
                    _postfix(bar, monitor.progress(), info.world_size, te)
            s, c, n = monitor.finish()
            train_seconds = time.perf_counter() - te
            bar.close()
            ddp.sync_buffers(model)
            s, c, n = ddp.all_reduce_sum([s, c, n], device)
            val_acc, val_loss = evaluate(model, data.val, data.mean, data.std, cfg.eval_batch_size, device,
                                         cfg.channels_last)
            row = {"epoch": epoch + 1, "train_loss": s / n, "train_acc": 100 * c / n, "val_acc": val_acc,
                   "val_loss": val_loss, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - te,
                   "train_seconds": train_seconds, "images_per_s": n / train_seconds}
            result.history.append(row)
            result.speed.update(compiled=runner.is_compiled, compile_note=runner.note)
            if info.is_main:
                _epoch_done(row, desc, cfg, model, data, opt, result, checkpoint, spec)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
    result.val_accuracy = result.history[-1]["val_acc"] if result.history else evaluate(
        model, data.val, data.mean, data.std, cfg.eval_batch_size, device)[0]
    result.seconds = time.perf_counter() - t0
    model.eval()
    return result



def _epoch_done(row: dict[str, Any], desc: str, cfg: TrainConfig, model: nn.Module, data: DataSplits,
                opt: torch.optim.Optimizer, result: FitResult, checkpoint: str | os.PathLike[str] | None,
                spec: ModelSpec | None) -> None:
    """On the main rank after an epoch: its summary line (even without a progress bar) and, with ``checkpoint`` and
    ``spec``, the model with the optimizer state and history written atomically (what ``resume`` continues from)."""
    tqdm.write(f"{desc} epoch {row['epoch']}/{cfg.epochs}: loss {row['train_loss']:.3f} train {row['train_acc']:.2f}% "
               f"val {row['val_acc']:.2f}% ({row['seconds']:.1f}s, {row['images_per_s']:.0f} img/s)")
    if checkpoint is not None and spec is not None:
        save_checkpoint(checkpoint, model, spec, data.classes, data.mean, data.std, meta={"val_accuracy": row["val_acc"]},
                        train_state={"epoch": row["epoch"] - 1, "epochs": cfg.epochs, "optimizer": opt.state_dict(),
                                     "history": result.history})


def _train_loader(data: DataSplits, cfg: TrainConfig, info: ddp.DistInfo, device: torch.device,
                  views: ViewPool | None = None) -> tuple[BatchLoader, int]:
    """This rank's shuffled, augmented train batches (full batches only; with ``views``, pooled views and their cached
    teacher logits) and the steps an epoch takes (``cfg.max_steps_per_epoch`` at most); a train split smaller than one
    batch is one :class:`UserError` line."""
    loader = BatchLoader(data.train, cfg.batch_size, data.mean, data.std, shuffle=True, augment=cfg.augment, seed=cfg.seed,
                         drop_last=True, rank=info.rank, world_size=info.world_size, device=device, channels_last=cfg.channels_last,
                         views=views)
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    if steps == 0:
        raise UserError(f"train split has {len(data.train)} images, fewer than one batch of {cfg.batch_size}; lower train.batch_size")
    return loader, steps


def _prepare(model: nn.Module, device: torch.device, channels_last: bool) -> None:
    """``model`` in channels_last when asked; on CUDA, cuDNN's autotuner on (fixed shapes: the fastest kernels are
    picked once)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _wrapped(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (under torchrun), on this rank's GPU where it trains on one."""
    index = device.index if device.index is not None else torch.cuda.current_device() if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=[index] if device.type == "cuda" else None)


def _step(runner: StepRunner, opt: torch.optim.Optimizer, monitor: StepMonitor, i: int, batch: tuple[torch.Tensor, ...],
          lr: float) -> None:
    """One optimizer step at learning rate ``lr`` on ``batch`` (``(x, y)`` or ``(x, y, teacher_logits)``): forward +
    backward (``runner``), the monitor's finiteness check before the update is applied (on the CPU it raises there),
    the update, the running sums."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss, logits = runner(*batch)
    monitor.observe(i, loss)
    opt.step()
    monitor.accumulate(loss, logits, batch[1])


def _resume(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, checkpoint: str | os.PathLike[str],
            spec: ModelSpec | None, result: FitResult) -> int:
    """The epoch to start from when ``checkpoint`` holds a fit of the same length: the model, the optimizer state
    (keeping this device's fused/foreach implementation) and the history restored from it; 0 when the file is absent
    or from another schedule. A file that does not match the model or optimizer is one :class:`UserError` line."""
    if not os.path.exists(checkpoint):
        return 0
    raw = read_checkpoint_dict(checkpoint)
    _check_resume(raw, spec, checkpoint)
    ts = raw.get("train_state") or {}
    if ts.get("epoch") is None or ts.get("epochs") != cfg.epochs:
        return 0
    try:
        model.load_state_dict(raw["state_dict"])
        flags = [{k: g.get(k) for k in ("fused", "foreach")} for g in opt.param_groups]
        opt.load_state_dict(ts["optimizer"])
        for g, f in zip(opt.param_groups, flags, strict=True):  # keep this device's implementation
            g.update(f)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot resume from {checkpoint}: it does not match this model/optimizer ({first_line(exc)}); "
                        "delete it or write to another checkpoint path") from exc
    result.history = list(ts.get("history", []))
    return int(ts["epoch"]) + 1


def _place_teacher(teacher: nn.Module, device: torch.device, channels_last: bool) -> None:
    """A distillation teacher on the training device, in eval mode, frozen — channels_last when the batches are (a
    teacher in the same layout skips a conversion per conv)."""
    placement.place(teacher, device).eval()
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)

#: Progress-bar postfix (loss, accuracy, img/s) every this many steps at most (on CUDA: every check interval).
POSTFIX_EVERY = 10


def _postfix(bar: Any, progress: tuple[float, float, int] | None, world_size: int, since: float) -> None:
    """Show the running loss / accuracy / throughput known without a host sync (nothing before the first check)."""
    if progress is None or progress[2] == 0:
        return
    s, c, n = progress
    bar.set_postfix(loss=f"{s / n:.3f}", acc=f"{100 * c / n:.1f}", ips=f"{n * world_size / (time.perf_counter() - since):.0f}")


def _optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, decoupled no-decay group for biases/BN); the fused kernel on CUDA when available."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov and cfg.momentum > 0}
    if device.type == "cuda":
        try:
            return torch.optim.SGD(groups, fused=True, **kwargs)
        except (TypeError, RuntimeError, ValueError):
            pass
    return torch.optim.SGD(groups, **kwargs)
