"""MultimodalBatch: token ids, masks, images and RL tensors of a (vision-)language policy batch.

Per-sample tensors have batch size B first (``[B, T]`` or ``[B]``); ``position_ids`` is ``[B, T]`` or
``[K, B, T]`` (K = 3 for Qwen's M-RoPE). Image tensors are per image, in sample order:
``images_per_sample[b]`` images belong to sample b and image i owns ``pixel_rows_per_image[i]``
consecutive rows of ``pixel_values`` (Qwen: ``prod(grid_thw)`` flattened patches; LLaVA: 1 image
``[3, H, W]``; InternVL: its tiles). ``extra_model_kwargs`` entries named in ``per_image_keys``
(``image_grid_thw``, ``image_sizes``) have one row per image; other tensors there are per sample.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

PER_IMAGE_KEYS: tuple[str, ...] = ("image_grid_thw", "image_sizes")
_PER_SAMPLE_FIELDS = ("old_logprobs", "ref_logprobs", "advantages", "rewards")


@dataclass
class MultimodalBatch:
    """A right- or left-padded token batch with optional images and RL tensors.

    input_ids / attention_mask / loss_mask: [B, T]; loss_mask is 1 exactly on completion tokens.
    old_logprobs / ref_logprobs: [B, T] (or [B, T - 1] when aligned to shifted targets);
    advantages: [B] or [B, T]; rewards: [B].
    """

    input_ids: Tensor
    attention_mask: Tensor
    loss_mask: Tensor
    position_ids: Tensor | None = None
    pixel_values: Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    advantages: Tensor | None = None
    rewards: Tensor | None = None
    extra_model_kwargs: dict[str, Any] = field(default_factory=dict)
    images_per_sample: Tensor | None = None  # [B] long
    pixel_rows_per_image: Tensor | None = None  # [N] long
    per_image_keys: tuple[str, ...] = PER_IMAGE_KEYS

    def __post_init__(self) -> None:
        if not isinstance(self.input_ids, Tensor) or self.input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected a [B, T] tensor, got {_describe(self.input_ids)}")
        shape = tuple(self.input_ids.shape)
        for name in ("attention_mask", "loss_mask"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                raise ValueError(f"{name}: expected a tensor of shape {shape} like input_ids, got {_describe(value)}")
        pos = self.position_ids
        if pos is not None and (pos.dim() not in (2, 3) or tuple(pos.shape[-2:]) != shape):
            raise ValueError(
                f"position_ids: expected shape [B, T] or [K, B, T] with [B, T] = {shape}, got {_describe(pos)}"
            )
        for name in _PER_SAMPLE_FIELDS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != shape[0]):
                raise ValueError(f"{name}: expected a tensor with batch size {shape[0]} first, got {_describe(value)}")
        self._check_images()

    def _check_images(self) -> None:
        b = self.batch_size
        num_images = 0
        if self.images_per_sample is not None:
            if tuple(self.images_per_sample.shape) != (b,):
                raise ValueError(f"images_per_sample: expected shape ({b},), got {_describe(self.images_per_sample)}")
            num_images = int(self.images_per_sample.sum())
        if self.pixel_values is not None:
            if self.images_per_sample is None or self.pixel_rows_per_image is None:
                raise ValueError(
                    "pixel_values: needs images_per_sample [B] and pixel_rows_per_image [N] to map rows to samples"
                )
            if tuple(self.pixel_rows_per_image.shape) != (num_images,):
                raise ValueError(
                    f"pixel_rows_per_image: expected shape ({num_images},) (sum of images_per_sample), "
                    f"got {_describe(self.pixel_rows_per_image)}"
                )
            num_rows = int(self.pixel_rows_per_image.sum())
            if num_rows != self.pixel_values.shape[0]:
                raise ValueError(
                    f"pixel_values: expected {num_rows} rows (sum of pixel_rows_per_image), "
                    f"got shape {tuple(self.pixel_values.shape)}"
                )
        for key, value in self.extra_model_kwargs.items():
            if not isinstance(value, Tensor):
                continue
            expected = num_images if key in self.per_image_keys else b
            if value.dim() == 0 or value.shape[0] != expected:
                kind = "one row per image" if key in self.per_image_keys else "batch size first"
                raise ValueError(f"extra_model_kwargs[{key!r}]: expected {kind} ({expected}), got {_describe(value)}")

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def __len__(self) -> int:
        return self.batch_size

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for the HF model's ``forward`` / ``generate``."""
        inputs: dict[str, Any] = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        if self.pixel_values is not None:
            inputs["pixel_values"] = self.pixel_values
        inputs.update(self.extra_model_kwargs)
        return inputs

    def to(self, device: torch.device | str, pixel_dtype: torch.dtype | None = None) -> MultimodalBatch:
        """A copy with every tensor on ``device``; floating ``pixel_values`` cast to ``pixel_dtype`` if given."""

        def move(value: Any) -> Any:
            return value.to(device) if isinstance(value, Tensor) else value

        names = [f.name for f in dataclasses.fields(self) if f.name != "extra_model_kwargs"]
        changes = {name: move(getattr(self, name)) for name in names}
        if pixel_dtype is not None and self.pixel_values is not None and self.pixel_values.is_floating_point():
            changes["pixel_values"] = changes["pixel_values"].to(pixel_dtype)
        changes["extra_model_kwargs"] = {k: move(v) for k, v in self.extra_model_kwargs.items()}
        return dataclasses.replace(self, **changes)

    def image_ranges(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Per sample: (first image, end image) and (first pixel row, end pixel row), half-open."""
        b = self.batch_size
        counts = self.images_per_sample.tolist() if self.images_per_sample is not None else [0] * b
        rows = self.pixel_rows_per_image.tolist() if self.pixel_rows_per_image is not None else [0] * sum(counts)
        image_start, row_start = [0] * (b + 1), [0]
        for i in range(b):
            image_start[i + 1] = image_start[i] + counts[i]
        for r in rows:
            row_start.append(row_start[-1] + r)
        images = [(image_start[i], image_start[i + 1]) for i in range(b)]
        return images, [(row_start[s], row_start[e]) for s, e in images]

    def select(self, indices: Tensor | list[int]) -> MultimodalBatch:
        """The samples ``indices`` (in that order), with their images' pixel rows and per-image kwargs.

        Indices may repeat (e.g. ``[0, 0, 1, 1]`` for 2 rollouts per prompt): images are copied along.
        Image inputs (pixel_values, per-image kwargs) are dropped when the selection has no image.
        """
        index = _as_index(indices, self.batch_size)
        picked = index.tolist()
        image_ranges, row_ranges = self.image_ranges()
        image_idx = torch.tensor([i for b in picked for i in range(*image_ranges[b])], dtype=torch.long)
        row_idx = torch.tensor([r for b in picked for r in range(*row_ranges[b])], dtype=torch.long)

        def rows(value: Tensor | None, idx: Tensor) -> Tensor | None:
            return None if value is None else value.index_select(0, idx.to(value.device))

        has_images = image_idx.numel() > 0  # a minibatch without images passes no image inputs
        extra = {}
        for key, value in self.extra_model_kwargs.items():
            if isinstance(value, Tensor):
                if key in self.per_image_keys and not has_images:
                    continue
                value = rows(value, image_idx if key in self.per_image_keys else index)
            extra[key] = value
        position_ids = self.position_ids
        if position_ids is not None:
            position_ids = position_ids.index_select(position_ids.dim() - 2, index.to(position_ids.device))
        return MultimodalBatch(
            input_ids=rows(self.input_ids, index),
            attention_mask=rows(self.attention_mask, index),
            loss_mask=rows(self.loss_mask, index),
            position_ids=position_ids,
            pixel_values=rows(self.pixel_values, row_idx) if has_images else None,
            **{name: rows(getattr(self, name), index) for name in _PER_SAMPLE_FIELDS},
            extra_model_kwargs=extra,
            images_per_sample=rows(self.images_per_sample, index),
            pixel_rows_per_image=rows(self.pixel_rows_per_image, image_idx),
            per_image_keys=self.per_image_keys,
        )


def _as_index(indices: Tensor | list[int], batch_size: int) -> Tensor:
    """A 1-D long index from a list, a long tensor or a [B] bool mask; range-checked."""
    index = torch.as_tensor(indices).cpu() if not isinstance(indices, Tensor) else indices.cpu()
    if index.dtype == torch.bool:
        if tuple(index.shape) != (batch_size,):
            raise ValueError(f"indices: a bool mask must have shape ({batch_size},), got {tuple(index.shape)}")
        index = index.nonzero().flatten()
    if index.dim() != 1 or (index.numel() and index.dtype not in (torch.int64, torch.int32)):
        raise ValueError(f"indices: expected a 1-D list/tensor of sample indices, got {_describe(index)}")
    index = index.long()
    if index.numel() and (int(index.min()) < -batch_size or int(index.max()) >= batch_size):
        raise ValueError(f"indices: expected values in [0, {batch_size}), got {index.tolist()}")
    return torch.where(index < 0, index + batch_size, index)


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"
