"""GPU rows of ``validate``: the pruned model timed on CUDA, added only when the run's device is CUDA.

- ``pytorch_pruned_cuda``: PyTorch eager on CUDA (:class:`export.runtime.TorchRunner`);
- ``pytorch_pruned_cuda_graph``: the same forward pass replayed from a CUDA graph
  (:class:`export.runtime.TorchCudaGraphRunner`), one graph per batch size;
- ``onnx_cuda``: the FP32 ONNX model on onnxruntime's CUDA execution provider, when onnxruntime has it
  (``onnxruntime.get_available_providers()``); otherwise the row says ``skipped`` and why.

Every row is timed by the shared harness (``export.latency``: each run followed by ``torch.cuda.synchronize``,
batches ``export.latency_batches``) including the host↔device copies of the input and logits, like every
other runner. Its parity (max |Δlogit|, top-1 agreement) is checked against PyTorch on the CPU on up to
:data:`PARITY_IMAGES` evaluation images. A row that fails says ``failed`` with the reason; it never fails the
stage by itself (its accuracy is gated like every format's by the caller).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ccpcsa.errors import first_line

PARITY_IMAGES = 256
ROW_NAMES = ("pytorch_pruned_cuda", "pytorch_pruned_cuda_graph", "onnx_cuda")


def cuda_rows(pruned_pt: Path, fp32_onnx: Path, device: Any, input_size: int, x: np.ndarray,
              latency: Callable[[Any], dict[str, Any]], accuracy: Callable[[Any], dict[str, Any]],
              params: int, flops: int) -> dict[str, dict[str, Any]]:
    """``{row name: row}`` for :data:`ROW_NAMES` (see the module docstring). ``latency(runner)`` returns
    ``{"latency_ms", "images_per_s"}``, ``accuracy(runner)`` the accuracy fields; ``x`` are normalized evaluation
    images (the first :data:`PARITY_IMAGES` give the parity). Each row has ``status`` ok / failed / skipped."""
    import onnxruntime as ort

    from ccpcsa.io.checkpoint import load_checkpoint
    from export.compare import compare_logits
    from export.runtime import OrtRunner, TorchCudaGraphRunner, TorchRunner

    sample = np.ascontiguousarray(x[:PARITY_IMAGES], dtype=np.float32)
    ref = TorchRunner(load_checkpoint(pruned_pt).model, input_size=input_size, device="cpu").run(sample)
    dev = str(device)

    def make(name: str) -> Any:
        if name == "onnx_cuda":
            return OrtRunner(fp32_onnx, device="cuda")
        model = load_checkpoint(pruned_pt, device=dev).model
        cls = TorchCudaGraphRunner if name.endswith("_graph") else TorchRunner
        return cls(model, input_size=input_size, device=dev)

    rows: dict[str, dict[str, Any]] = {}
    providers = ort.get_available_providers()
    for name in ROW_NAMES:
        path = fp32_onnx if name == "onnx_cuda" else pruned_pt
        row: dict[str, Any] = {"file": path.name, "precision": "fp32", "device": "cuda", "threads": None}
        if name == "onnx_cuda" and "CUDAExecutionProvider" not in providers:
            rows[name] = {**row, "status": "skipped", "reason": f"onnxruntime has no CUDAExecutionProvider ({', '.join(providers)})"}
            continue
        try:
            runner = make(name)
            try:
                cmp = compare_logits(ref, runner.run(sample))
                lat = latency(runner)
                row.update({"size_bytes": path.stat().st_size, "params": params, "flops": flops, **accuracy(runner),
                            "latency_ms": lat["latency_ms"], "images_per_s": lat["images_per_s"],
                            "max_abs_diff": cmp.max_abs_diff, "top1_agreement": cmp.top1_agreement_pct,
                            "parity": f"max|Δ| {cmp.max_abs_diff:.2e}, top-1 {cmp.top1_agreement_pct:.2f}% vs PyTorch CPU",
                            "runner": runner.info.label, "status": "ok"})
            finally:
                runner.close()
        except Exception as exc:  # noqa: BLE001 — a GPU row that cannot run is reported, not fatal
            row.update({"status": "failed", "reason": first_line(exc, with_type=True)})
        rows[name] = row
    return rows
