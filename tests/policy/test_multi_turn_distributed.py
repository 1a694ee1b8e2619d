"""Dynamic sampling under two gloo processes: ranks that need different numbers of resampling rounds still run the
same number (an all-reduce per round) and keep batches of the same size (so the same optimizer steps)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD, G = 2, 2
# per rank, per round: the rewards of the groups sampled in that round (rank 0 needs 3 rounds, rank 1 only 1)
SCRIPT = {0: [[1, 1, 0, 1], [1, 1], [0, 1]], 1: [[0, 1, 1, 0]]}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))
    try:
        from prismrl.backbones.causal_lm import load_causal_lm
        from prismrl.backbones.tokenizers import (
            load_smollm2_tokenizer,
            tiny_llama_config,
        )
        from prismrl.data.records import PromptRecord
        from prismrl.policy.adapters import adapter_for
        from prismrl.policy.multi_turn import EpisodeSampler
        from prismrl.policy.rollout import HFRolloutEngine
        from prismrl.rl.shaping import DynamicSamplingSettings, any_rank

        assert any_rank(rank == 0) and not any_rank(False)
        tokenizer = load_smollm2_tokenizer()
        model, _ = load_causal_lm(config=tiny_llama_config(tokenizer), tokenizer=tokenizer)
        adapter = adapter_for(model, tokenizer)
        engine = HFRolloutEngine(model, adapter, [tokenizer.eos_token_id])
        calls = []

        def score(texts, rows):
            total = torch.tensor(SCRIPT[rank][len(calls)], dtype=torch.float32)
            calls.append(len(rows))
            return SimpleNamespace(total=total, components={})

        sampler = EpisodeSampler(adapter, [tokenizer.eos_token_id], G, dynamic=DynamicSamplingSettings(max_rounds=4))
        records = [PromptRecord(f"What is {k} + 1?", answer=str(k + 1)) for k in range(2)]
        out = sampler.sample(records, False, lambda batch, *a: [[5, tokenizer.eos_token_id]] * batch.batch_size,
                             score, engine, 4, "cpu", torch.float32)
        torch.save({"stats": {k: v.item() for k, v in out.stats.items()}, "rows": out.batch.batch_size,
                    "calls": calls}, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: gloo threads can abort a finished worker at exit


def test_ranks_run_the_same_rounds_and_optimizer_steps(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert ranks[0]["calls"] == [4, 2, 2]  # rank 0 resampled group 0, then group 1
    assert ranks[1]["calls"] == [4]  # rank 1 had nothing to resample, yet joined every round's all-reduce
    assert ranks[0]["stats"]["dynamic_rounds"] == ranks[1]["stats"]["dynamic_rounds"] == 3.0
    assert ranks[0]["stats"]["dynamic_filtered_groups"] == 0.0 and ranks[1]["stats"]["dynamic_filtered_groups"] == 0.0
    assert ranks[0]["rows"] == ranks[1]["rows"] == 4
