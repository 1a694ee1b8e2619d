"""QLoRA on the text encoder: the shipped MiniLM loaded with 8-bit base weights (bitsandbytes ``Linear8bitLt``, on CPU)
encodes like the float32 one; under LoRA only the adapters train, the alignment preset fits with the int8 base left
bit-identical, its checkpoints leave that base out and resume exactly; bad settings are named errors."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F

from prismrl.backbones.text import HFTextEncoder

bnb = pytest.importorskip("bitsandbytes")
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")

MINILM = "shipped:all-minilm-l6-v2"
PRESET = "configs/alignment/qlora_text_minilm.yaml"
RUN = "runs/alignment/qlora_text_minilm/version_0/checkpoints"
TEXTS = ["a photo of the digit seven", "zero", "a handwritten three on a grey background", "the number 8, written twice"]
SHORT = ["--trainer.max_epochs", "1", "--trainer.max_steps", "2", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1",
         "--data.init_args.loader.batch_size", "16", "--data.init_args.image_size", "32"]


@pytest.fixture(scope="module")
def encoder_8bit() -> HFTextEncoder:
    torch.manual_seed(0)
    return HFTextEncoder(MINILM, quantization="8bit", lora={"r": 4, "alpha": 8}, max_length=32)


def test_8bit_text_encoder_uses_linear8bitlt_and_trains_only_lora(encoder_8bit):
    base = encoder_8bit.model.get_base_model()
    int8 = [m for m in base.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert len(int8) == 6 * 6  # query, key, value, attention output, intermediate, output in each of the 6 layers
    assert all(m.weight.dtype == torch.int8 for m in int8)
    plain = [n for n, m in base.named_modules() if type(m) is torch.nn.Linear and "lora_" not in n]
    assert plain == []  # every base linear layer is quantized
    trainable = [n for n, p in encoder_8bit.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {p.dtype for p in encoder_8bit.parameters()} == {torch.int8, torch.float32}


def test_8bit_text_encoder_pools_like_float32(encoder_8bit):
    reference = HFTextEncoder(MINILM, max_length=32).eval()
    with torch.no_grad():  # LoRA's B starts at zero: the adapted 8-bit encoder equals its int8 base here
        quantized = encoder_8bit.eval().encode(TEXTS).pooled
        full = reference.encode(TEXTS).pooled
    encoder_8bit.train()
    cosine = F.cosine_similarity(quantized, full, dim=-1)  # [B]; measured 0.9988-0.9995
    assert cosine.min() > 0.995, cosine
    assert not torch.equal(quantized, full)  # the int8 path really ran


def test_8bit_text_encoder_backward_reaches_lora_only(encoder_8bit):
    out = encoder_8bit.encode(TEXTS[:2]).pooled
    out.pow(2).mean().backward()
    grads = {n: p.grad for n, p in encoder_8bit.named_parameters() if p.requires_grad}
    first_layer = [g for n, g in grads.items() if "layer.0." in n and "lora_B" in n]  # reached through 5 int8 layers
    assert first_layer and all(g is not None and g.abs().sum() > 0 for g in first_layer)
    assert all(g is not None for g in grads.values())
    assert all(p.grad is None for p in encoder_8bit.parameters() if not p.requires_grad)
    encoder_8bit.zero_grad(set_to_none=True)


def test_quantization_without_lora_is_refused():
    with pytest.raises(ValueError, match=r"quantization: '8bit' base weights cannot be trained; expected lora .*lora=None"):
        HFTextEncoder(MINILM, quantization="8bit")


def test_an_unknown_quantization_is_refused():
    with pytest.raises(ValueError, match=r"quantization: expected one of \('4bit', '8bit'\) or None, received 'int8'"):
        HFTextEncoder(MINILM, quantization="int8", lora={"r": 4})


def test_quantization_of_a_random_init_tiny_config_is_refused():
    tiny = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64}
    with pytest.raises(ValueError, match=r"quantization: expected None with tiny_config .*received '8bit'"):
        HFTextEncoder(tiny_config=tiny, quantization="8bit", lora={"r": 4})


@cpu_only
def test_4bit_without_cuda_is_refused():
    with pytest.raises(ValueError, match=r"quantization: expected '8bit' or None .* received '4bit'"):
        HFTextEncoder(MINILM, quantization="4bit", lora={"r": 4})


# ----- the alignment preset: fit, checkpoint, resume -----

def _build(repo_root, workdir, *args):
    from prismrl.cli import build_cli

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return build_cli(["--config", str(repo_root / PRESET), *SHORT, *args], run=False)
    finally:
        os.chdir(cwd)


def _fit(cli, workdir, ckpt_path=None) -> float:
    from lightning.pytorch.callbacks import ModelCheckpoint

    cli.trainer.callbacks.append(ModelCheckpoint(dirpath=workdir / "steps", every_n_train_steps=1, save_top_k=-1,
                                                 filename="{step}"))
    cwd, start = os.getcwd(), time.perf_counter()
    os.chdir(workdir)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    finally:
        os.chdir(cwd)
    return time.perf_counter() - start


def _base_keys(state: dict) -> list[str]:
    return [k for k in state if k.startswith("text_tower.encoder.model.") and "lora_" not in k]


@pytest.fixture(scope="module")
def preset_run(repo_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("qlora_text")
    cli = _build(repo_root, workdir)
    before = {k: v.detach().clone() for k, v in cli.model.state_dict().items()}
    seconds = _fit(cli, workdir)
    return workdir, cli, before, seconds


@pytest.mark.slow
def test_the_preset_fits_moves_lora_and_leaves_the_int8_base_bit_identical(preset_run):
    _, cli, before, _ = preset_run
    assert cli.trainer.global_step == 2
    assert torch.isfinite(torch.tensor(float(cli.trainer.callback_metrics["train/loss"])))
    after = cli.model.state_dict()
    lora_b = [k for k in after if k.startswith("text_tower.") and "lora_B" in k]
    assert lora_b and any(not torch.equal(after[k], before[k]) for k in lora_b)
    base = _base_keys(after)
    assert sum(after[k].dtype == torch.int8 for k in base) == 36 and any(k.endswith(".SCB") for k in base)
    for key in base:  # int8 weights, their scales, embeddings and norms
        assert torch.equal(after[key], before[key]), key
    projection = [k for k in after if k.startswith("text_tower.") and "encoder." not in k]
    assert projection and any(not torch.equal(after[k], before[k]) for k in projection)  # the head trains too


@pytest.mark.slow
def test_the_preset_checkpoint_leaves_the_int8_base_out_and_reloads(preset_run):
    from prismrl.lightning_modules.alignment import AlignmentModule
    from prismrl.lightning_modules.plumbing import CHECKPOINT_KEY

    workdir, cli, _, _ = preset_run
    path = workdir / RUN / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    kept = checkpoint["state_dict"]
    assert not _base_keys(kept) and all(v.dtype != torch.int8 for v in kept.values())
    assert any("lora_B" in k for k in kept) and any(k.startswith("image_tower.encoder.") for k in kept)
    record = checkpoint[CHECKPOINT_KEY]["frozen_weights"]
    assert record["children"] == ["text_tower"] and record["count"] > 36
    reloaded = AlignmentModule.load_from_checkpoint(path, map_location="cpu")
    expected, actual = cli.model.state_dict(), reloaded.state_dict()
    assert actual.keys() == expected.keys()
    for key, value in expected.items():  # the int8 base rebuilt from the shipped weights, the rest from the file
        assert torch.equal(actual[key], value), key


@pytest.mark.slow
def test_the_preset_resumes_from_a_mid_run_checkpoint_exactly(repo_root, preset_run, tmp_path):
    workdir, full, _, _ = preset_run
    resumed = _build(repo_root, tmp_path)
    _fit(resumed, tmp_path, ckpt_path=workdir / "steps" / "step=1.ckpt")
    assert resumed.trainer.global_step == full.trainer.global_step == 2
    expected, actual = full.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)
