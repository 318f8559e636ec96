"""Model registry: ``create("resnet56")`` instead of importing classes (as timm does)."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name, e.g. ``create("resnet56", num_classes=10)``."""
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}") from None
    model = fn(**kwargs)
    # Remembered so that derived networks (``surgery.shrink``) can be rebuilt from a description.
    model.registry_name, model.registry_kwargs = name, dict(kwargs)
    return model


from . import resnet_cifar, vgg, lenet, imagenet  # noqa: E402,F401  (fill the registry)
