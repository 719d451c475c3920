"""Model registry: zoo names → factories, plus bring-your-own ``package.module:factory`` specs.

Every factory takes ``num_classes`` and keyword arguments. ``input_size`` is the native square
input size of a zoo entry (32 for CIFAR models, 224 for ImageNet layouts); a bring-your-own model
gets it from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import UserError, first_line, unknown
from . import cifar_resnet, mobilenet, resnet, vgg
from .torchvision_zoo import import_third_party, zoo_defaults


@dataclass(frozen=True)
class ZooEntry:
    """A registered model: its factory, native input size and fixed keyword arguments."""

    factory: Callable[..., nn.Module]
    input_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)


ZOO: dict[str, ZooEntry] = {
    "resnet20": ZooEntry(cifar_resnet.resnet20, 32),
    "resnet32": ZooEntry(cifar_resnet.resnet32, 32),
    "resnet56": ZooEntry(cifar_resnet.resnet56, 32),
    "resnet110": ZooEntry(cifar_resnet.resnet110, 32),
    "resnet50": ZooEntry(resnet.resnet50, 224),
    "resnet101": ZooEntry(resnet.resnet101, 224),
    "resnet50_cifar": ZooEntry(resnet.resnet50, 32, {"stem": "cifar"}),
    "resnet101_cifar": ZooEntry(resnet.resnet101, 32, {"stem": "cifar"}),
    "vgg16_bn": ZooEntry(vgg.vgg16_bn, 32),
    "mobilenet_v2": ZooEntry(mobilenet.mobilenet_v2, 224),
    "mobilenet_v2_cifar": ZooEntry(mobilenet.mobilenet_v2, 32, {"variant": "cifar"}),
}


def list_models() -> list[str]:
    """Sorted zoo names."""
    return sorted(ZOO)


def is_custom(name: str) -> bool:
    """True for a bring-your-own spec ``package.module:factory``."""
    return ":" in name


def _resolve_custom(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"model '{spec}' is not of the form package.module:factory")
    try:
        module = import_third_party(module_name)  # torchvision/timm: made importable on this CPU torch first
    except ImportError as exc:
        raise UserError(f"model '{spec}': cannot import module '{module_name}' ({exc}); is it on PYTHONPATH?") from exc
    except Exception as exc:  # the module itself fails while importing (a broken install, an error at import time)
        raise UserError(f"model '{spec}': importing module '{module_name}' failed ({type(exc).__name__}: "
                        f"{first_line(exc)}); fix that module or its installation") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"model '{spec}': '{module_name}' has no callable '{attr}'")
    return factory  # type: ignore[no-any-return]


def native_input_size(name: str, default: int = 32) -> int:
    """Input side length a zoo model is designed for (``default`` for bring-your-own models)."""
    return ZOO[name].input_size if name in ZOO else default


def build_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name or a bring-your-own model from ``package.module:factory``.

    The factory is called as ``factory(num_classes=num_classes, **kwargs)`` (after the zoo entry's fixed
    kwargs, or for ``torchvision.models:NAME`` the defaults of :data:`TORCHVISION_ZOO`, which the user's kwargs
    override), all by keyword, so keyword-only factories work — e.g. torchvision's
    ``resnet18(*, weights=None, progress=True, **kwargs)`` with ``kwargs={"weights": None}``. Raises
    :class:`UserError` for unknown names and for any exception the factory raises (one line with its
    type and message); a factory must return an ``nn.Module``.
    """
    if is_custom(name):
        factory = _resolve_custom(name)
        # a torchvision zoo architecture keeps the loader's defaults under the user's kwargs (googlenet: no aux heads)
        fixed: dict[str, Any] = dict(zoo_defaults(name))
    elif name in ZOO:
        factory, fixed = ZOO[name].factory, ZOO[name].kwargs
    else:
        raise unknown("model", name, list(ZOO) + ["package.module:factory"])
    try:
        model = factory(num_classes=num_classes, **{**fixed, **kwargs})
    except TypeError as exc:
        raise UserError(f"model '{name}': bad arguments {sorted(kwargs)} ({first_line(exc)})") from exc
    except UserError:
        raise
    except Exception as exc:  # the user's factory failed: one line naming it, not a traceback
        raise UserError(f"model '{name}': the factory raised {type(exc).__name__}: {first_line(exc)} "
                        f"(kwargs {kwargs or {}}, num_classes={num_classes}); fix the factory or model.kwargs") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"model '{name}': factory returned {type(model).__name__}, not a torch.nn.Module")
    return model
