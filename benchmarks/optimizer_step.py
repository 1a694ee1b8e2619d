"""AdamW step time: the per-tensor loop (torch's CPU default) vs foreach vs the fused kernel prismrl uses by default.

Parameter shapes of SmolLM2-135M (embedding + 30 decoder layers), random gradients; repetitions alternate between the
variants so that load on a shared machine hits all of them alike. Prints the median step time and the ratio to the
loop, and the largest difference of the updated weights (fused vs loop).

    python benchmarks/optimizer_step.py --threads 2 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536), (576,), (576,)]
SHAPES = [(49152, 576)] + LAYER * 30
KERNELS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def build(kernel: str, seed: int = 0) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator) * 0.02) for s in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    return params, torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, **KERNELS[kernel])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = {name: build(name) for name in KERNELS}
    for _, optimizer in runs.values():
        optimizer.step()  # warm-up: allocates the state
    times: dict[str, list[float]] = {name: [] for name in KERNELS}
    for _ in range(args.repeats):
        for name, (_, optimizer) in runs.items():
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    params = sum(torch.Size(s).numel() for s in SHAPES)
    base = statistics.median(times["loop"])
    print(f"AdamW step over {params / 1e6:.1f} M parameters, {args.threads} threads, median of {args.repeats}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:8s} {median * 1000:8.1f} ms   {base / median:5.2f}x the loop")
    loop, fused = build("loop", seed=1), build("fused", seed=1)
    loop[1].step(), fused[1].step()
    diff = max((a - b).abs().max().item() for a, b in zip(loop[0], fused[0]))
    print(f"  max |fused - loop| after one step: {diff:.2e}")


if __name__ == "__main__":
    main()
