"""Training-forward throughput of a GRPO rollout batch: padded vs packed sequences.

    python benchmarks/grpo_packing.py                         # CPU: 32 rollouts, Llama 4x256, V = 49,153
    python benchmarks/grpo_packing.py --layers 12 --hidden 768 --rows 64 --device cuda --dtype bfloat16

A rollout batch holds prompts of similar length and completions of very different lengths (here uniform in
[min_completion, max_completion] tokens), right-padded to the longest. "padded" runs
``prismrl.policy.rollout.sequence_logprobs`` on that [B, T] batch; "packed" packs the same sequences into rows of
``--row-tokens`` (first-fit decreasing, per-segment positions, block-diagonal attention) and unpacks the
log-probs. Both runs do forward + backward of the masked completion log-prob sum with the same random-init
``LlamaForCausalLM`` (SDPA attention). Reported: real (non-pad) tokens per second, the fastest of --repeats
after a warm-up, and the ratio packed / padded measured in the same run; the largest log-prob difference
on completion tokens checks that both compute the same thing.
"""

from __future__ import annotations

import argparse
import time

import torch

from prismrl.backbones.tokenizers import load_smollm2_tokenizer, tiny_llama_config
from prismrl.policy.adapters import adapter_for
from prismrl.policy.rollout import PackingSettings, sequence_logprobs


def _batch(adapter, rows: int, prompt_words: int, lo: int, hi: int, generator: torch.Generator):
    prompts = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(prompt_words)) for i in range(rows)]
    lengths = torch.randint(lo, hi + 1, (rows,), generator=generator).tolist()
    completions = [torch.randint(100, 1000, (n,), generator=generator).tolist() for n in lengths]
    return adapter.append_completions(adapter.build_prompts(prompts), completions)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--prompt-words", type=int, default=24)
    parser.add_argument("--min-completion", type=int, default=4)
    parser.add_argument("--max-completion", type=int, default=256)
    parser.add_argument("--row-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = load_smollm2_tokenizer()
    heads = max(1, args.hidden // 64)
    config = tiny_llama_config(tokenizer, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                               num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=heads,
                               head_dim=args.hidden // heads)
    import transformers as tf

    dtype = getattr(torch, args.dtype)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(args.device, dtype).train()
    adapter = adapter_for(model, tokenizer)
    batch = _batch(adapter, args.rows, args.prompt_words, args.min_completion, args.max_completion,
                   torch.Generator().manual_seed(0)).to(args.device)
    mask = batch.loss_mask[:, 1:].bool()
    real_tokens = int(batch.attention_mask.sum())
    packing = PackingSettings(max_tokens_per_row=max(args.row_tokens, batch.seq_len))

    def run(pack: bool) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        logprobs, _ = sequence_logprobs(model, batch, packing=packing if pack else None)
        logprobs[mask].sum().backward()
        if args.device == "cuda":
            torch.cuda.synchronize()
        return logprobs.detach()

    difference = (run(True)[mask] - run(False)[mask]).abs().max().item()
    padded_s = _time(lambda: run(False), args.repeats)
    packed_s = _time(lambda: run(True), args.repeats)
    from prismrl.policy.packing import pack_sequences

    packed_rows = len(pack_sequences(batch, packing.max_tokens_per_row).rows)
    print(f"device {args.device}, {args.dtype}, Llama {args.layers}x{args.hidden}, vocab {len(tokenizer):,}")
    print(f"{args.rows} rollouts: {real_tokens:,} real tokens; padded [B, T] = [{batch.batch_size}, {batch.seq_len}] "
          f"({batch.batch_size * batch.seq_len:,} slots), packed into {packed_rows} rows of <= {packing.max_tokens_per_row}")
    print(f"{'variant':8s} {'ms':>9s} {'real tok/s':>12s} {'ratio':>7s}")
    for name, seconds in (("padded", padded_s), ("packed", packed_s)):
        print(f"{name:8s} {seconds * 1e3:9.1f} {real_tokens / seconds:12,.0f} {padded_s / seconds:7.2f}x")
    print(f"max |logprob difference| on completion tokens: {difference:.2e}")


if __name__ == "__main__":
    main()
