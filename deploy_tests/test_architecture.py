"""The house in order: one-way imports, the layering of ``ccpcsa/`` and the packages on it, no file over 500 lines.

Every module under ``ccpcsa/``, ``export/``, ``pipeline/`` and ``bench/`` is parsed with :mod:`ast` (never imported) and
every import it makes is an edge of the module graph — at module level and inside functions alike (a lazy import is
still a dependency). ``from pkg import name`` points at the module ``pkg.name`` when that is a module, else at ``pkg``
(its ``__init__``). The checks:

(a) the module graph has no cycle (no two modules import each other, directly or around a circle);
(b) a module imports only from its own layer or the layers below (:data:`LAYERS`, README "Architecture"):
    ``ccpcsa``'s subpackages, then ``export``, ``pipeline``, ``bench``;
(c) every ``.py`` file of those packages (and of ``deploy_tests/``) has at most :data:`MAX_LINES` lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ccpcsa", "export", "pipeline", "bench")
MAX_LINES = 500

#: The layers, bottom to top, numbered as in README "Architecture": a module may import from its own layer and the
#: layers below, never above. ``ccpcsa``'s subpackages first, then the packages built on it. Keys are module names or
#: packages (a package covers its submodules; ``ccpcsa`` itself only its ``__init__``).
LAYERS: dict[str, int] = {
    "ccpcsa.errors": 1, "ccpcsa.placement": 1,  # base utilities
    "ccpcsa.models": 2,  # architectures, BAM, MACs
    "ccpcsa.io": 3,  # atomic artifacts, weights files, checkpoints (rebuild models)
    "ccpcsa.data": 4,  # datasets, cache (written with io.artifacts), loaders
    "ccpcsa.training": 5,  # fit / evaluate, speed, DDP (checkpoints, data)
    "ccpcsa.surgery": 6,  # dependency graph, surgery, cost models, compensation, alignment
    "ccpcsa.criteria": 7,  # channel scores (read the surgery's groups)
    "ccpcsa.pruning": 8,  # the method: Algorithm 1, allocation, one-shot
    "ccpcsa.__main__": 9, "ccpcsa.oneshot": 9, "ccpcsa": 9,  # command lines
    "export": 10,  # ONNX, INT8, TensorRT, runners (uses ccpcsa)
    "pipeline": 11,  # stages, manifest, report (uses ccpcsa and export)
    "bench": 12,  # benchmarks (use everything)
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (module level and inside functions)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in known else src for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a package path: the deepest known module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(module: str) -> int | None:
    """The layer of ``module``: its own entry, else its innermost package's (``ccpcsa`` itself covers nothing)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS and (key != "ccpcsa" or module == "ccpcsa"):
            return LAYERS[key]
    return None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert not _cycles(_graph())


def test_layers_import_only_downwards() -> None:
    graph = _graph()
    unplaced = [m for m in graph if _layer(m) is None]
    assert not unplaced, f"modules outside every layer: {unplaced}"
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in sorted(graph.items()) for t in sorted(targets) if _layer(t) > _layer(m)]  # type: ignore[operator]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("pkg", [*PACKAGES, "deploy_tests"])
def test_files_are_at_most_500_lines(pkg: str) -> None:
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / pkg).rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_the_checker_sees_lazy_imports_and_cycles() -> None:
    """The scan itself: an import inside a function is an edge, relative imports resolve, a circle is found."""
    graph = _graph()
    assert "ccpcsa.surgery.cost" in graph["ccpcsa.surgery.macs_target"]  # MacsCost, imported inside fit_to_target
    assert "ccpcsa.io.artifacts" in graph["ccpcsa.data.cache"]  # relative `from ..io.artifacts import`
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
