"""Serving a LoRA policy through vLLM's own adapter support (``rollout.lora_sync: adapter``).

The engine holds the frozen base weights, sent once, and the policy's current adapters, saved after every update
with peft's ``save_pretrained`` (only the A/B factors: a few MB) into a folder (``/dev/shm`` where it exists) and
served under a new adapter id, so vLLM loads each version exactly once. Against merge-and-send (the default,
``lora_sync: merge``), a sync moves r * (d_in + d_out) numbers per adapted layer instead of d_in * d_out, at the
price of the extra low-rank matmuls in every decoding step.

Only LoRA factors may be trained: a policy that also trains other weights (``modules_to_save``, embeddings) or uses
DoRA cannot be served this way, and vLLM's rank must be one it supports.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

from torch import Tensor, nn

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks


def adapter_settings(model: nn.Module) -> dict:
    """vLLM engine arguments for serving ``model``'s single LoRA adapter; ValueError if it cannot be served."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None or getattr(config, "peft_type", None) is None or str(config.peft_type.value) != "LORA":
        raise ValueError("rollout.lora_sync: 'adapter' serves a LoRA policy, received a policy without LoRA "
                         "adapters (policy.lora is null); use lora_sync: merge")
    if getattr(config, "use_dora", False):
        raise ValueError("rollout.lora_sync: 'adapter': vLLM does not serve DoRA adapters; use lora_sync: merge")
    trained = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]
    if trained:
        shown = ", ".join(trained[:5]) + (f", ... {len(trained) - 5} more" if len(trained) > 5 else "")
        raise ValueError("rollout.lora_sync: 'adapter' serves only LoRA factors, but the policy also trains "
                         f"{len(trained)} other weight(s) ({shown}); use lora_sync: merge")
    rank = max([config.r, *config.rank_pattern.values()]) if config.rank_pattern else config.r
    supported = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not supported:
        raise ValueError(f"rollout.lora_sync: 'adapter': vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}, "
                         f"received policy.lora.r = {rank}; use lora_sync: merge")
    return {"enable_lora": True, "max_lora_rank": supported[0], "max_loras": 1}


def base_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(HF name, tensor) of the frozen base under a peft model: adapter factors skipped, ``base_layer`` unwrapped."""
    base = model.get_base_model()
    for key, tensor in base.state_dict(keep_vars=True).items():
        if ".lora_" not in key:
            yield key.replace(".base_layer.", "."), tensor.detach()


class AdapterFolder:
    """The folder the policy's adapters are saved into, and the vLLM request naming the newest version."""

    def __init__(self) -> None:
        parent = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self._folder = tempfile.TemporaryDirectory(prefix="prismrl-vllm-lora-", dir=parent)
        self.version = 0
        self.request = None

    def save(self, model: nn.Module) -> None:
        """Write ``model``'s adapters and point ``request`` at them under a new id (vLLM loads each id once)."""
        from vllm.lora.request import LoRARequest

        model.save_pretrained(self._folder.name)
        self.version += 1
        self.request = LoRARequest(f"prismrl-policy-{self.version}", self.version, self._folder.name)
