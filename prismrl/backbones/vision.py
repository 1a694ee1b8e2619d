"""Vision encoder over transformers ViTs: CLIP, SigLIP and SigLIP2 vision towers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prismrl.backbones.lora import LoraSettings, prepare_hf_backbone
from prismrl.backbones.pooling import EncoderOutput
from prismrl.backbones.shipped import build_hf_model, check_exactly_one, split_tiny_config


@dataclass(frozen=True)
class VisionFamily:
    """How one ViT family is called and what its outputs hold."""

    model_class: str  # transformers class name
    cls_token: bool  # last_hidden_state[:, 0] is a CLS token, not a patch
    patchified: bool  # model takes [B, num_patches, C*p*p] + pixel_attention_mask + spatial_shapes
    token_norm: str | None = None  # final norm that last_hidden_state still lacks (applied to tokens here)


CLIP = VisionFamily("CLIPVisionModel", cls_token=True, patchified=False, token_norm="post_layernorm")
SIGLIP = VisionFamily("SiglipVisionModel", cls_token=False, patchified=False)
SIGLIP2 = VisionFamily("Siglip2VisionModel", cls_token=False, patchified=True)

# model_type -> family; full dual-encoder checkpoints ("clip", ...) load their vision tower.
VISION_FAMILIES: dict[str, VisionFamily] = {
    "clip": CLIP,
    "clip_vision_model": CLIP,
    "siglip": SIGLIP,
    "siglip_vision_model": SIGLIP,
    "siglip2": SIGLIP2,
    "siglip2_vision_model": SIGLIP2,
}
TINY_VISION_TYPES = ("clip_vision_model", "siglip_vision_model", "siglip2_vision_model")


def vision_family(model_type: str) -> VisionFamily:
    """Look up the family of a config's model_type, with a clear error."""
    if model_type not in VISION_FAMILIES:
        raise ValueError(f"model_type: expected one of {sorted(VISION_FAMILIES)}, received {model_type!r}")
    return VISION_FAMILIES[model_type]


def patchify(pixel_values: Tensor, patch_size: int) -> Tensor:
    """`[B, C, H, W]` -> `[B, (H/p)*(W/p), p*p*C]`, patches row-major, each flattened as (p, p, C).

    This is the layout of transformers' Siglip2ImageProcessor.
    """
    b, c, h, w = pixel_values.shape
    x = pixel_values.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    x = x.permute(0, 2, 4, 3, 5, 1)  # [B, h/p, w/p, p, p, C]
    return x.reshape(b, (h // patch_size) * (w // patch_size), patch_size * patch_size * c)


class HFVisionEncoder(nn.Module):
    """Encode images `[B, 3, H, W]` with a CLIP / SigLIP / SigLIP2 vision transformer.

    tokens = final-normed patch features `[B, N, H]`: SigLIP's last_hidden_state, CLIP's
    post_layernorm(last_hidden_state) without the CLS token (as open_clip's attentional pooler
    sees them, so the final norm trains with any pooling). mask = None (every patch is real).
    pooled = the model's pooler_output `[B, H]` (CLIP: post-layernorm CLS token; SigLIP/SigLIP2:
    attention-pooling head), or the mean of the tokens when the model has no head
    (`vision_use_head: false`; do that when a tower pools tokens itself, so that no unused head
    parameters trip DDP).
    CLIP/SigLIP need H = W = config.image_size; SigLIP2 takes any H, W divisible by patch_size
    (images are patchified here, position embeddings are resized by the model).
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        tiny_config: dict | None = None,
        lora: LoraSettings | None = None,
        freeze: bool = False,
        gradient_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        import transformers

        check_exactly_one(model_name_or_path, tiny_config)
        if tiny_config is not None:
            split_tiny_config(tiny_config, TINY_VISION_TYPES)

        def model_class_for(config: Any) -> type:
            return getattr(transformers, vision_family(config.model_type).model_class)

        model = build_hf_model(model_name_or_path, tiny_config, attn_implementation, model_class_for)
        self.family = vision_family(model.config.model_type)
        self.config = model.config
        self.hidden_size: int = int(model.config.hidden_size)
        self.model = prepare_hf_backbone(
            model, lora=lora, freeze=freeze, gradient_checkpointing=gradient_checkpointing
        )

    @property
    def patch_size(self) -> int:
        return int(self.config.patch_size)

    def _check_pixels(self, pixel_values: Tensor) -> None:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values: expected shape [B, {self.config.num_channels}, H, W], received {tuple(pixel_values.shape)}"
            )
        h, w = pixel_values.shape[-2:]
        if self.family.patchified:
            if h % self.patch_size or w % self.patch_size:
                raise ValueError(
                    f"pixel_values: H and W must be multiples of patch_size={self.patch_size}, received {h}x{w}"
                )
        elif h != self.config.image_size or w != self.config.image_size:
            size = self.config.image_size
            raise ValueError(f"pixel_values: expected {size}x{size} images (config image_size={size}), received {h}x{w}")

    def forward(self, pixel_values: Tensor) -> EncoderOutput:
        """`[B, 3, H, W]` -> tokens `[B, N, H]`, mask None, pooled `[B, H]`."""
        self._check_pixels(pixel_values)
        if self.family.patchified:
            b, _, h, w = pixel_values.shape
            grid = (h // self.patch_size, w // self.patch_size)
            patches = patchify(pixel_values, self.patch_size)  # [B, N, p*p*C]
            out = self.model(
                pixel_values=patches,
                pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long, device=patches.device),
                spatial_shapes=torch.tensor([grid] * b, dtype=torch.long, device=patches.device),
            )
        else:
            out = self.model(pixel_values=pixel_values)
        tokens = out.last_hidden_state  # [B, N(+1), H]
        if self.family.token_norm is not None:
            tokens = getattr(self._base_model(), self.family.token_norm)(tokens)
        if self.family.cls_token:
            tokens = tokens[:, 1:]  # [B, N, H]
        pooled = out.pooler_output if out.pooler_output is not None else tokens.mean(dim=1)  # [B, H]
        return EncoderOutput(tokens=tokens, mask=None, pooled=pooled)

    def _base_model(self) -> nn.Module:
        """The transformers model, also when wrapped by peft."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def save_pretrained(self, folder: str) -> None:
        """Write the model (or only its LoRA adapters) to `folder`."""
        self.model.save_pretrained(folder)
