"""Peak memory and time of chunked vs naive token log-probs at a Qwen-size vocabulary.

    python benchmarks/logprob_memory.py                          # CPU: 2048 rows, V = 151,936
    python benchmarks/logprob_memory.py --chunk-sizes 0,220      # default blocks and 220-row blocks
    python benchmarks/logprob_memory.py --threads 1              # steadier on a shared CPU
    python benchmarks/logprob_memory.py --rows 8192              # on a GPU (picked automatically)
    python benchmarks/logprob_memory.py --source hidden --rows 512 --hidden-size 576 --repeats 1   # from h

--source logits (the default) starts from given logits [N, V]:
naive:      torch.log_softmax(logits.float(), -1).gather(-1, tokens)   (materializes float32 [N, V])
chunked(n): prismrl.rl.logprobs.token_logprobs(logits, tokens, chunk_size=n)
--source hidden starts from last hidden states h [N, H] and an output head W [V, H] (the policy's case):
naive:      log_softmax((h @ W.T).float(), -1).gather(...)     (full [N, V] logits, their float32 copy, ...)
chunked(n): token_logprobs(h @ W.T, tokens, n)                 (full logits, blocked log-softmax)
hidden(n):  prismrl.rl.hidden_logprobs.hidden_token_logprobs(h, head, tokens, V, chunk_size=n): blocks of
            n rows through the head, checkpointed, so no [N, V] tensor exists in forward or backward.
In fwd+bwd the gradient flows to h and, with --train-head, to W too; W.grad is allocated (zeros) before
the measurement, since a trained head's gradient exists in every variant.

"peak extra" is the memory above what the logits (and tokens) already hold: on CUDA
torch.cuda.max_memory_allocated minus the allocation before the call; on CPU each variant runs in
its own subprocess and reports the growth of the resident-set high-water mark (ru_maxrss), since
tracemalloc does not see torch's allocations. In the fwd+bwd pass the gradient w.r.t. the logits
([N, V] in the logits' dtype) is part of the peak of every variant. "wall ms" is the fastest of
--repeats runs after one warm-up run (the minimum is the least disturbed by other processes);
"cpu ms" is the fastest process CPU time (user + system, summed over threads), steadier than wall
time on a busy machine.
Ratios are vs the naive row of the same dtype and pass, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from prismrl.rl.hidden_logprobs import default_hidden_chunk_size, hidden_token_logprobs
from prismrl.rl.logprobs import default_chunk_size, token_logprobs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def _run_once(chunk: int, logits: torch.Tensor, tokens: torch.Tensor, backward: bool) -> None:
    """chunk 0 = naive log_softmax + gather, else chunked token_logprobs with ``chunk`` rows per block."""
    logits.grad = None
    with torch.set_grad_enabled(backward):
        if chunk == 0:
            out = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        else:
            out = token_logprobs(logits, tokens, chunk)
        if backward:
            out.sum().backward()
    if logits.device.type == "cuda":
        torch.cuda.synchronize()


def _run_hidden(variant: str, chunk: int, hidden: torch.Tensor, head: torch.nn.Linear, tokens: torch.Tensor,
                backward: bool) -> None:
    """From hidden states [1, N, H]: "naive" / "chunked" build full logits, "hidden" never does."""
    hidden.grad = None
    if head.weight.grad is not None:
        head.weight.grad.zero_()
    with torch.set_grad_enabled(backward):
        if variant == "hidden":
            out = hidden_token_logprobs(hidden, head, tokens, head.out_features, chunk_size=chunk)[0]
        elif variant == "chunked":
            out = token_logprobs(head(hidden), tokens, chunk)
        else:
            out = torch.log_softmax(head(hidden).float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        if backward:
            out.sum().backward()
    if hidden.device.type == "cuda":
        torch.cuda.synchronize()


def measure(chunk: int, dtype: str, rows: int, vocab: int, backward: bool, repeats: int, device: torch.device,
            variant: str = "", hidden_size: int = 0, train_head: bool = False) -> dict:
    """Peak extra bytes and fastest seconds of one variant in this process (a fresh process on CPU).

    ``variant`` "" measures from logits (chunk 0 = naive); "naive" / "chunked" / "hidden" from hidden states."""
    torch.manual_seed(0)
    tokens = torch.randint(0, vocab, (1, rows), device=device)
    if variant:
        head = torch.nn.Linear(hidden_size, vocab, bias=False, device=device, dtype=DTYPES[dtype])
        head.weight.requires_grad_(backward and train_head)
        if backward and train_head:
            head.weight.grad = torch.zeros_like(head.weight)
        hidden = torch.randn(1, rows, hidden_size, dtype=DTYPES[dtype], device=device).requires_grad_(backward)
        run = lambda: _run_hidden(variant, chunk, hidden, head, tokens, backward)
    else:
        logits = torch.empty(1, rows, vocab, dtype=DTYPES[dtype], device=device).normal_(0.0, 3.0)  # no temp copy
        logits.requires_grad_(backward)
        run = lambda: _run_once(chunk, logits, tokens, backward)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _maxrss_bytes()
    run()  # warm-up
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _maxrss_bytes()
    return {"peak_extra": peak - base, "seconds": min(times), "cpu_seconds": min(cpu_times)}


def measure_in_subprocess(args: argparse.Namespace, chunk: int, dtype: str, backward: bool, variant: str = "") -> dict:
    cmd = [sys.executable, __file__, "--worker", str(chunk), "--dtypes", dtype, "--rows", str(args.rows),
           "--vocab", str(args.vocab), "--repeats", str(args.repeats), "--device", "cpu",
           "--threads", str(args.threads), "--hidden-size", str(args.hidden_size)]
    if variant:
        cmd += ["--variant", variant]
    if backward:
        cmd.append("--backward")
    if args.train_head:
        cmd.append("--train-head")
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048, help="B * T positions")
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--chunk-sizes", default="0", help="rows per block, comma-separated; 0 = default_chunk_size")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = torch's default")
    parser.add_argument("--source", default="logits", choices=["logits", "hidden"],
                        help="start from logits [N, V] or from hidden states [N, H] through a head [V, H]")
    parser.add_argument("--hidden-size", type=int, default=896, help="H with --source hidden (Qwen2.5-0.5B: 896)")
    parser.add_argument("--train-head", action="store_true", help="with --source hidden: the head's weight trains")
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)  # worker only
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # worker only: chunk rows, 0 = naive
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)  # worker only: naive|chunked|hidden
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.dtypes, args.rows, args.vocab, args.backward, args.repeats, device,
                                 args.variant, args.hidden_size, args.train_head)))
        return
    chunks = [int(c) or default_chunk_size(args.vocab, device) for c in args.chunk_sizes.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    logits_mib = args.rows * args.vocab / 2**20
    print(f"device={name} rows={args.rows} vocab={args.vocab} repeats={args.repeats} source={args.source}"
          + (f" hidden_size={args.hidden_size} train_head={args.train_head}" if args.source == "hidden" else "")
          + f" load={os.getloadavg()[0]:.1f} (logits: {4 * logits_mib:.0f} MiB float32, {2 * logits_mib:.0f} MiB bf16)")
    if args.source == "hidden":  # 0 = each variant's default block size
        default_rows = {"chunked": default_chunk_size(args.vocab, device),
                        "hidden": default_hidden_chunk_size(args.vocab, device)}
        variants = [("naive", 0)] + [(v, int(c) or default_rows[v]) for c in args.chunk_sizes.split(",")
                                     for v in ("chunked", "hidden")]
    else:
        variants = [("", 0)] + [("", c) for c in chunks]
    print(f"{'dtype':9s} {'pass':13s} {'variant':13s} {'peak extra MiB':>15s} {'wall ms':>9s} {'cpu ms':>9s} "
          f"{'mem ratio':>10s} {'wall ratio':>11s} {'cpu ratio':>10s}")
    for dtype in args.dtypes.split(","):
        for backward in (False, True):
            baseline = None
            for kind, chunk in variants:
                if device.type == "cuda":
                    result = measure(chunk, dtype, args.rows, args.vocab, backward, args.repeats, device, kind,
                                     args.hidden_size, args.train_head)
                    torch.cuda.empty_cache()
                else:
                    result = measure_in_subprocess(args, chunk, dtype, backward, kind)
                baseline = baseline or result
                variant = "naive" if chunk == 0 else f"{kind or 'chunked'}({chunk})"
                print(f"{dtype:9s} {'fwd+bwd' if backward else 'fwd (no grad)':13s} {variant:13s} "
                      f"{result['peak_extra'] / 2**20:15.1f} {1e3 * result['seconds']:9.1f} "
                      f"{1e3 * result['cpu_seconds']:9.1f} "
                      f"{result['peak_extra'] / max(baseline['peak_extra'], 1):9.3f}x "
                      f"{result['seconds'] / baseline['seconds']:10.2f}x "
                      f"{result['cpu_seconds'] / baseline['cpu_seconds']:9.2f}x", flush=True)


if __name__ == "__main__":
    main()
