"""``prismrl predict --ckpt_path ...`` for the alignment, actor-critic, GRPO and generator PPO stages: each trains a
step or two, saves a checkpoint, predicts from it, and the rows of ``predict/version_0/predictions.parquet`` are read
back and checked against the module's own outputs."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from prismrl.cli import build_cli
from prismrl.data.digits import DIGIT_NAMES


def _in(workdir, args):
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return build_cli(args)
    finally:
        os.chdir(cwd)


def _predict(repo_root, workdir, config, ckpt, *args):
    cli = _in(workdir, ["predict", "--config", str(repo_root / config), "--ckpt_path", str(ckpt), *args])
    folder = workdir / cli.trainer.default_root_dir / "predict/version_0"
    return cli, pq.read_table(folder / "predictions.parquet").to_pylist(), torch.load(folder / "predictions.pt",
                                                                                      weights_only=True)


@pytest.mark.slow
def test_alignment_predict_writes_unit_embeddings_per_example_to_parquet(repo_root, tmp_path):
    config = "configs/alignment/tiny.yaml"
    _in(tmp_path, ["fit", "--config", str(repo_root / config), "--trainer.max_epochs", "1",
                   "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"])
    ckpt = tmp_path / "runs/alignment/tiny/version_0/checkpoints/last.ckpt"
    cli, rows, batches = _predict(repo_root, tmp_path, config, ckpt, "--trainer.limit_predict_batches", "2")
    assert len(rows) == 64 and [r["row"] for r in rows] == list(range(64))
    assert set(rows[0]) == {"row", "image", "text", "caption", "labels"}
    image = np.array([r["image"] for r in rows])  # [64, 64]
    assert image.shape == (64, 64) and np.allclose(np.linalg.norm(image, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(image[:32], batches[0]["image"].numpy(), rtol=0, atol=0)
    np.testing.assert_array_equal([r["labels"] for r in rows[:32]], batches[0]["labels"].numpy())
    with torch.no_grad():  # the caption's embedding, recomputed alone
        text = cli.model.eval().embed_texts([rows[5]["caption"]])[0].numpy()
    np.testing.assert_allclose(np.array(rows[5]["text"]), text, atol=1e-5)


@pytest.mark.slow
def test_actor_critic_predict_cli_and_the_python_api_agree_on_raw_text_and_image(repo_root, tmp_path):
    config = "configs/actor_critic/tiny.yaml"
    fit = _in(tmp_path, ["fit", "--config", str(repo_root / config), "--trainer.max_epochs", "1",
                         "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"])
    ckpt = tmp_path / "runs/actor_critic/tiny/version_0/checkpoints/last.ckpt"
    cli, rows, _ = _predict(repo_root, tmp_path, config, ckpt, "--trainer.limit_predict_batches", "1")
    assert len(rows) == 16
    assert {"actions", "values", "policy_probs", "classes", "class_probs", "labels"} <= set(rows[0])
    for row in rows:
        assert abs(sum(row["class_probs"]) - 1) < 1e-5 and abs(sum(row["policy_probs"]) - 1) < 1e-5
        assert row["classes"] == int(np.argmax(row["class_probs"])) and len(row["policy_probs"]) == 10

    from prismrl.lightning_modules.actor_critic import ActorCriticModule

    model = ActorCriticModule.load_from_checkpoint(ckpt, weights_only=True)
    assert model.class_names == list(DIGIT_NAMES) == fit.model.class_names
    inner = cli.datamodule.inner
    raw = pq.read_table(inner.hparams.val_path, columns=["image", "caption"]).slice(0, 4).to_pylist()
    results = model.predict(texts=[r["caption"] for r in raw], images=[r["image"] for r in raw])  # PNG bytes
    assert len(results) == 4
    for result, row in zip(results, rows[:4]):  # the same examples through the datamodule's transform
        np.testing.assert_allclose(result["class_probs"], row["class_probs"], atol=1e-5)
        np.testing.assert_allclose(result["action_probs"], row["policy_probs"], atol=1e-5)
        assert result["class"] == DIGIT_NAMES[row["classes"]] and result["action"] == row["actions"]
    from PIL import Image

    pil = Image.new("RGB", (40, 20), (255, 255, 255))  # any size: resized to the encoder's 32 px
    assert set(model.predict(texts=["an even digit"], images=[pil])[0]) == {
        "action", "action_probs", "value", "class_id", "class", "class_probs"}
    with pytest.raises(ValueError, match=r"texts: expected one text per image \(1\), received 2"):
        model.predict(texts=["a", "b"], images=[pil])


@pytest.mark.slow
def test_grpo_predict_writes_a_greedy_completion_and_reward_per_prompt(repo_root, tmp_path, cli_tools):
    config = "configs/grpo/tiny.yaml"
    fit = cli_tools.run(config, tmp_path, "--trainer.max_steps", "4", "--trainer.limit_val_batches", "0", run=False)
    cli_tools.fit(fit, tmp_path)
    ckpt = tmp_path / "grpo.ckpt"
    fit.trainer.save_checkpoint(ckpt)
    cli, rows, _ = _predict(repo_root, tmp_path, config, ckpt, "--trainer.limit_predict_batches", "1")
    assert len(rows) == 4 and set(rows[0]) == {"row", "prompt", "completion", "answer", "reward"}
    records = list(cli.datamodule.dataset("val"))[:4]
    assert [r["prompt"] for r in rows] == [r.prompt for r in records]
    assert [r["answer"] for r in rows] == [r.answer for r in records]
    assert [r["completion"] for r in rows] == cli.model.generate(records)  # greedy: the same text again
    from prismrl.rewards.functions import score_completions

    scores = score_completions(cli.model.reward, [r["completion"] for r in rows], records).total
    np.testing.assert_allclose([r["reward"] for r in rows], scores.float().numpy(), atol=1e-6)


@pytest.mark.slow
def test_generator_ppo_predict_writes_one_parsed_example_per_request(repo_root, tmp_path):
    config = "configs/generator_ppo/tiny.yaml"
    small = ["--data.init_args.iterations_per_epoch", "1"]
    _in(tmp_path, ["fit", "--config", str(repo_root / config), "--trainer.max_epochs", "1", *small])
    ckpt = tmp_path / "runs/generator_ppo/tiny/version_0/checkpoints/last.ckpt"
    cli, rows, _ = _predict(repo_root, tmp_path, config, ckpt, *small)
    assert len(rows) == 4 and [r["request_id"] for r in rows] == [0, 1, 2, 3]
    assert [r["label"] for r in rows] == ["negative", "positive"] * 2 and [r["label_id"] for r in rows] == [0, 1] * 2
    for row in rows:
        assert row["label"] in row["prompt"] and row["status"] in {"ok", "empty", "unparseable", "off_class"}
        assert row["prompt"] == cli.model.render_request(row["label_id"], row["request_id"])
        assert (row["status"] == "ok") == bool(row["text"])
