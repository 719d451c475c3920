"""``python -m pipeline probe-pack``: the probe pack of a config's trained model, to measure on the target device.

    python -m pipeline probe-pack --config configs/default.yaml --out probe/ [--set key=value ...]
    # copy probe/ to the device, then there:  python target_probe.py --runtime openvino-cpu --threads 4
    # back here:  python -m pipeline run --config configs/default.yaml --set target.profile=target.json

The model is the config's baseline (``baseline.checkpoint``, or the run directory's ``baseline.pt`` with ``--run-dir``)
as it will be deployed (BAM detached); the layer table is written at ``prune.target.latency_batch``, the model at
``export.latency_batches``.
"""

from __future__ import annotations

from pathlib import Path

from ccpcsa.errors import UserError
from ccpcsa.io.checkpoint import load_checkpoint

from .artifacts import BASELINE_CKPT
from .config import PipelineConfig


def write_pack(cfg: PipelineConfig, out: Path, run_dir: Path | None) -> Path:
    """Write the probe pack of ``cfg``'s baseline into ``out``; returns its ``pack.json``. One-line UserError when the
    config names no model file to probe."""
    from export.target_profile import write_probe_pack

    src = run_dir / BASELINE_CKPT if run_dir is not None and (run_dir / BASELINE_CKPT).is_file() else None
    if src is None and cfg.baseline.checkpoint:
        src = Path(cfg.baseline.checkpoint).expanduser()
    if src is None or not src.is_file():
        raise UserError("probe-pack needs the trained model: set baseline.checkpoint to an existing checkpoint, or give "
                        "--run-dir of a run whose baseline stage has finished")
    ck = load_checkpoint(src)
    size = cfg.model.input_size or ck.spec.input_size
    pack = write_probe_pack(ck.model, size, out, name=f"{cfg.model.name} ({src.name})", batches=list(cfg.export.latency_batches),
                            layer_batch=cfg.prune.target.latency_batch)
    print(f"wrote {pack.parent} ({len(list(pack.parent.rglob('*.onnx')))} ONNX graphs); on the device: "
          f"python {pack.parent / 'target_probe.py'} --runtime <onnxruntime-cpu|openvino-cpu|…> --threads N", flush=True)
    return pack
