"""Image normalization for VLM batches: PIL / tensors / batches / greyscale / mixed sizes / bad shapes."""

import numpy as np
import pytest
import torch
from PIL import Image

from prismrl.policy.images import normalize_images, to_pil_rgb


def test_tensor_layouts_become_rgb_pil_lists():
    batch4 = torch.rand(2, 1, 6, 8)  # [B, 1, H, W] greyscale, one image per sample
    out = normalize_images(batch4, 2)
    assert [len(x) for x in out] == [1, 1]
    assert out[0][0].mode == "RGB" and out[0][0].size == (8, 6)
    rgb = np.asarray(out[1][0])
    expected = (batch4[1, 0] * 255).round().to(torch.uint8).numpy()
    for c in range(3):  # grey copied to every channel
        assert np.array_equal(rgb[:, :, c], expected)

    batch5 = torch.randint(0, 256, (2, 3, 3, 5, 4), dtype=torch.uint8)  # [B, N, C, H, W]
    out = normalize_images(batch5, 2)
    assert [len(x) for x in out] == [3, 3]
    assert np.array_equal(np.asarray(out[1][2]), batch5[1, 2].permute(1, 2, 0).numpy())


def test_lists_mix_pil_tensors_sizes_and_missing_images():
    grey = Image.fromarray(np.full((10, 12), 77, dtype=np.uint8), mode="L")
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    images = [[grey, torch.rand(3, 20, 30)], None, torch.rand(2, 3, 5, 5), rgba, []]
    out = normalize_images(images, 5)
    assert [len(x) for x in out] == [2, 0, 2, 1, 0]
    assert out[0][0].mode == "RGB" and np.asarray(out[0][0])[0, 0].tolist() == [77, 77, 77]
    assert out[0][1].size == (30, 20)
    assert np.asarray(out[3][0])[0, 0].tolist() == [255, 255, 255]  # transparent composited on white
    assert normalize_images(None, 3) == [[], [], []]


@pytest.mark.parametrize(
    "images, message",
    [
        ([torch.rand(8, 8)], r"images\[0\]: expected an image tensor \[C, H, W\] or images \[N, C, H, W\], got shape \(8, 8\)"),
        ([torch.rand(5, 8, 8)], r"images\[0\]: expected an image tensor \[C, H, W\] with C in \(1, 3\), got shape \(5, 8, 8\)"),
        (torch.rand(1, 5, 8, 8), r"got shape \(5, 8, 8\)"),
        (torch.rand(8, 8, 3), r"expected a batch tensor \[B, C, H, W\] or \[B, N, C, H, W\], got shape \(8, 8, 3\)"),
        ([torch.rand(3, 4, 4) * 2], r"float image values must lie in \[0, 1\]"),
        ([torch.ones(3, 4, 4, dtype=torch.int32)], "expected a uint8 or floating image tensor"),
        (["cat.png"], r"images\[0\]: expected a PIL image or a \[C, H, W\] tensor, got str"),
        ([None, None], r"images: expected one entry per prompt \(1\), got 2"),
    ],
)
def test_bad_images_name_the_shape(images, message):
    with pytest.raises((ValueError, TypeError), match=message):
        normalize_images(images, 1)


def test_to_pil_rgb_rejects_other_types():
    with pytest.raises(TypeError, match="photo: expected a PIL image"):
        to_pil_rgb(np.zeros((3, 4, 4)), "photo")
