"""torchvision and timm architectures on this project's CPU torch: the loader, and the classification zoo it serves.

**Why a loader.** The registry's torchvision wheels for Linux x86_64 are CUDA builds (``0.28.0+cu130`` is the one
paired with torch 2.13): their C++ extension ``torchvision/_C.so`` links ``libtorch_cuda.so``, which the CPU torch
``2.13.0+cpu`` pinned here does not have. torchvision itself tolerates a ``_C.so`` that does not load (every
registration that needs its ops is guarded by ``torchvision.extension._has_ops()``) except two:
``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``
unconditionally, and ``import torchvision`` then fails with ``RuntimeError: operator torchvision::nms does not exist``
(timm imports torchvision, so it fails the same way). The model definitions do not use those ops.

:func:`import_third_party` therefore does, once per process and only when needed, exactly what the missing library
would have done for those two operators: it first loads ``_C.so`` the way torchvision does (``torch.ops.load_library``);
when that fails it *defines the two operator schemas* (no kernels) with ``torch.library``, so the fake-kernel
registrations find them, and then imports torchvision normally. Nothing of torchvision is patched or skipped: with a
matching build (a CUDA machine, a ``+cpu`` wheel) ``_C.so`` loads and nothing is defined. Without the ops,
``torchvision.ops.nms``/``roi_align``/``deform_conv2d`` raise torchvision's own "Couldn't load custom C++ ops" error
(detection models need them; classification models do not). :data:`LOADER_NOTE` holds the one informational line
saying so, printed once to stderr.

:data:`TORCHVISION_ZOO` lists the 15 classification architectures this project deploys end to end (issue: "Real
users' architectures"), with the factory keywords that make them buildable offline (``weights=None``).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

import torch

from ..errors import first_line

#: top-level packages whose import goes through :func:`import_third_party`
THIRD_PARTY = ("torchvision", "timm")

#: The operators ``torchvision/_meta_registrations.py`` registers fake kernels for without checking that torchvision's
#: C++ ops loaded; schemas exactly as torchvision's ``csrc/ops/nms.cpp`` / ``quantized/cpu/qnms_kernel.cpp`` define them.
TORCHVISION_UNGUARDED_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

#: The informational line about torchvision's C++ ops ("" while torchvision is not imported or its ops loaded).
LOADER_NOTE = ""
_LIBRARY: torch.library.Library | None = None  # kept alive: the schemas vanish with it

#: name → factory keywords (besides ``num_classes``) of the torchvision classification architectures the pipeline is
#: tested and benchmarked on; ``model.name: torchvision.models:NAME``, ``model.kwargs: {weights: null, ...}``.
TORCHVISION_ZOO: dict[str, dict[str, Any]] = {
    "resnet18": {"weights": None},
    "mobilenet_v2": {"weights": None},
    "mobilenet_v3_small": {"weights": None},
    "efficientnet_b0": {"weights": None},
    "efficientnet_v2_s": {"weights": None},
    "regnet_x_400mf": {"weights": None},
    "regnet_y_400mf": {"weights": None},
    "shufflenet_v2_x1_0": {"weights": None},
    "densenet121": {"weights": None},
    "convnext_tiny": {"weights": None},
    "squeezenet1_1": {"weights": None},
    "mnasnet0_5": {"weights": None},
    "resnext50_32x4d": {"weights": None},
    # aux_logits=False: the auxiliary heads exist only for training with ImageNet-sized inputs; init_weights=True
    # silences torchvision's warning about the default changing (and is that default).
    "googlenet": {"weights": None, "aux_logits": False, "init_weights": True},
    "vgg11_bn": {"weights": None},
}

#: timm families (one model of each): ``model.name: timm:create_model``, ``model.kwargs: {model_name: NAME}``.
TIMM_ZOO: dict[str, dict[str, Any]] = {
    "resnet18": {"model_name": "resnet18", "pretrained": False},
    "efficientnet_b0": {"model_name": "efficientnet_b0", "pretrained": False},
    "mobilenetv3_small_100": {"model_name": "mobilenetv3_small_100", "pretrained": False},
    "regnety_004": {"model_name": "regnety_004", "pretrained": False},
    "convnext_atto": {"model_name": "convnext_atto", "pretrained": False},
}


def is_third_party(module_name: str) -> bool:
    """True when ``module_name`` (``torchvision.models``, ``timm``, …) belongs to a package in :data:`THIRD_PARTY`."""
    return module_name.partition(".")[0] in THIRD_PARTY


def _torchvision_ops_defined() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 — attribute lookup raises when the operator is not registered
    except (AttributeError, RuntimeError):
        return False
    return True


def _load_torchvision_ops(spec: importlib.machinery.ModuleSpec) -> str:
    """Load ``torchvision/_C`` as torchvision does; "" when it loaded (or is absent: torchvision handles that),
    else the reason it did not."""
    locations = list(spec.submodule_search_locations or [])
    if not locations:
        return ""
    finder = importlib.machinery.FileFinder(
        locations[0], (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES))
    ext = finder.find_spec("_C")
    if ext is None or not ext.origin:
        return "torchvision/_C is not in the installation"
    try:
        torch.ops.load_library(ext.origin)
    except OSError as exc:
        cause = exc.__cause__ or exc
        return first_line(cause, limit=160)
    return ""


def prepare_torchvision() -> str:
    """Make ``import torchvision`` work on this torch; idempotent. Returns :data:`LOADER_NOTE`.

    When torchvision is already imported, or its C++ ops load (a build matching this torch), nothing is done.
    Otherwise the schemas in :data:`TORCHVISION_UNGUARDED_SCHEMAS` are defined (no kernels) and the note says which
    ops are unavailable and why. Raises ``ImportError`` (with the command that installs it) when torchvision is not
    installed."""
    global LOADER_NOTE, _LIBRARY
    if "torchvision" in sys.modules or _LIBRARY is not None:
        return LOADER_NOTE
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ImportError("No module named 'torchvision' (install the project's extra: pip install -e '.[torchvision]'; "
                          "`make setup` does)")
    reason = _load_torchvision_ops(spec)
    if reason and not _torchvision_ops_defined():
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
        for schema in TORCHVISION_UNGUARDED_SCHEMAS:
            _LIBRARY.define(schema)
        LOADER_NOTE = (f"note: torchvision's C++ ops do not load with torch {torch.__version__} ({reason}); its model "
                       "definitions are used without them (torchvision.ops nms/roi_align/deform_conv2d unavailable)")
        print(LOADER_NOTE, file=sys.stderr)
    return LOADER_NOTE


def import_third_party(module_name: str) -> ModuleType:
    """Import ``module_name``; a torchvision or timm module (:func:`is_third_party`) after :func:`prepare_torchvision`
    (timm imports torchvision). Raises ``ImportError`` like ``importlib.import_module``."""
    if is_third_party(module_name):
        prepare_torchvision()
    return importlib.import_module(module_name)


def zoo_defaults(spec: str) -> dict[str, Any]:
    """The factory keywords the loader gives ``spec`` before the user's ``model.kwargs``: the :data:`TORCHVISION_ZOO`
    entry of ``torchvision.models:NAME`` (e.g. googlenet's ``aux_logits: False``), ``{}`` for any other spec."""
    module, _, attr = spec.partition(":")
    return dict(TORCHVISION_ZOO.get(attr, {})) if module == "torchvision.models" else {}
