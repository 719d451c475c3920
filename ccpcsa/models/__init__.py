"""Model zoo: CIFAR ResNets, bottleneck ResNets, VGG-16-BN, MobileNetV2, and bring-your-own models."""

from .complexity import Complexity, count_complexity
from .registry import ZOO, build_model, is_custom, list_models, native_input_size

__all__ = ["ZOO", "Complexity", "build_model", "count_complexity", "is_custom", "list_models", "native_input_size"]
