"""Type-check the TensorRT code (``export/tensorrt/``) against the TensorRT 10.13 stubs for real (``python -m export.typecheck``).

The ``tensorrt-stubs`` 10.13 wheel has no ``py.typed`` marker — so a plain ``mypy`` treats
``tensorrt`` as untyped and every ``trt.*`` name as ``Any`` — and a few syntax errors (parameters
named ``in``; a non-default parameter after defaults). This copies the stubs into ``.cache/trt-stubs``,
patches those lines, proves the types resolve (``reveal_type(trt.Builder)``), then runs mypy on the
package with them. Exit code 0 only when the stubs were used and no error was found.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = "export/tensorrt"  # the package: engine, build, runner


def prepare_stubs(dest: Path) -> Path:
    """Copy and patch the installed stubs into ``dest``; return a mypy config file that uses them."""
    site = Path(sysconfig.get_paths()["purelib"])
    if not (site / "tensorrt" / "__init__.pyi").is_file() or not (site / "tensorrt_bindings").is_dir():
        raise FileNotFoundError("tensorrt-stubs are not installed; run `make setup`")
    stubs = dest / "stubs"
    shutil.rmtree(stubs, ignore_errors=True)
    ignore = shutil.ignore_patterns("*.so", "*.py", "__pycache__")
    shutil.copytree(site / "tensorrt", stubs / "tensorrt", ignore=ignore)
    shutil.copytree(site / "tensorrt_bindings", stubs / "tensorrt_bindings", ignore=ignore)
    pyi = stubs / "tensorrt_bindings" / "tensorrt.pyi"
    text = re.sub(r"\bin: ", "in_: ", pyi.read_text(encoding="utf-8"))
    text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
    pyi.write_text(text, encoding="utf-8")
    cfg = dest / "mypy.ini"
    cfg.write_text(
        f"[mypy]\npython_version = 3.11\nignore_missing_imports = True\nmypy_path = {stubs}\ncache_dir = {dest / 'cache'}\n"
        "[mypy-tensorrt.*]\nignore_errors = True\n[mypy-tensorrt_bindings.*]\nignore_errors = True\n"
        "[mypy-torch.*,onnx.*,onnxruntime.*,onnxsim.*,google.*]\nfollow_imports = skip\n",
        encoding="utf-8",
    )
    return cfg


def run(dest: Path = ROOT / ".cache" / "trt-stubs") -> tuple[int, str]:
    """Prepare the stubs, check they resolve, mypy the module; return (exit code, output)."""
    cfg = prepare_stubs(dest)
    mypy = [sys.executable, "-m", "mypy", "--no-error-summary", "--config-file", str(cfg)]
    probe = dest / "probe.py"
    probe.write_text("import tensorrt as trt\nreveal_type(trt.Builder)\n", encoding="utf-8")
    out = subprocess.run([*mypy, str(probe)], cwd=ROOT, capture_output=True, text=True).stdout
    if "tensorrt_bindings.tensorrt.Builder" not in out:
        return 1, f"the TensorRT stubs were not picked up by mypy:\n{out}"
    proc = subprocess.run([*mypy, TARGET], cwd=ROOT, capture_output=True, text=True)
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("export/")]
    return (1 if errors or proc.returncode not in (0, 1) else 0), proc.stdout + proc.stderr


def main() -> int:
    code, out = run()
    print(out.strip() or f"{TARGET}: no type errors against tensorrt-stubs 10.13")
    return code


if __name__ == "__main__":
    sys.exit(main())
