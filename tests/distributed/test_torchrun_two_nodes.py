"""The launch path a cluster uses: 2 "nodes" x 1 process on localhost, joined by torchrun's c10d rendezvous
(gloo over loopback), training the tiny GRPO preset with DDP (Lightning reads torchrun's environment)."""

from __future__ import annotations

import json
import sys

import pytest
from dist_launch import REPO, free_port, run_together

CSV_LOGGER = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "version": "run"}}'


@pytest.mark.slow
def test_two_nodes_one_process_each_through_torchrun_rendezvous(tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "prismrl-test", "--local-addr",
            "127.0.0.1", "--max-restarts", "0", "-m", "prismrl.cli", "fit", "--config", str(REPO / "configs/grpo/tiny.yaml"),
            "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp",
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.logger", CSV_LOGGER,
            "--trainer.callbacks", "[]", "--trainer.callbacks+=dist_recorders.PromptRecorder",
            "--trainer.callbacks.folder", str(tmp_path / "prompts"), "--data.init_args.max_train_prompts", "4",
            "--model.init_args.minibatch_size", "null", "--model.init_args.num_iterations", "1"]
    run_together([node, node], tmp_path, timeout=600)
    lines = [[json.loads(line) for line in (tmp_path / f"prompts/rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [line["rank"] for rank in lines for line in rank] == [0, 0, 1, 1]  # 2 steps on each of the 2 nodes
    for first, second in zip(*lines):
        assert not set(first["prompts"]) & set(second["prompts"])  # each node rolled out its own prompts
    assert (tmp_path / "runs").exists()
