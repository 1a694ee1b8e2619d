"""One LightningModule per training stage (imported lazily to keep ``import prismrl`` light)."""

from __future__ import annotations

import importlib

_LAZY = {
    "ActorCriticModule": "prismrl.lightning_modules.actor_critic",
    "AlignmentModule": "prismrl.lightning_modules.alignment",
    "GRPOModule": "prismrl.lightning_modules.grpo",
    "GeneratorPPOModule": "prismrl.lightning_modules.generator_ppo",
    "MaskedLMModule": "prismrl.lightning_modules.masked_lm",
    "VisionLanguageSFTModule": "prismrl.lightning_modules.vl_sft",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prismrl.lightning_modules' has no attribute {name!r}")
