"""MultimodalBatch: validation, select() over per-sample and per-image tensors, to(), model_inputs()."""

import pytest
import torch

from prismrl.policy.multimodal import MultimodalBatch

# Qwen-style layout: sample 0 has 2 images (4 and 16 patch rows), sample 1 none, sample 2 one (8 rows).
ROWS = [4, 16, 8]
GRIDS = [[1, 2, 2], [1, 4, 4], [1, 2, 4]]


def qwen_like_batch() -> MultimodalBatch:
    b, t = 3, 5
    # each pixel row holds (image number, row within image) so rows can be traced after select()
    pixel_values = torch.cat([torch.tensor([[float(i), float(r)] for r in range(n)]) for i, n in enumerate(ROWS)])
    input_ids = torch.arange(b * t).view(b, t)
    return MultimodalBatch(
        input_ids=input_ids,
        attention_mask=torch.ones(b, t, dtype=torch.long),
        loss_mask=torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 0, 1, 0]]),
        position_ids=torch.arange(t).expand(3, b, t) + 10 * torch.arange(b).view(1, b, 1),
        pixel_values=pixel_values,
        old_logprobs=-torch.rand(b, t),
        advantages=torch.tensor([0.5, -1.0, 2.0]),
        extra_model_kwargs={
            "image_grid_thw": torch.tensor(GRIDS),
            "mm_token_type_ids": (input_ids % 2).int(),
            "flag": "passes through",
        },
        images_per_sample=torch.tensor([2, 0, 1]),
        pixel_rows_per_image=torch.tensor(ROWS),
    )


def test_select_maps_samples_to_their_image_rows():
    batch = qwen_like_batch()
    sub = batch.select([2, 0])
    assert sub.input_ids.tolist() == [batch.input_ids[2].tolist(), batch.input_ids[0].tolist()]
    # image 2 (sample 2) first, then images 0 and 1 (sample 0), each with all its rows in order
    expected = [(2, r) for r in range(8)] + [(0, r) for r in range(4)] + [(1, r) for r in range(16)]
    assert [tuple(int(v) for v in row) for row in sub.pixel_values] == expected
    assert sub.extra_model_kwargs["image_grid_thw"].tolist() == [GRIDS[2], GRIDS[0], GRIDS[1]]
    assert sub.images_per_sample.tolist() == [1, 2]
    assert sub.pixel_rows_per_image.tolist() == [8, 4, 16]
    assert torch.equal(sub.position_ids, batch.position_ids[:, [2, 0]])
    assert torch.equal(sub.advantages, torch.tensor([2.0, 0.5]))
    assert torch.equal(sub.old_logprobs, batch.old_logprobs[[2, 0]])
    assert torch.equal(sub.extra_model_kwargs["mm_token_type_ids"], batch.extra_model_kwargs["mm_token_type_ids"][[2, 0]])
    assert sub.extra_model_kwargs["flag"] == "passes through"


def test_select_bool_mask_negative_index_and_no_image_selection():
    batch = qwen_like_batch()
    by_mask = batch.select(torch.tensor([False, True, True]))
    assert by_mask.input_ids.tolist() == batch.input_ids[1:].tolist()
    assert by_mask.pixel_rows_per_image.tolist() == [8]
    assert batch.select([-1]).input_ids.tolist() == [batch.input_ids[2].tolist()]
    text_only = batch.select([1])
    assert text_only.pixel_values is None
    assert "image_grid_thw" not in text_only.extra_model_kwargs
    assert "pixel_values" not in text_only.model_inputs()
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 3\)"):
        batch.select([3])
    with pytest.raises(ValueError, match="bool mask must have shape"):
        batch.select(torch.tensor([True, False]))


def test_select_with_repeats_copies_images_per_rollout():
    sub = qwen_like_batch().select([2, 2, 0])
    assert sub.images_per_sample.tolist() == [1, 1, 2]
    assert sub.pixel_rows_per_image.tolist() == [8, 8, 4, 16]
    assert sub.pixel_values[:, 0].tolist() == [2.0] * 16 + [0.0] * 4 + [1.0] * 16
    assert sub.extra_model_kwargs["image_grid_thw"].tolist() == [GRIDS[2], GRIDS[2], GRIDS[0], GRIDS[1]]


def test_model_inputs_and_to():
    batch = qwen_like_batch()
    inputs = batch.model_inputs()
    assert set(inputs) == {"input_ids", "attention_mask", "position_ids", "pixel_values", "image_grid_thw",
                           "mm_token_type_ids", "flag"}
    moved = batch.to("cpu", pixel_dtype=torch.float16)
    assert moved.pixel_values.dtype == torch.float16
    assert moved.input_ids.dtype == torch.long
    assert torch.equal(moved.extra_model_kwargs["image_grid_thw"], batch.extra_model_kwargs["image_grid_thw"])
    assert len(moved) == 3 and moved.seq_len == 5


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(loss_mask=torch.ones(3, 4)), "loss_mask: expected a tensor of shape"),
        (dict(advantages=torch.ones(2)), "advantages: expected a tensor with batch size 3"),
        (dict(pixel_rows_per_image=torch.tensor([4, 16, 9])), "pixel_values: expected 29 rows"),
        (dict(pixel_rows_per_image=torch.tensor([4, 16])), r"pixel_rows_per_image: expected shape \(3,\)"),
        (dict(images_per_sample=None), "pixel_values: needs images_per_sample"),
        (dict(position_ids=torch.zeros(3, 5, 5)), "position_ids: expected shape"),
        (dict(extra_model_kwargs={"image_grid_thw": torch.ones(2, 3)}), r"image_grid_thw.*one row per image \(3\)"),
        (dict(extra_model_kwargs={"mm_token_type_ids": torch.ones(2, 5)}), r"mm_token_type_ids.*batch size first \(3\)"),
    ],
)
def test_bad_fields_name_the_field(change, message):
    good = qwen_like_batch()
    fields = {name: getattr(good, name) for name in good.__dataclass_fields__}
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        MultimodalBatch(**fields)


def test_input_ids_must_be_2d():
    with pytest.raises(ValueError, match=r"input_ids: expected a \[B, T\] tensor"):
        MultimodalBatch(torch.ones(4, dtype=torch.long), torch.ones(4), torch.ones(4))
