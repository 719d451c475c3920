"""The plain sections of the pipeline configuration (``run``, ``model``, ``data``, ``baseline``, ``attention``,
``export``, ``checks``, ``report``); :mod:`pipeline.config` assembles them with ``train``, ``prune`` and ``target``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunConfig:
    """Run identity and placement."""

    name: str = "default"
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch default


@dataclass
class ModelConfig:
    """``name``: zoo name or ``package.module:factory``; ``kwargs`` go to the factory."""

    name: str = "resnet20"
    num_classes: int = 10
    input_size: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """``spec``: dataset spec string; ``fallback`` is used (and said) when ``spec``'s path is absent."""

    spec: str = "imagefolder:../shared/data/cifar10-jpg.tar.gz"
    fallback: str | None = "synthetic"
    val_size: int | None = None


@dataclass
class BaselineConfig:
    """``checkpoint``: start from these trained weights instead of training — the project's checkpoint, a bare
    ``state_dict`` (``.pt``/``.pth``) or a ``.safetensors`` file (bare weights: ``model.*`` names the
    architecture). ``train_if_missing``: when ``checkpoint`` does not exist, train a baseline (and say so)
    instead of refusing the run."""

    checkpoint: str | None = None
    train_if_missing: bool = False


@dataclass
class AttentionConfig:
    """BAM insertion and retraining (CCPCSA step 2)."""

    enabled: bool = True
    reduction: int = 16
    dilation: int = 4
    epochs: int = 2
    lr: float = 0.05
    max_steps_per_epoch: int | None = None  # None: train.max_steps_per_epoch


@dataclass
class ExportConfig:
    """ONNX / INT8 / TensorRT settings and latency measurement."""

    opset: int = 17
    simplify: bool = True
    int8: bool = True
    int8_cpu: bool = True
    # 7-bit weights in the onnxruntime-CPU flavour: auto = on x86 CPUs without VNNI (export.quantize.int8_saturates)
    int8_reduce_range: bool | str = "auto"
    calibration_images: int = 512
    engine: bool = True
    engine_precisions: list[str] = field(default_factory=lambda: ["fp16", "int8"])
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 64
    workspace_mb: int = 1024
    latency_batches: list[int] = field(default_factory=lambda: [1, 32])
    latency_iters: int = 30
    latency_warmup: int = 5
    speedup_rounds: int = 21  # interleaved rounds of the pruned-vs-unpruned speedup (export.latency.paired_speedup)
    threads: int = 2


@dataclass
class ChecksConfig:
    """Gates. Accuracies in percent points. ``eval_images``: the seeded test sample the intermediate gates (prune,
    ONNX, simplify, INT8, engine) measure on (None = all); ``final_eval_images``: the test images the ``validate``
    stage evaluates every final format on — None (default) = the whole test split, the report's headline numbers."""

    max_accuracy_drop: float = 1.5
    max_abs_diff: float = 1e-3  # per unit of logit scale: max |Δlogit| ≤ max_abs_diff · max(1, max |logit|)
    min_agreement_fp32: float = 99.9
    min_agreement_lowp: float = 99.0
    min_agreement_int8: float = 99.0
    latency_budget_ms: float | None = None
    latency_budget_batch: int = 1
    require_speedup: bool = True
    min_speedup_efficiency: float | None = 0.85
    require_flops_target: bool = True
    eval_images: int | None = None
    final_eval_images: int | None = None


@dataclass
class ReportConfig:
    """``frontier``: a frontier results file (``python -m bench.frontier``) of the same model, or a list of them (one per
    kind of CPU). The pipeline only records it: ``python -m bench.frontier place`` (``make deploy`` runs it after the
    pipeline) reads it from the run's config and draws this run's point over that accuracy-vs-speedup frontier — of a
    list, the first whose widths are in the run's channel block (its CPU's, ``prune.widths.round_to: auto``), else
    the first, said to be from another CPU — into ``frontier.md`` and ``plots/frontier.png``, which the report shows.
    Null: no frontier."""

    frontier: list[str] | str | None = None
