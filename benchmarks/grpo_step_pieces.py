"""The log-prob forwards of one GRPO step, each group's prompt shared vs every row in full, on one captured rollout.

    python benchmarks/grpo_step_pieces.py --mode lora --repeats 3 --threads 1

The GRPOModule of ``benchmarks/grpo_vs_trl.py``'s setting (shipped SmolLM2-135M-Instruct, arithmetic prompts with the
chat template, 2 prompts x 4 completions, at most 32 new tokens, gradient checkpointing, LoRA r16 or full
fine-tuning) samples one rollout; then, alternating within each repetition, each variant runs on that same batch:
- ``reference``: the no-grad reference forward (adapters off / the frozen copy): [B, T-1] log-probs;
- ``train``: the training forward with entropies + backward of sum(A * logp) (gradient checkpointing on).
``shared`` = ``share_prompt_prefix: true`` (``prismrl.policy.shared_prefix``), ``full`` = false. Reported: CPU
seconds (the process's CPU time; 1 thread keeps it comparable under load) and wall seconds, the median over
repetitions, the ratio full / shared, and the largest log-prob and gradient difference between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def build(mode: str):
    import yaml

    from prismrl.cli import build_cli

    with open(os.path.join(ROOT, "configs/grpo/smollm2_arithmetic.yaml")) as f:
        config = yaml.safe_load(f)
    init = config["model"]["init_args"]
    init["policy"]["lora"] = {"r": 16, "alpha": 32, "target_modules": "all-linear"} if mode == "lora" else None
    init["policy"]["gradient_checkpointing"] = True
    init.update(group_size=4, beta=0.04)
    init["sampling"].update(max_new_tokens=32, temperature=1.0, top_p=1.0)
    config["data"]["init_args"]["loader"]["batch_size"] = 2
    config["trainer"].update(logger=False, callbacks=[], enable_checkpointing=False)
    path = os.path.join("/tmp", f"grpo_step_pieces_{os.getpid()}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    cli = build_cli(["--config", path], run=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    records = next(iter(cli.datamodule.train_dataloader()))
    module = cli.model
    torch.manual_seed(0)
    with torch.no_grad():
        batch, _, _ = module.rollout(records)
    batch.advantages = torch.linspace(-1.0, 1.0, batch.batch_size)
    return module, batch


def reference(module, batch):
    from prismrl.policy.build import reference_of

    module.policy.eval()
    with torch.no_grad(), reference_of(module.policy, module.reference) as ref:
        return module._logprobs(ref, batch)[0], None


def train(module, batch):
    module.policy.train()
    module.policy.zero_grad(set_to_none=True)
    logprobs, _ = module._logprobs(module.policy, batch, with_entropy=True)  # [B, T-1]
    (batch.advantages.unsqueeze(1) * logprobs * batch.loss_mask[:, 1:]).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None])
    return logprobs.detach(), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="lora", choices=["lora", "full"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module, batch = build(args.mode)
    prompt = int(batch.loss_mask.float().argmax(1).min())
    print(f"rollout: {batch.batch_size} rows x {batch.input_ids.shape[1]} tokens (shared prompt {prompt}, "
          f"{int(batch.loss_mask.sum())} completion tokens)")
    pieces = {"reference": reference, "train": train}
    results = {(p, v): {"cpu": [], "wall": []} for p in pieces for v in ("shared", "full")}
    outputs = {}
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats + 1):  # the first round warms up (the head check, allocator)
        for piece, fn in pieces.items():
            for variant in ("shared", "full") if repeat % 2 == 0 else ("full", "shared"):
                module.hparams.share_prompt_prefix = variant == "shared"
                c0, t0 = time.process_time(), time.perf_counter()
                outputs[piece, variant] = fn(module, batch)
                cpu, wall = time.process_time() - c0, time.perf_counter() - t0
                if repeat:
                    results[piece, variant]["cpu"].append(cpu)
                    results[piece, variant]["wall"].append(wall)
        loads.append(os.getloadavg()[0])
    print(f"\n{args.mode}, {args.repeats} repetitions, {args.threads} thread(s), load {min(loads):.1f}-{max(loads):.1f}")
    print(f"{'piece':10s} {'variant':7s} {'CPU s':>7s} {'wall s':>7s} {'full/shared (CPU)':>18s} {'max |dlogp|':>12s} "
          f"{'max |dgrad|':>12s}")
    ratios = {}
    for piece in pieces:
        cpu = {v: statistics.median(results[piece, v]["cpu"]) for v in ("shared", "full")}
        ratios[piece] = round(cpu["full"] / cpu["shared"], 3)
        (a, ga), (b, gb) = outputs[piece, "shared"], outputs[piece, "full"]
        dlogp = float((a - b).abs().max())
        dgrad = float((ga - gb).abs().max()) if ga is not None else float("nan")
        for variant in ("shared", "full"):
            wall = statistics.median(results[piece, variant]["wall"])
            extra = f"{ratios[piece]:17.2f}x {dlogp:12.2e} {dgrad:12.2e}" if variant == "full" else ""
            print(f"{piece:10s} {variant:7s} {cpu[variant]:7.2f} {wall:7.2f} {extra}")
    print(json.dumps({"benchmark": "grpo_step_pieces", "mode": args.mode, "full_over_shared_cpu": ratios,
                      "rows": batch.batch_size, "tokens": batch.input_ids.shape[1], "shared_prompt": prompt,
                      "repeats": args.repeats, "threads": args.threads,
                      "machine": f"{platform.machine()} {os.cpu_count()} cpus", "torch": torch.__version__,
                      "load_avg": {"min": min(loads), "max": max(loads)}}))


if __name__ == "__main__":
    main()
