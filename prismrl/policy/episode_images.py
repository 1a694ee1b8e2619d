"""Images of multi-turn episodes: each row's images in order (the first prompt's, then those of later user turns),
and the batch tensors built from them.

A row's images are kept as already-processed pieces (the pixel rows of each image and its per-image kwargs such as
``image_grid_thw``), so an image is processed once per episode. ``attach_images`` lays them out the way
``MultimodalBatch`` expects (rows in sample order, images in text order); the model's forward then puts image i's
features at the i-th run of image tokens of the row, wherever in the conversation it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prismrl.data.records import IMAGE_PLACEHOLDER
from prismrl.policy.multimodal import MultimodalBatch


@dataclass
class RowImages:
    """One row's images, in text order: pixel rows per image and one-row per-image kwargs."""

    pixels: list[Tensor] = field(default_factory=list)
    kwargs: list[dict[str, Tensor]] = field(default_factory=list)

    def extended(self, other: RowImages) -> RowImages:
        return RowImages(self.pixels + other.pixels, self.kwargs + other.kwargs)


def prompt_row_images(batch: MultimodalBatch) -> list[RowImages]:
    """Per row of ``batch`` its images as RowImages."""
    images, rows = batch.image_ranges()
    sizes = batch.pixel_rows_per_image.tolist() if batch.pixel_rows_per_image is not None else []
    keys = [k for k in batch.per_image_keys if isinstance(batch.extra_model_kwargs.get(k), Tensor)]
    out = []
    for (i0, i1), (r0, _) in zip(images, rows):
        pixels, start = [], r0
        for i in range(i0, i1):
            pixels.append(batch.pixel_values[start:start + sizes[i]])
            start += sizes[i]
        out.append(RowImages(pixels, [{k: batch.extra_model_kwargs[k][i:i + 1] for k in keys} for i in range(i0, i1)]))
    return out


def attach_images(batch: MultimodalBatch, row_images: list[RowImages]) -> MultimodalBatch:
    """``batch`` with its image inputs replaced by ``row_images`` (one per row; none at all = no image inputs)."""
    if len(row_images) != batch.batch_size:
        raise ValueError(f"row_images: expected {batch.batch_size} rows, received {len(row_images)}")
    extra = {k: v for k, v in batch.extra_model_kwargs.items() if k not in batch.per_image_keys}
    flat = [(p, kw) for row in row_images for p, kw in zip(row.pixels, row.kwargs)]
    if not flat:
        return dataclasses.replace(batch, pixel_values=None, images_per_sample=None, pixel_rows_per_image=None,
                                   extra_model_kwargs=extra)
    for key in flat[0][1]:
        extra[key] = torch.cat([kw[key] for _, kw in flat]).to(batch.input_ids.device)
    device = batch.input_ids.device
    return dataclasses.replace(
        batch, pixel_values=torch.cat([p for p, _ in flat]).to(device), extra_model_kwargs=extra,
        images_per_sample=torch.tensor([len(r.pixels) for r in row_images], dtype=torch.long, device=device),
        pixel_rows_per_image=torch.tensor([p.shape[0] for p, _ in flat], dtype=torch.long, device=device))


def observation_images(adapter, text: str, images: list, pixel_dtype: torch.dtype | None,
                       field_name: str = "environment.step observation") -> tuple[str, RowImages]:
    """An observation's rendered ``text`` with each "<image>" replaced by the family's image tokens, and its
    processed images (pixel rows cast to ``pixel_dtype``)."""
    found = text.count(IMAGE_PLACEHOLDER)
    if found != len(images):
        raise ValueError(f"{field_name}: found {found} {IMAGE_PLACEHOLDER!r} placeholder(s) in the turn's text but "
                         f"{len(images)} image(s); put exactly one where each image goes")
    raw = [t for t in adapter.tokenizer.convert_ids_to_tokens(adapter.image_token_ids) if t and t in text]
    if raw:
        raise ValueError(f"{field_name}: expected no raw image tokens in the text (write {IMAGE_PLACEHOLDER!r}), "
                         f"received {raw}")
    if not images:
        return text, RowImages()
    if not adapter.supports_images:
        raise ValueError(f"{field_name}: {type(adapter).__name__} is text-only, received {len(images)} image(s)")
    processed = adapter.process_images([image.convert("RGB") for image in images])
    pieces = text.split(IMAGE_PLACEHOLDER)
    text = pieces[0] + "".join(adapter.image_text(n) + piece for n, piece in zip(processed.tokens_per_image,
                                                                                  pieces[1:]))
    pixels, start = [], 0
    values = processed.pixel_values
    if pixel_dtype is not None and values.is_floating_point():
        values = values.to(pixel_dtype)
    for rows in processed.pixel_rows_per_image:
        pixels.append(values[start:start + rows])
        start += rows
    kwargs = [{k: v[i:i + 1] for k, v in processed.per_image_kwargs.items()} for i in range(len(images))]
    return text, RowImages(pixels, kwargs)


def episode_batch(adapter, prompts: MultimodalBatch, completions: list[list[int]], own: list[list[int]],
                  row_images: list[RowImages]) -> MultimodalBatch:
    """Right-padded prompt + episode rows (``append_completions`` for episodes whose user turns carry image tokens):
    ``loss_mask`` = the policy's tokens (``own``), image inputs = ``row_images``."""
    banned = set(adapter.image_token_ids)
    rows, masks = [], []
    for b, (completion, mine) in enumerate(zip(completions, own)):
        if banned.intersection(t for t, m in zip(completion, mine) if m):
            raise ValueError(f"completions_token_ids[{b}]: the policy wrote vision special token ids; generate with "
                             "adapter.generate_kwargs() to suppress them")
        prompt = prompts.input_ids[b][prompts.attention_mask[b].bool()].tolist()
        rows.append(prompt + list(completion))
        masks.append([0] * len(prompt) + list(mine))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), adapter.pad_token_id, dtype=torch.long)
    attention_mask, loss_mask = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
    for b, (row, mask) in enumerate(zip(rows, masks)):
        input_ids[b, :len(row)], attention_mask[b, :len(row)] = torch.tensor(row), 1
        loss_mask[b, :len(row)] = torch.tensor(mask)
    extra = {k: v for k, v in prompts.extra_model_kwargs.items() if k not in adapter.token_kwarg_keys}
    extra.update(adapter.token_kwargs(input_ids))
    batch = MultimodalBatch(input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask,
                            pixel_values=prompts.pixel_values, extra_model_kwargs=extra,
                            images_per_sample=prompts.images_per_sample,
                            pixel_rows_per_image=prompts.pixel_rows_per_image, per_image_keys=prompts.per_image_keys)
    return attach_images(batch, row_images)
