import io

import numpy as np
import pytest
import torch
from PIL import Image

from prismrl.data.images import ImageTransform, decode_image, to_rgb


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(to_rgb(image), dtype=np.int64)


def test_grey_becomes_three_equal_channels():
    grey = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8))
    out = rgb_array(decode_image(encode(grey), "grey"))
    assert out.shape == (2, 2, 3)
    assert out[..., 0].tolist() == [[0, 100], [200, 255]]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_rgba_is_composited_on_white():
    # alpha 0 -> white, alpha 255 -> the color, alpha 128 -> 128/255 * c + 127/255 * 255
    pixels = np.array([[[200, 0, 50, 0], [200, 0, 50, 255], [200, 0, 50, 128]]], dtype=np.uint8)
    out = rgb_array(decode_image(encode(Image.fromarray(pixels)), "rgba"))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [200, 0, 50]
    expected = [round(128 / 255 * c + 127 / 255 * 255) for c in (200, 0, 50)]
    assert np.abs(out[0, 2] - np.array(expected)).max() <= 1


def test_la_and_palette_with_transparency():
    la = Image.fromarray(np.array([[[10, 0], [10, 255]]], dtype=np.uint8))  # mode LA
    assert rgb_array(decode_image(encode(la), "la"))[0].tolist() == [[255, 255, 255], [10, 10, 10]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    assert rgb_array(decode_image(encode(palette), "p"))[0].tolist() == [[255, 0, 0], [0, 0, 255]]
    palette.info["transparency"] = 0  # index 0 transparent -> white
    decoded = decode_image(encode(palette), "p-transparent")
    assert rgb_array(decoded)[0].tolist() == [[255, 255, 255], [0, 0, 255]]


def test_cmyk_and_sixteen_bit():
    cmyk = Image.new("CMYK", (1, 1), (0, 0, 0, 0))  # no ink = white
    assert rgb_array(decode_image(encode(cmyk, "JPEG"), "cmyk"))[0, 0].tolist() == [255, 255, 255]
    deep = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))  # mode I;16
    decoded = decode_image(encode(deep), "i16")
    assert decoded.mode.startswith("I")
    assert rgb_array(decoded)[0, :, 0].tolist() == [0, 100, 255]


def test_transform_resizes_and_normalizes_like_the_formula():
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out = ImageTransform(image_size=9, mean=mean, std=std)(encode(image))
    assert out.shape == (3, 9, 9) and out.dtype == torch.float32
    resized = np.asarray(image.resize((9, 9), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    expected = (resized - np.array(mean)) / np.array(std)  # [H, W, 3]
    torch.testing.assert_close(out, torch.tensor(expected.transpose(2, 0, 1), dtype=torch.float32))
    same = ImageTransform(image_size=7)(Image.fromarray(np.zeros((7, 7, 3), np.uint8)))
    torch.testing.assert_close(same[0], torch.full((7, 7), -0.485 / 0.229))


def test_undecodable_bytes_name_the_sample():
    with pytest.raises(ValueError, match=r"row 17 of column 'image' in train\.parquet"):
        decode_image(b"definitely not an image", "row 17 of column 'image' in train.parquet")
    with pytest.raises(ValueError, match="sample 'digits-000012' key 'png'.*empty"):
        decode_image(b"", "sample 'digits-000012' key 'png'")
    with pytest.raises(ValueError, match="expected encoded image bytes"):
        decode_image("a string", "x")


def test_transform_argument_errors():
    with pytest.raises(ValueError, match="image_size"):
        ImageTransform(image_size=0)
    with pytest.raises(ValueError, match="image_std"):
        ImageTransform(std=(1.0, 0.0, 1.0))
    with pytest.raises(TypeError, match="PIL image or bytes"):
        ImageTransform(8)(np.zeros((8, 8, 3)))
