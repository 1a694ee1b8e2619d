"""Sequence packing: the real tokens of a MultimodalBatch's samples laid end to end in fewer rows.

``pack_sequences`` places samples into rows of at most ``max_tokens_per_row`` tokens by first-fit
decreasing (longest first, each into the first row with room). Every sample keeps the positions it
has unpacked (a segment restarts at 0): 1-D ``cumsum(attention_mask) - 1``, or for Qwen2-VL /
Qwen2.5-VL the 3-D M-RoPE positions from the model's own ``get_rope_index`` (``rope_index``
from ``adapter.rope_index_fn(model)``), which numbers each sample from 0 over its own tokens and
images. Images follow their samples: pixel rows and per-image kwargs are reordered to packed order.

Attention must not cross segments. ``model_inputs(attention=...)`` offers two ways:
- "block_mask": a float 4-D mask [R, 1, L, L], 0 where key j may be seen by query i (same segment,
  j <= i), the dtype's minimum elsewhere. HF models take a 4-D mask as is (SDPA and eager; CPU-safe).
- "position_ids": no attention mask; position ids that restart at 0 per segment ([R, L], or
  [4, R, L] = text positions stacked on M-RoPE for Qwen-VL). transformers derives the segments from
  them: flash-attention varlen on GPU, and a block mask for SDPA / eager (transformers >= 5), but only
  without a KV cache, hence ``use_cache=False`` in the inputs.
Trailing row padding forms its own segment (positions 0, 1, ...), so no query row is fully masked.
"position_ids" needs positions that grow by 1 inside a segment (true for the default positions and
for M-RoPE's text row); "block_mask" works with any positions.

Per-token outputs go back with ``unpack`` ([R, L] -> [B, T]). Log-probs of shifted targets
(logits at j - 1 score token j) use ``unpack_shifted`` ([R, L - 1] -> [B, T - 1]); a segment's first
token has no in-segment context, and its value is replaced by ``fill_value``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from prismrl.policy.multimodal import MultimodalBatch


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices (each bin's total <= capacity); zero-length items are left out."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[i] == 0:
            continue
        for r, room in enumerate(free):
            if lengths[i] <= room:
                bins[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


@dataclass
class PackedBatch:
    """Packed rows [R, L] of a [B, T] batch with the maps back (-1 marks row padding)."""

    input_ids: Tensor  # [R, L]
    position_ids: Tensor  # [R, L] or [3, R, L]
    text_position_ids: Tensor  # [R, L], 0.. per segment
    segment_ids: Tensor  # [R, L], segment number within the row
    token_mask: Tensor  # [R, L], 1 on real tokens
    loss_mask: Tensor  # [R, L]
    sample_index: Tensor  # [R, L] source row b
    token_index: Tensor  # [R, L] source column t
    rows: list[list[int]]  # sample indices per row, in order
    batch_shape: tuple[int, int]  # (B, T)
    pixel_values: Tensor | None = None
    extra_model_kwargs: dict[str, Any] = field(default_factory=dict)

    def block_attention_mask(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """[R, 1, L, L] additive mask: 0 if same segment and key <= query, else ``finfo(dtype).min``."""
        seg = self.segment_ids
        length = seg.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()  # [L, L]
        allowed = (seg[:, :, None] == seg[:, None, :]) & causal  # [R, L, L]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)

    def model_inputs(
        self, attention: Literal["block_mask", "position_ids"] = "block_mask", dtype: torch.dtype = torch.float32
    ) -> dict[str, Any]:
        """Forward kwargs; ``dtype`` is the model's compute dtype (block mask only)."""
        inputs: dict[str, Any] = {"input_ids": self.input_ids, "use_cache": False}
        if attention == "block_mask":
            inputs["attention_mask"] = self.block_attention_mask(dtype)
            inputs["position_ids"] = self.position_ids
        elif attention == "position_ids":
            pos = self.position_ids
            inputs["position_ids"] = pos if pos.dim() == 2 else torch.cat([self.text_position_ids[None], pos], 0)
        else:
            raise ValueError(f"attention: expected 'block_mask' or 'position_ids', got {attention!r}")
        if self.pixel_values is not None:
            inputs["pixel_values"] = self.pixel_values
        inputs.update(self.extra_model_kwargs)
        return inputs

    def unpack(self, values: Tensor, fill_value: float = 0.0) -> Tensor:
        """[R, L, ...] per-token values -> [B, T, ...]; positions without a real token get ``fill_value``."""
        if tuple(values.shape[:2]) != tuple(self.input_ids.shape):
            expected = tuple(self.input_ids.shape)
            raise ValueError(f"values: expected shape [R, L, ...] = {expected}, got {tuple(values.shape)}")
        real = self.token_mask.bool().to(values.device)
        out = values.new_full((*self.batch_shape, *values.shape[2:]), fill_value)
        out[self.sample_index.to(values.device)[real], self.token_index.to(values.device)[real]] = values[real]
        return out

    def unpack_shifted(self, values: Tensor, fill_value: float = 0.0) -> Tensor:
        """[R, L - 1, ...] values of targets 1..L-1 -> [B, T - 1, ...] values of targets 1..T-1."""
        r, length = self.input_ids.shape
        if tuple(values.shape[:2]) != (r, length - 1):
            raise ValueError(f"values: expected shape [R, L - 1, ...] = {(r, length - 1)}, got {tuple(values.shape)}")
        full = values.new_full((r, length, *values.shape[2:]), fill_value)
        full[:, 1:] = values
        full[self.segment_starts().to(values.device)] = fill_value
        return self.unpack(full, fill_value)[:, 1:]

    def segment_starts(self) -> Tensor:
        """[R, L] bool: the first token of each segment."""
        seg = self.segment_ids
        starts = torch.ones_like(seg, dtype=torch.bool)
        starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
        return starts

    def pack(self, values: Tensor, fill_value: float = 0.0) -> Tensor:
        """[B, T, ...] per-token values -> [R, L, ...] (padding gets ``fill_value``)."""
        if tuple(values.shape[:2]) != self.batch_shape:
            raise ValueError(f"values: expected shape [B, T, ...] = {self.batch_shape}, got {tuple(values.shape)}")
        real = self.token_mask.bool().to(values.device)
        out = values.new_full((*self.input_ids.shape, *values.shape[2:]), fill_value)
        out[real] = values[self.sample_index.to(values.device)[real], self.token_index.to(values.device)[real]]
        return out


def _unpacked_positions(batch: MultimodalBatch, rope_index: Callable[[MultimodalBatch], Tensor] | None) -> Tensor:
    """[K, B, T] positions of every token as the model sees it unpacked (K = 1 or 3)."""
    if batch.position_ids is not None:
        pos = batch.position_ids
    elif rope_index is not None:
        pos = rope_index(batch)
    else:
        pos = (batch.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return (pos if pos.dim() == 3 else pos.unsqueeze(0)).long()


def pack_sequences(
    batch: MultimodalBatch,
    max_tokens_per_row: int,
    rope_index: Callable[[MultimodalBatch], Tensor] | None = None,
    pad_token_id: int = 0,
) -> PackedBatch:
    """Pack ``batch``'s real tokens (attention_mask == 1) into rows of <= ``max_tokens_per_row``."""
    if isinstance(max_tokens_per_row, bool) or not isinstance(max_tokens_per_row, int) or max_tokens_per_row < 1:
        raise ValueError(f"max_tokens_per_row: expected a positive int, got {max_tokens_per_row!r}")
    real = batch.attention_mask.bool()
    lengths = real.sum(1).tolist()
    for b, n in enumerate(lengths):
        if n > max_tokens_per_row:
            raise ValueError(
                f"max_tokens_per_row: sample {b} has {n} tokens, more than max_tokens_per_row={max_tokens_per_row}"
            )
    if "mm_token_type_ids" in batch.extra_model_kwargs and rope_index is None and batch.position_ids is None:
        raise ValueError(
            "rope_index: this batch has mm_token_type_ids (a Qwen-VL M-RoPE family); pass "
            "rope_index=adapter.rope_index_fn(model) so every segment gets its 3-D positions"
        )
    rows = first_fit_decreasing(lengths, max_tokens_per_row)
    if not rows:
        raise ValueError("batch: every sample is empty (attention_mask is all zero); nothing to pack")
    positions = _unpacked_positions(batch, rope_index).to(batch.input_ids.device)  # [K, B, T]
    per_token = _per_token_kwargs(batch)
    width = max(sum(lengths[b] for b in row) for row in rows)
    shape = (len(rows), width)
    long = dict(dtype=torch.long, device=batch.input_ids.device)
    out = {
        "input_ids": torch.full(shape, pad_token_id, **long),
        "sample_index": torch.full(shape, -1, **long),
        "token_index": torch.full(shape, -1, **long),
        "segment_ids": torch.zeros(shape, **long),
        "text_position_ids": torch.zeros(shape, **long),
        "loss_mask": torch.zeros(shape, dtype=batch.loss_mask.dtype, device=batch.loss_mask.device),
    }
    pos_out = torch.zeros((positions.shape[0], *shape), **long)
    for r, row in enumerate(rows):
        col = 0
        for s, b in enumerate(row):
            cols = real[b].nonzero().flatten()  # [n] source columns
            dst = slice(col, col + cols.numel())
            out["input_ids"][r, dst] = batch.input_ids[b, cols]
            out["sample_index"][r, dst] = b
            out["token_index"][r, dst] = cols
            out["segment_ids"][r, dst] = s
            out["text_position_ids"][r, dst] = torch.arange(cols.numel(), **long)
            out["loss_mask"][r, dst] = batch.loss_mask[b, cols]
            pos_out[:, r, dst] = positions[:, b, cols]
            col += cols.numel()
        pad = width - col
        out["segment_ids"][r, col:] = len(row)
        out["text_position_ids"][r, col:] = torch.arange(pad, **long)
        pos_out[:, r, col:] = torch.arange(pad, **long)
    token_mask = (out["sample_index"] >= 0).long()
    packed = PackedBatch(
        position_ids=pos_out[0] if pos_out.shape[0] == 1 else pos_out,
        token_mask=token_mask,
        rows=rows,
        batch_shape=(batch.batch_size, batch.seq_len),
        **out,
    )
    ordered = batch.select([b for row in rows for b in row])
    packed.pixel_values = ordered.pixel_values
    packed.extra_model_kwargs = {
        key: (packed.pack(batch.extra_model_kwargs[key]) if key in per_token else value)
        for key, value in ordered.extra_model_kwargs.items()
    }
    return packed


def _per_token_kwargs(batch: MultimodalBatch) -> set[str]:
    """Names of per-token [B, T] tensors in extra_model_kwargs; other per-sample tensors cannot be packed."""
    keys = set()
    for key, value in batch.extra_model_kwargs.items():
        if not isinstance(value, Tensor) or key in batch.per_image_keys:
            continue
        if tuple(value.shape[:2]) != (batch.batch_size, batch.seq_len):
            raise ValueError(
                f"extra_model_kwargs[{key!r}]: only per-token [B, T] or per-image tensors can be packed, "
                f"got shape {tuple(value.shape)}"
            )
        keys.add(key)
    return keys
