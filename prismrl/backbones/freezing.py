"""Freeze / unfreeze parameters and count them."""

from __future__ import annotations

from torch import nn


def set_requires_grad(module: nn.Module, flag: bool) -> nn.Module:
    """Set `requires_grad = flag` on every parameter of `module`; returns `module`."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module, received {type(module).__name__}")
    if not isinstance(flag, bool):
        raise TypeError(f"flag: expected a bool, received {type(flag).__name__}")
    for param in module.parameters():
        param.requires_grad_(flag)
    return module


def freeze(module: nn.Module) -> nn.Module:
    """Make every parameter of `module` non-trainable."""
    return set_requires_grad(module, False)


def unfreeze(module: nn.Module) -> nn.Module:
    """Make every parameter of `module` trainable."""
    return set_requires_grad(module, True)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared parameters counted once)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module, received {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
