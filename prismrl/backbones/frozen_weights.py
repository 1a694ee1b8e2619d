"""Leaving frozen pretrained weights out of checkpoints and refilling them (``StageModule.on_save_checkpoint`` /
``on_load_checkpoint``): which weights a constructor reloads from their source, the extra state written beside them,
and the checksum that checks the refilled weights are the ones left out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


def frozen_pretrained_names(module: nn.Module, children: list[str] | tuple[str, ...]) -> dict[str, str]:
    """{state-dict key: source} of the frozen parameters of ``children`` of ``module`` that lie inside a transformers
    model loaded from a name or folder (``config._name_or_path``), i.e. weights its constructor reloads as they were.

    Random-init models (tiny configs) have no such source and are not listed: their weights stay in checkpoints.
    """
    from transformers import PreTrainedModel

    names: dict[str, str] = {}
    for child in children:
        owner = getattr(module, child, None)
        if owner is None:
            continue
        sources = {prefix: m.config._name_or_path for prefix, m in owner.named_modules()
                   if isinstance(m, PreTrainedModel) and getattr(m.config, "_name_or_path", "")}
        for name, parameter in owner.named_parameters(remove_duplicate=False):
            source = next((s for prefix, s in sources.items() if name.startswith(f"{prefix}.") or not prefix), None)
            if source is not None and not parameter.requires_grad:
                names[f"{child}.{name}"] = source
    return names


def unregistered_keys_beside(module: nn.Module, names: list[str], state: Mapping[str, Any]) -> set[str]:
    """Keys of ``state`` in the submodule of one of ``names`` that are no parameter or buffer of ``module``: extra state
    derived from a weight (bitsandbytes ``Linear8bitLt``'s int8 row scales ``SCB`` and ``weight_format``)."""
    registered = {k for k, _ in [*module.named_parameters(remove_duplicate=False), *module.named_buffers()]}
    owners = {k.rpartition(".")[0] for k in names}
    return {k for k in state if k not in registered and k.rpartition(".")[0] in owners}


def weights_checksum(tensors: list[Tensor]) -> list[float]:
    """[sum, sum of absolute values] (float64) over ``tensors``: detects other weights, not float reordering."""
    total = absolute = 0.0
    for tensor in tensors:
        values = tensor.detach().to("cpu", torch.float64)
        total, absolute = total + float(values.sum()), absolute + float(values.abs().sum())
    return [total, absolute]
