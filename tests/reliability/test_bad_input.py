"""The bad-input catalogue: each mistake fails before training with a message that names the field, and leaves no
checkpoint behind. Cases run the real CLI on the tiny presets (or the real DataModules on real files)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from prismrl.cli import build_cli

ALIGN, GRPO, AC, MLM, VL, PPO = (f"configs/{name}.yaml" for name in (
    "alignment/tiny", "grpo/tiny", "actor_critic/tiny", "masked_lm/tiny", "vl_sft/tiny_trm", "generator_ppo/tiny"))
CLI_CASES = [
    (ALIGN, ["--model.init_args.contrastive", "clipp"], r"contrastive: expected one of \['clip', 'siglip'\], received 'clipp'"),
    (ALIGN, ["--model.init_args.matryoshka_dims", "[32, 16]"], r"matryoshka_dims: expected strictly increasing"),
    (ALIGN, ["--model.init_args.optimizer.lr", "-1"], r"optimizer.lr: expected a finite float > 0, received -1"),
    (ALIGN, ["--model.init_args.optimizer.lr", ".inf"], r"optimizer.lr: expected a finite float > 0, received inf"),
    (ALIGN, ["--model.init_args.optimizer.warmup_ratio", "1.5"], r"optimizer.warmup_ratio: expected a float in \[0, 1\)"),
    (ALIGN, ["--model.init_args.optimizer.betas", "[0.9, 1.5]"], r"optimizer.betas: expected two floats in \[0, 1\)"),
    (ALIGN, ["--model.init_args.optimizer.max_grad_norm", "0"], r"optimizer.max_grad_norm: expected a finite float > 0"),
    (ALIGN, ["--model.init_args.text_dropout", "1.5"], r"text_dropout: expected a probability in \[0, 1\), received 1.5"),
    (ALIGN, ["--data.init_args.loader.batch_size", "0"], r"loader.batch_size: expected an int >= 1, received 0"),
    (GRPO, ["--model.init_args.minibatch_size", "0"], r"minibatch_size: expected an int >= 1, received 0"),
    (GRPO, ["--model.init_args.group_size", "1"], r"group_size: expected an int >= 2"),
    (GRPO, ["--model.init_args.num_iterations", "0"], r"num_iterations: expected an int >= 1, received 0"),
    (GRPO, ["--model.init_args.loss_aggregation", "mean"], r"loss_aggregation: expected one of .*received 'mean'"),
    (GRPO, ["--model.init_args.kl_estimator", "k9"], r"kl_estimator: expected one of .*received 'k9'"),
    (GRPO, ["--model.init_args.advantage_scaling", "rank"], r"advantage_scaling: expected one of .*received 'rank'"),
    (GRPO, ["--model.init_args.sampling.temperature", "0"], r"sampling.temperature: expected a finite float > 0"),
    (GRPO, ["--model.init_args.sampling.top_p", "1.5"], r"sampling.top_p"),
    (GRPO, ["--model.init_args.rollout.engine", "sglang"], r"rollout.engine: expected one of .*received 'sglang'"),
    (GRPO, ["--model.init_args.objective", "ppo"], r"objective: expected one of .*received 'ppo'"),
    (GRPO, ["--model.init_args.advantage_estimator", "gae"], r"advantage_estimator: expected one of .*received 'gae'"),
    (GRPO, ["--model.init_args.reward", '{"class_path": "prismrl.rewards.functions.CallableReward", '
                                        '"init_args": {"function": "no_such_pkg.rewards:score"}}'],
     r"function: cannot import module 'no_such_pkg.rewards'"),
    (GRPO, ["--model.init_args.policy", '{"tiny_config": {"model_type": "qwen2_vl"}, "quantization": "4bit"}'],
     r"quantization: only applies to pretrained weights"),
    (GRPO, ["--model.init_args.policy", '{"tiny_config": {"model_type": "mllama"}}'], r"mllama"),
    (AC, ["--model.init_args.mode", "offline"], r"mode: expected one of .*received 'offline'"),
    (AC, ["--model.init_args.modalities", "audio"], r"modalities: expected one of .*received 'audio'"),
    (AC, ["--model.init_args.num_classes", "1"], r"num_classes: expected an int >= 2, received 1"),
    (MLM, ["--model.init_args.domain_tokens", "['<A B>']"], r"domain_tokens: expected non-empty tokens without whitespace"),
    (VL, ["--model.init_args.decoder_lr", "-0.1"], r"decoder_lr"),
    (PPO, ["--model.init_args.ppo_epochs", "0"], r"ppo_epochs: expected an int >= 1, received 0"),
    (PPO, ["--model.init_args.icl_strategy", "best"], r"icl_strategy: expected one of .*received 'best'"),
    (PPO, ["--model.init_args.kl_estimator", "k5"], r"kl_estimator: expected one of .*received 'k5'"),
    (PPO, ["--model.init_args.minibatch_size", "0"], r"minibatch_size: expected an int >= 1, received 0"),
    (PPO, ["--model.init_args.value_lr", "0"], r"value_lr: expected a finite float > 0, received 0"),
    (PPO, ["--model.init_args.kl_coef", "-1"], r"kl_coef: expected a finite float >= 0, received -1"),
    (GRPO, ["--model.init_args.sampling.max_new_tokens", "0"], r"sampling.max_new_tokens: expected an int >= 1"),
    (GRPO, ["--model.init_args.sampling.top_k", "-1"], r"sampling.top_k: expected an int >= 0"),
    (GRPO, ["--model.init_args.packing", '{"max_tokens_per_row": 0}'], r"packing.max_tokens_per_row: expected an int >= 1"),
    (GRPO, ["--model.init_args.packing", '{"attention": "flash"}'], r"packing.attention: expected one of .*received 'flash'"),
    (ALIGN, ["--model.init_args.optimizer.weight_decay", "-0.1"], r"optimizer.weight_decay: expected a finite float >= 0"),
    (ALIGN, ["--model.init_args.optimizer.min_lr_ratio", "2"], r"optimizer.min_lr_ratio: expected a float in \[0, 1\]"),
    (AC, ["--data.init_args.loader.num_workers", "-1"], r"loader.num_workers: expected an int >= 0, received -1"),
]


def _messages(err: BaseException, stderr: str) -> str:
    chain, seen = [stderr], err
    while seen is not None:
        chain.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    return "\n".join(chain)


@pytest.mark.parametrize("config,args,expected", CLI_CASES, ids=[f"{Path(c).parent.name}:{a[0].rsplit('.', 1)[-1]}:{a[-1][:20]}"
                                                                 for c, a, _ in CLI_CASES])
def test_bad_config_values_fail_before_training(repo_root, tmp_path, capsys, config, args, expected):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises((ValueError, TypeError, FileNotFoundError, SystemExit)) as info:
            build_cli(["fit", "--config", str(repo_root / config), *args, "--trainer.max_steps", "1"])
    finally:
        os.chdir(cwd)
    import re

    assert re.search(expected, _messages(info.value, capsys.readouterr().err)), _messages(info.value, "")[-2000:]
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_missing_local_model_folder_is_not_taken_for_a_hub_id(tmp_path):
    from prismrl.backbones import HFTextEncoder
    from prismrl.backbones.shipped import resolve_model_path

    missing = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match=r"model_name_or_path: expected a local model folder .*no_such_model"):
        HFTextEncoder(model_name_or_path=missing)
    assert resolve_model_path("org/name") == "org/name"  # a hub id passes unchanged (loaded only where a hub is reachable)


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    from prismrl.datamodules.parquet import ParquetDataModule

    bogus = tmp_path / "train.parquet"
    bogus.write_text("caption,label\na cat,0\n")
    with pytest.raises(ValueError, match=r"train_path: '.*train.parquet' is not a readable Parquet file"):
        ParquetDataModule(train_path=bogus, class_names=["a"]).setup("fit")


def _write_shard(path: Path, samples: int) -> None:
    from PIL import Image

    with tarfile.open(path, "w") as tar:
        for i in range(samples):
            image = io.BytesIO()
            Image.new("RGB", (8, 8), (i, 0, 0)).save(image, format="PNG")
            for ext, data in (("png", image.getvalue()), ("txt", f"sample {i}".encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("cut", ["inside_a_member", "between_members"])
def test_a_truncated_webdataset_shard_is_named(tmp_path, cut):
    from prismrl.datamodules.webdataset import WebDataModule

    shard = tmp_path / "train-000.tar"
    _write_shard(shard, 6)
    data = shard.read_bytes()
    with tarfile.open(shard) as archive:
        last = archive.getmembers()[-1]
    end = int(len(data) * 0.4) if cut == "inside_a_member" else last.offset  # a whole sample is lost, silently
    shard.write_bytes(data[:end])
    with pytest.raises(ValueError, match=r"train_shards: shard '.*train-000.tar' (is truncated|is not a readable tar)"):
        WebDataModule(train_shards=str(shard), samples_per_epoch=6).setup("fit")
    _write_shard(shard, 6)
    WebDataModule(train_shards=str(shard), samples_per_epoch=6).setup("fit")  # a whole shard passes


def test_an_undecodable_image_fails_at_setup_naming_row_and_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from prismrl.datamodules.parquet import ParquetDataModule

    def png(i):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (i, i, i)).save(buffer, format="PNG")
        return buffer.getvalue()

    images = [png(i) for i in range(40)]
    images[30] = images[30][:20]  # cut inside the PNG data
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"image": images, "caption": [f"c{i}" for i in range(40)], "label": [i % 2 for i in range(40)]}),
                   path, row_group_size=16)
    with pytest.raises(ValueError, match=r"row 30 of column 'image' in train.parquet: could not decode image"):
        ParquetDataModule(train_path=str(path), class_names=["a", "b"]).setup("fit")
    ParquetDataModule(train_path=str(path), class_names=["a", "b"], image_check_rows=30).setup("fit")  # rows 0-29 only
    with pytest.raises(ValueError, match=r"image_check_rows: expected an int >= 0, received -1"):
        ParquetDataModule(train_path=str(path), class_names=["a", "b"], image_check_rows=-1)
