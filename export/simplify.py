"""Graph simplification with onnxsim (constant folding, BN/Identity elimination), numerically checked."""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxsim

from ccpcsa.errors import UserError
from ccpcsa.io.artifacts import sha256_file

from .metadata import carry_metadata
from .onnx_io import (
    ArtifactRecord,
    PathLike,
    check_onnx,
    first_line,
    input_signature,
    load_onnx,
    node_count,
    op_counts,
    save_onnx,
)


@dataclass(frozen=True)
class SimplifyResult(ArtifactRecord):
    """Outcome of :func:`simplify_onnx`: node counts before/after and the checked artifact."""

    path: Path
    nodes_before: int
    nodes_after: int
    op_counts_before: dict[str, int]
    op_counts_after: dict[str, int]
    check_n: int
    sha256: str
    seconds: float


def simplify_onnx(src: PathLike, dest: PathLike, *, check_n: int = 3, test_batch: int = 2) -> SimplifyResult:
    """Simplify the ONNX model ``src`` with onnxsim and write it to ``dest`` (atomically).

    onnxsim's numeric check compares the original and simplified models on ``check_n`` random
    inputs of shape ``[test_batch, C, H, W]`` (the batch axis stays dynamic in the result); a
    failed check, an onnxsim error, a lost dynamic batch axis or a failed ONNX check is a
    :class:`UserError` and nothing is written. All ``metadata_props`` of ``src`` are carried over
    with ``stage="simplified"`` and ``parent_sha256`` = SHA-256 of ``src``.

    Returns node counts of the main graph before and after.
    """
    if check_n < 0 or test_batch < 1:
        raise UserError(f"simplify: check_n must be >= 0 and test_batch >= 1 (got {check_n}, {test_batch})")
    model = load_onnx(src)
    name, batch, chw = input_signature(model, what=f"'{src}'")
    start = time.perf_counter()
    log = io.StringIO()  # onnxsim prints "Checking i/n..." progress lines; keep them for error messages
    try:
        with contextlib.redirect_stdout(log):
            simplified, ok = onnxsim.simplify(model, check_n=check_n, test_input_shapes={name: [test_batch, *chw]})
    except Exception as exc:
        raise UserError(f"onnxsim failed on '{src}': {first_line(exc)}") from exc
    if not ok:
        detail = log.getvalue().strip().splitlines()[-1:] or ["no detail"]
        raise UserError(f"simplified '{src}' failed onnxsim's numeric check ({detail[0]}); nothing written")
    # onnxsim records its own run log (option values, every removed node name) in metadata_props;
    # that is noise for a device, so only the pipeline's keys are kept.
    keep = [p for p in simplified.metadata_props if not p.key.startswith("onnxsim.")]
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(keep)
    _, new_batch, _ = input_signature(simplified, what=f"simplified '{src}'")
    if isinstance(batch, str) and not isinstance(new_batch, str):
        raise UserError(f"onnxsim fixed the batch axis of '{src}' to {new_batch}; expected it to stay dynamic")
    carry_metadata(model, simplified, stage="simplified", parent_sha256=sha256_file(src))
    check_onnx(simplified, what=f"simplified '{src}'")
    out: onnx.ModelProto = simplified
    save_onnx(out, dest)
    return SimplifyResult(
        path=Path(dest),
        nodes_before=node_count(model),
        nodes_after=node_count(out),
        op_counts_before=op_counts(model),
        op_counts_after=op_counts(out),
        check_n=check_n,
        sha256=sha256_file(dest),
        seconds=round(time.perf_counter() - start, 3),
    )
