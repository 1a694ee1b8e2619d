"""Training throughput (samples/s) of an alignment config, fp32 baseline vs bf16 autocast and MRL variants.

    python benchmarks/alignment_throughput.py --config configs/alignment/tiny.yaml --batch-size 32 --steps 10
    python benchmarks/alignment_throughput.py --config configs/alignment/vitb16_gpu.yaml --batch-size 128  # on a GPU

Every variant runs in this process on the same device with synthetic pixels and real digit captions; ratios
are relative to the first (fp32, all Matryoshka dims) row.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_model(config: str, device: torch.device):
    from prismrl.cli import build_cli

    cli = build_cli(["--config", config, "--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False)
    return cli.model.to(device), cli.datamodule


def time_steps(model, pixels, captions, steps: int, warmup: int, autocast_dtype, sample_single_dim: bool) -> float:
    model.train()
    model.loss.sample_single_dim = sample_single_dim
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    device_type = pixels.device.type
    for step in range(warmup + steps):
        if step == warmup:
            if device_type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out = model.loss(model.image_tower(pixels), model.text_tower.encode_texts(captions))
        out.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device_type == "cuda":
        torch.cuda.synchronize()
    return steps * pixels.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/alignment/tiny.yaml")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=None, help="default: the datamodule's image_size")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, datamodule = build_model(args.config, device)
    size = args.image_size or int(getattr(datamodule, "image_size", 224))
    pixels = torch.randn(args.batch_size, 3, size, size, device=device)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    captions = [f"a handwritten {names[i % 10]}" for i in range(args.batch_size)]
    variants = [("fp32, all MRL dims", None, False), ("fp32, one sampled MRL dim", None, True),
                ("bf16 autocast, all MRL dims", torch.bfloat16, False)]
    print(f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
          f"batch={args.batch_size}, image={size}px, steps={args.steps}, config={args.config}")
    baseline = None
    for name, dtype, single in variants:
        rate = time_steps(model, pixels, captions, args.steps, args.warmup, dtype, single)
        baseline = baseline or rate
        print(f"{name:32s} {rate:10.1f} samples/s   ratio vs baseline {rate / baseline:5.2f}x")
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
