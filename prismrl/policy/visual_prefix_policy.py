"""prismrl's own vision-language model as an RL policy: a VL-SFT checkpoint's visual prefix in front of its causal LM.

The VL instruction stage (``VisionLanguageSFTModule`` with a ``PrefixLMDecoder``) feeds its causal LM

    inputs_embeds = [VisualPrefix(image) ; Embed(prompt_template.format(question)) ; Embed(answer ++ EOS)]

``VisualPrefixPolicy`` writes the same sequence LLaVA-style, so every piece the RL stages use for HF VLMs works
unchanged (``MultimodalBatch``, packing with positions restarting per segment, chunked log-probs, HF ``generate``,
the LoRA-off reference, export): a prompt holds ``num_latents`` copies of a reserved image token per image, and

    forward(input_ids, attention_mask, position_ids, pixel_values):
        e = Embed(input_ids)                                  # [B, T, H]
        e[input_ids == image_token_id] = VisualPrefix(pixel_values).flatten(0, 1)   # image k -> k-th token block
        return LM(inputs_embeds=e, attention_mask, position_ids = given or cumsum(attention_mask) - 1)

The reserved image token is one of the tokenizer's own added special tokens that the prompt template does not
use (``choose_image_token``), so the LM's vocabulary and softmax are those of the SFT model.

``build_visual_prefix_policy`` rebuilds the vision encoder and the decoder from the checkpoint's recorded config
(``hyper_parameters``: the ``class_path`` / ``init_args`` that ``prismrl fit`` wrote), loads the checkpoint's
weights, and merges the SFT LoRA into the LM's base weights: a fresh RL LoRA (``policy.lora``) switched off is
then exactly the SFT model, the KL reference. The image preprocessing is the VL-SFT run's (the datamodule's
``image_size`` / ``image_mean`` / ``image_std``). Trainable: the RL LoRA (or the whole LM without LoRA), plus the
resampler and projector when ``train_visual_prefix``; the vision encoder stays frozen.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prismrl.backbones.freezing import freeze
from prismrl.backbones.visual_prefix import VisualPrefix
from prismrl.checkpoints import load_checkpoint
from prismrl.data.images import IMAGENET_MEAN, IMAGENET_STD
from prismrl.data.records import IMAGE_PLACEHOLDER

MODEL_TYPE = "prismrl_visual_prefix"
VL_SFT_STAGE = "prismrl.lightning_modules.vl_sft.VisionLanguageSFTModule"  # the stage name checkpoints record
PREFIX_DECODER = "PrefixLMDecoder"
FIELD = "policy.vl_sft_checkpoint"
VISUAL_WEIGHTS = "visual_prefix.pt"  # export: the resampler / projector weights when they were trained
EXPORT_CONFIG = "prismrl_visual_prefix.json"


@dataclass
class VisualPrefixConfig:
    """What the adapter needs to build batches for a ``VisualPrefixPolicy`` (``config.model_type`` picks it)."""

    image_token: str
    image_token_id: int
    num_latents: int
    prompt_template: str
    image_size: int
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    vl_sft_checkpoint: str | None = None
    model_type: str = MODEL_TYPE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VisualPrefixPolicy(nn.Module):
    """VisualPrefix + causal LM behind an HF-like ``forward`` / ``generate`` (see the module docstring)."""

    def __init__(self, visual: VisualPrefix, language_model: nn.Module, config: VisualPrefixConfig) -> None:
        super().__init__()
        self.visual, self.language_model, self.config = visual, language_model, config

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    @property
    def generation_config(self):
        return getattr(self.language_model, "generation_config", None)

    # ----- peft-like surface: LoRA-off reference, trainable weights, export -----
    @property
    def peft_config(self):
        """The RL LoRA's config (AttributeError without LoRA, so ``uses_adapters`` is False then)."""
        return self.language_model.peft_config

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """The RL LoRA switched off: the VL-SFT model (its LoRA is merged into the base weights)."""
        with self.language_model.disable_adapter():
            yield

    def save_pretrained(self, folder: str, state_dict: dict[str, Tensor] | None = None, **kwargs: Any) -> None:
        """The LM (its RL LoRA adapters, or all its weights without LoRA) via ``save_pretrained``, plus
        ``visual_prefix.pt`` when the resampler / projector trained and ``prismrl_visual_prefix.json``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        if state_dict is not None:
            kwargs["state_dict"] = {k[len("language_model."):]: v for k, v in state_dict.items()
                                    if k.startswith("language_model.")}
        self.language_model.save_pretrained(str(out), **kwargs)
        source = state_dict if state_dict is not None else dict(self.named_parameters())
        trained = {n[len("visual."):]: source[n].detach().cpu() for n, p in self.named_parameters()
                   if n.startswith("visual.") and p.requires_grad and n in source}
        if trained:
            torch.save(trained, out / VISUAL_WEIGHTS)
        (out / EXPORT_CONFIG).write_text(json.dumps(self.config.to_dict(), indent=2))

    # ----- model -----
    def embed(self, input_ids: Tensor, pixel_values: Tensor | None = None) -> Tensor:
        """Token embeddings [B, T, H] with each image's prefix rows at its image tokens (image k -> k-th block)."""
        embeds = self.language_model.get_input_embeddings()(input_ids)  # [B, T, H]
        is_image = input_ids == self.config.image_token_id  # [B, T]
        found = int(is_image.sum())
        if pixel_values is None:
            if found:
                raise ValueError(f"input_ids: {found} image tokens (id {self.config.image_token_id}) but no "
                                 "pixel_values")
            return embeds
        prefix = self.visual(pixel_values.to(next(self.visual.parameters()).dtype))  # [N, L, H]
        if found != prefix.shape[0] * prefix.shape[1]:
            raise ValueError(f"input_ids: expected {prefix.shape[1]} image tokens per image x {prefix.shape[0]} "
                             f"images = {prefix.shape[0] * prefix.shape[1]}, received {found}")
        rows = prefix.reshape(-1, prefix.shape[-1]).to(embeds.dtype)  # [N * L, H]
        return embeds.masked_scatter(is_image[..., None].expand_as(embeds), rows)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                pixel_values: Tensor | None = None, **kwargs: Any):
        """The LM's output (``.logits`` [B, T, V]); positions default to ``cumsum(attention_mask) - 1`` as in VL-SFT."""
        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.language_model(inputs_embeds=self.embed(input_ids, pixel_values), attention_mask=attention_mask,
                                   position_ids=position_ids, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, pixel_values: Tensor | None = None,
                 **kwargs: Any) -> Tensor:
        """HF ``generate`` from the spliced prompt embeddings; returns ``[B, P + C]`` (prompt ids, then new ids)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.language_model.generate(inputs_embeds=self.embed(input_ids, pixel_values),
                                           attention_mask=attention_mask, **kwargs)  # [B, C]: new tokens only
        return torch.cat([input_ids, out.to(input_ids.device)], dim=1)


# ----- building from a VL-SFT checkpoint -----
def _instantiate(config: Any, name: str) -> nn.Module:
    """A ``{class_path, init_args}`` component config (as ``prismrl fit`` recorded it) -> the module."""
    if not isinstance(config, dict) or not isinstance(config.get("class_path"), str):
        raise ValueError(f"{FIELD}: the checkpoint records no class_path config for '{name}' (received "
                         f"{type(config).__name__}); expected a checkpoint written by `prismrl fit` with a VL-SFT config")
    from jsonargparse import ArgumentParser

    module_name, _, class_name = config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "component", fail_untyped=False)
    parsed = parser.parse_object({"component": dict(config.get("init_args") or {})})
    return parser.instantiate_classes(parsed).component


def choose_image_token(tokenizer, prompt_template: str) -> tuple[str, int]:
    """The last added special token of ``tokenizer`` that is not BOS / EOS / PAD / UNK and not in the template."""
    reserved = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    candidates = [(i, t.content) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()
                  if getattr(t, "special", False) and i not in reserved and t.content not in prompt_template
                  and t.content != IMAGE_PLACEHOLDER]
    if not candidates:
        raise ValueError(f"{FIELD}: the decoder's tokenizer has no spare added special token to reserve as the image "
                         "token (all are BOS / EOS / PAD / UNK or used by the prompt template)")
    token_id, token = max(candidates)
    return token, int(token_id)


def _check_stage(checkpoint: dict[str, Any], path: str) -> None:
    written_by = (checkpoint.get("prismrl") or {}).get("stage")
    if written_by != VL_SFT_STAGE:
        raise ValueError(f"{FIELD}: expected a checkpoint of stage {VL_SFT_STAGE}, received '{path}' written by "
                         f"{written_by or 'no prismrl stage'}")


def _checksum(tensors: list[Tensor]) -> list[float]:
    """[sum, sum of absolute values] in float64, as VL-SFT checkpoints record it for the weights they leave out."""
    values = [t.detach().to("cpu", torch.float64) for t in tensors]
    return [float(sum(v.sum() for v in values)), float(sum(v.abs().sum() for v in values))]


def _with_frozen_weights(checkpoint: dict[str, Any], path: str, visual: nn.Module, decoder: nn.Module) -> dict:
    """The checkpoint's state dict, completed with the frozen pretrained weights it left out (the freshly built
    modules reloaded them from their source), after checking they are the ones the SFT run trained on."""
    state = dict(checkpoint["state_dict"])
    own = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    own.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    missing = sorted(k for k in own if k not in state)
    if not missing:
        return state
    record = (checkpoint.get("prismrl") or {}).get("frozen_weights") or {}
    found, expected = _checksum([own[k] for k in missing]), record.get("checksum")
    if expected is None or len(missing) != record.get("count") or not all(
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-3) for a, b in zip(found, expected)):
        raise ValueError(f"{FIELD}: '{path}' lacks {len(missing)} weights (e.g. {missing[0]}) and records "
                         f"{record.get('count', 0)} frozen pretrained weights left out (checksum {expected}) from "
                         f"{record.get('sources', [])}; the rebuilt model's are other weights (checksum {found}): "
                         "build it from the same source")
    state.update({k: own[k] for k in missing})
    return state


def load_vl_sft(path: str) -> tuple[VisualPrefix, Any, VisualPrefixConfig]:
    """(visual prefix, PrefixLMDecoder with the checkpoint's weights, config) of a VL-SFT checkpoint."""
    checkpoint = load_checkpoint(path, field=FIELD)
    _check_stage(checkpoint, path)
    hp = checkpoint.get("hyper_parameters") or {}
    vision_encoder = _instantiate(hp.get("vision_encoder"), "vision_encoder")
    decoder = _instantiate(hp.get("decoder"), "decoder")
    if type(decoder).__name__ != PREFIX_DECODER or not hasattr(decoder, "prompt_template"):
        raise ValueError(f"{FIELD}: the checkpoint's decoder must be a {PREFIX_DECODER} (a causal LM), received "
                         f"{type(decoder).__name__}")
    visual = VisualPrefix(
        vision_encoder, decoder.hidden_size, hp.get("num_latents", 8), hp.get("resampler_dim"),
        hp.get("resampler_depth", 2), hp.get("resampler_heads", 4), hp.get("resampler_head_dim", 32),
        hp.get("projector_hidden_dim"), hp.get("use_aligned_embedding", False), freeze=True,
    )
    state = _with_frozen_weights(checkpoint, path, visual, decoder)
    for prefix, module in (("visual.", visual), ("decoder.", decoder)):
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    image_size = data.get("image_size")
    if not isinstance(image_size, int):
        raise ValueError(f"{FIELD}: the checkpoint records no datamodule image_size (received {image_size!r}); "
                         "expected a checkpoint of a VL-SFT run with an image QA datamodule")
    token, token_id = choose_image_token(decoder.tokenizer, decoder.prompt_template)
    config = VisualPrefixConfig(
        image_token=token, image_token_id=token_id, num_latents=visual.resampler.latents.shape[0],
        prompt_template=decoder.prompt_template, image_size=image_size,
        image_mean=tuple(data.get("image_mean", IMAGENET_MEAN)), image_std=tuple(data.get("image_std", IMAGENET_STD)),
        vl_sft_checkpoint=str(path),
    )
    return visual, decoder, config


def build_visual_prefix_policy(path: str, lora=None, train_visual_prefix: bool = False,
                               torch_dtype: str | None = None, gradient_checkpointing: bool = False):
    """(VisualPrefixPolicy, tokenizer) from a VL-SFT checkpoint: SFT LoRA merged, RL LoRA ``lora`` added on the LM's
    linear layers (None: the whole LM trains), resampler / projector trainable when ``train_visual_prefix``."""
    from prismrl.backbones.lora import apply_lora, enable_gradient_checkpointing

    visual, decoder, config = load_vl_sft(path)
    lm = decoder.model
    if getattr(lm, "is_loaded_in_8bit", False) or getattr(lm, "is_loaded_in_4bit", False):
        raise ValueError(f"{FIELD}: the checkpoint's LM has quantized base weights; its SFT LoRA cannot be merged")
    lm = lm.merge_and_unload() if hasattr(lm, "merge_and_unload") else lm  # SFT LoRA -> base weights
    if torch_dtype is not None:
        lm, visual = lm.to(getattr(torch, torch_dtype)), visual.to(getattr(torch, torch_dtype))
    freeze(visual)
    if train_visual_prefix:
        for part in (visual.resampler, visual.projector, visual.embedding_token):
            for p in part.parameters() if part is not None else ():
                p.requires_grad_(True)
    if gradient_checkpointing:
        enable_gradient_checkpointing(lm)
    for p in lm.parameters():
        p.requires_grad_(lora is None)
    if lora is not None:
        lm = apply_lora(lm, lora)
    policy = VisualPrefixPolicy(visual, lm, config)
    policy.train()
    return policy, decoder.tokenizer


__all__ = [
    "MODEL_TYPE",
    "VL_SFT_STAGE",
    "VisualPrefixConfig",
    "VisualPrefixPolicy",
    "build_visual_prefix_policy",
    "choose_image_token",
    "load_vl_sft",
]
