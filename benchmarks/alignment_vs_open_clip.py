"""One alignment training step: prismrl's AlignmentModule under Lightning vs open_clip's CLIP model + ClipLoss.

    pip install -e '.[bench]'                    # open_clip (benchmark-only; never imported by prismrl)
    python benchmarks/alignment_vs_open_clip.py --batch-size 16 --steps 3 --repeats 2 --threads 2
    python benchmarks/alignment_vs_open_clip.py --variants prismrl,open_clip,prismrl_compile,open_clip_compile

Same work on both sides: ViT-B/32 image towers (224 px, 12 x 768, GELU) and 12 x 512 causal text transformers
(vocab 49,408, every caption 77 tokens: captions are longer than 77 tokens and both tokenizers truncate), 512-d
embeddings, the symmetric CLIP loss with a learnable temperature, AdamW (lr 5e-4, betas 0.9 / 0.98, weight decay 0.2
off biases, norms and the scale), fp32, random-init weights and the same random pixels every step. Tokenization
runs inside the step on both sides. prismrl: ``AlignmentModule`` over ``EmbeddingTower``s of ``HFVisionEncoder``
(transformers ``CLIPVisionModel``) and ``HFTextEncoder`` (``CLIPTextModel``), Matryoshka off, trained by Lightning's
``Trainer`` with its default (fused) AdamW. open_clip: ``open_clip.model.CLIP`` (ViT-B-32 config) + ``ClipLoss``
+ ``torch.optim.AdamW`` in the loop of open_clip's ``train_one_epoch`` (clamping the scale after each step).
``*_compile`` variants run the towers through ``torch.compile`` (prismrl: ``compile_towers: true``).

Each run is its own process; variants alternate within each repetition, so load on a shared machine hits all
alike. Reported per variant: mean seconds per step over the measured steps of all runs (after --warmup steps),
samples/s, peak RSS (the process's ru_maxrss, model build included) and the trainable parameter count (checked
equal within 5%). The table is followed by one JSON line with the ratios (samples/s vs open_clip's, or vs
open_clip_compile's when open_clip is not run: > 1 means faster), machine, versions and load. On a loaded machine
compare the CPU-time ratio (``cpu_speed``, 1 thread): wall time there measures the other jobs as much as the step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMAGE, PATCH, CONTEXT, VOCAB = 224, 32, 77, 49408
# tower sizes: (vision width, layers, heads), (text width, layers, heads), embedding dim; MLPs are 4x wide
SIZES = {"b32": ((768, 12, 12), (512, 12, 8), 512), "s32": ((384, 6, 6), (256, 6, 4), 256)}
LR, WD, BETAS = 5e-4, 0.2, (0.9, 0.98)
# a caption longer than 77 tokens for either tokenizer, so both truncate to exactly CONTEXT tokens
WORDS = "a photo of a small brown dog running on the green grass next to a red ball and a wooden fence".split()


def _captions(batch: int) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(120)) for i in range(batch)]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _pixels(batch: int):
    import torch

    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))


def run_prismrl(size: str, batch: int, steps: int, warmup: int, compile_towers: bool) -> dict:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Callback

    from prismrl.backbones import EmbeddingTower, HFTextEncoder, HFVisionEncoder
    from prismrl.data.batches import ImageTextBatch
    from prismrl.lightning_modules.alignment import AlignmentModule
    from prismrl.optim import OptimizerSettings

    (v_width, v_layers, v_heads), (t_width, t_layers, t_heads), embed = SIZES[size]
    torch.manual_seed(0)
    vision = HFVisionEncoder(tiny_config={
        "model_type": "clip_vision_model", "image_size": IMAGE, "patch_size": PATCH, "hidden_size": v_width,
        "intermediate_size": 4 * v_width, "num_hidden_layers": v_layers, "num_attention_heads": v_heads,
        "hidden_act": "gelu"})
    text = HFTextEncoder(tiny_config={
        "model_type": "clip_text_model", "hidden_size": t_width, "intermediate_size": 4 * t_width,
        "num_hidden_layers": t_layers, "num_attention_heads": t_heads, "vocab_size": VOCAB,
        "max_position_embeddings": CONTEXT, "hidden_act": "gelu"}, pooling="mean", max_length=CONTEXT)
    module = AlignmentModule(
        EmbeddingTower(vision, embed, pooling="encoder"), EmbeddingTower(text, embed, pooling="encoder"),
        contrastive="clip", matryoshka_dims=[], compile_towers=compile_towers,
        optimizer=OptimizerSettings(lr=LR, encoder_lr=LR, weight_decay=WD, betas=BETAS))
    data = ImageTextBatch(pixel_values=_pixels(batch), captions=_captions(batch))
    loader = torch.utils.data.DataLoader([data] * (steps + warmup), batch_size=None, collate_fn=lambda x: x)
    times: list[float] = []
    cpu: list[float] = []

    class StepTimer(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            times.append(time.perf_counter() - self.start)
            cpu.append(time.process_time() - self.cpu)

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps + warmup, logger=False, callbacks=[StepTimer()],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader)
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"seconds": times[warmup:], "cpu_seconds": cpu[warmup:], "params": params, "peak_rss_mib": _rss_mib(),
            "text_tokens": int(text.tokenize(data.captions)["input_ids"].shape[1])}


def _open_clip_modules():
    """open_clip's model, loss and tokenizer modules. The package's __init__ imports its image transforms, which
    need torchvision; when torchvision does not import (the PyPI wheel needs CUDA's libtorch), load the three
    modules without it (the ViT and text towers and ClipLoss use no torchvision code)."""
    try:
        import open_clip

        return open_clip.model, open_clip.loss, open_clip.tokenizer
    except (ImportError, OSError, RuntimeError):
        for name in [n for n in sys.modules if n == "open_clip" or n.startswith(("open_clip.", "torchvision"))]:
            del sys.modules[name]
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        sys.exit("open_clip is not installed: pip install open-clip-torch==3.3.0 (see benchmarks/README.md)")
    import transformers  # noqa: F401  (before the stand-in below: it probes for torchvision)

    package = types.ModuleType("open_clip")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["open_clip"] = package
    misc = types.ModuleType("torchvision.ops.misc")

    class FrozenBatchNorm2d:  # only used to freeze ResNet towers
        def __init__(self, *args, **kwargs):
            raise RuntimeError("torchvision is needed for FrozenBatchNorm2d")

    misc.FrozenBatchNorm2d = FrozenBatchNorm2d
    for name, module in (("torchvision", types.ModuleType("torchvision")),
                         ("torchvision.ops", types.ModuleType("torchvision.ops")), ("torchvision.ops.misc", misc)):
        sys.modules[name] = module
    import open_clip.loss
    import open_clip.model
    import open_clip.tokenizer

    for name in ("torchvision.ops.misc", "torchvision.ops", "torchvision"):  # others look for a real torchvision
        del sys.modules[name]
    return open_clip.model, open_clip.loss, open_clip.tokenizer


def run_open_clip(size: str, batch: int, steps: int, warmup: int, compile_towers: bool) -> dict:
    import torch

    model_lib, loss_lib, tokenizer_lib = _open_clip_modules()
    (v_width, v_layers, v_heads), (t_width, t_layers, t_heads), embed = SIZES[size]
    torch.manual_seed(0)
    model = model_lib.CLIP(
        embed_dim=embed, output_dict=True,
        vision_cfg={"image_size": IMAGE, "layers": v_layers, "width": v_width, "head_width": v_width // v_heads,
                    "patch_size": PATCH},
        text_cfg={"context_length": CONTEXT, "vocab_size": VOCAB, "width": t_width, "heads": t_heads,
                  "layers": t_layers})
    if compile_towers:
        model.visual.compile()
        model.transformer.compile()
    model.train()
    loss_fn = loss_lib.ClipLoss()
    tokenizer = tokenizer_lib.SimpleTokenizer(context_length=CONTEXT)
    # open_clip's training main: no weight decay on gains, biases, norms and the logit scale
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    exclude = [p for n, p in named if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n]
    decay = [p for n, p in named if not any(p is q for q in exclude)]
    optimizer = torch.optim.AdamW([{"params": exclude, "weight_decay": 0.0}, {"params": decay, "weight_decay": WD}],
                                  lr=LR, betas=BETAS, eps=1e-6)
    images, captions = _pixels(batch), _captions(batch)
    times: list[float] = []
    cpu: list[float] = []
    for _ in range(steps + warmup):  # open_clip's train_one_epoch, one accumulation step, fp32
        start, start_cpu = time.perf_counter(), time.process_time()
        texts = tokenizer(captions)  # [B, 77]
        out = model(images, texts)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"seconds": times[warmup:], "cpu_seconds": cpu[warmup:], "params": params, "peak_rss_mib": _rss_mib(),
            "text_tokens": int(texts.shape[1])}


def _versions(python: str) -> dict:
    code = ("import json, importlib.metadata as m, torch, transformers, lightning\n"
            "try:\n oc = m.version('open_clip_torch')\nexcept m.PackageNotFoundError: oc = None\n"
            "print(json.dumps({'torch': torch.__version__, 'transformers': transformers.__version__, "
            "'lightning': lightning.__version__, 'open_clip': oc}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="prismrl,open_clip",
                        help="comma list of prismrl, open_clip, prismrl_compile, open_clip_compile")
    parser.add_argument("--size", default="b32", choices=sorted(SIZES),
                        help="b32: ViT-B/32 + 12x512 text (151 M); s32: 6x384 ViT/32 + 6x256 text (29 M)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps per run (2+ with compile)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant, alternating")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--python", default=sys.executable, help="interpreter with prismrl and open_clip installed")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - {"prismrl", "open_clip", "prismrl_compile", "open_clip_compile"}:
        sys.exit(f"--variants: unknown {sorted(unknown)}")
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        side, compiled = args.worker.removesuffix("_compile"), args.worker.endswith("_compile")
        run = run_prismrl if side == "prismrl" else run_open_clip
        print("RESULT " + json.dumps(run(args.size, args.batch_size, args.steps, args.warmup, compiled)))
        return
    results: dict[str, dict] = {}
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            cmd = [args.python, __file__, "--worker", variant, "--size", args.size, "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
                   "HF_HUB_OFFLINE": "1"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"{variant} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            run = json.loads(lines[-1][7:])
            entry = results.setdefault(variant, {"seconds": [], "cpu": [], "rss": [], "params": run["params"],
                                                 "tokens": run["text_tokens"]})
            entry["seconds"] += run["seconds"]
            entry["cpu"] += run["cpu_seconds"]
            entry["rss"].append(run["peak_rss_mib"])
            loads.append(os.getloadavg()[0])
            print(f"  run {repeat + 1} {variant:18s} {statistics.mean(run['seconds']):7.2f} s/step "
                  f"{statistics.mean(run['cpu_seconds']):7.2f} CPU s/step  "
                  f"load {loads[-1]:.1f}", flush=True)
    print(f"\nsize {args.size}, batch {args.batch_size}, {args.threads} threads, text tokens "
          f"{ {v: e['tokens'] for v, e in results.items()} }")
    print(f"{'variant':18s} {'s/step':>8s} {'samples/s':>10s} {'CPU s/step':>11s} {'peak RSS MiB':>13s} "
          f"{'params M':>9s} {'speed':>6s} {'CPU speed':>10s}")
    base = results.get("open_clip") or results.get("open_clip_compile")
    ratios = {}
    for variant, entry in results.items():
        seconds = statistics.mean(entry["seconds"])
        cpu = statistics.mean(entry["cpu"])
        speed = statistics.mean(base["seconds"]) / seconds if base else float("nan")
        cpu_speed = statistics.mean(base["cpu"]) / cpu if base else float("nan")
        ratios[variant] = {"speed": round(speed, 3), "cpu_speed": round(cpu_speed, 3), "peak_rss": round(max(entry["rss"]) / max(base["rss"]), 3)
                           if base else None, "params": round(entry["params"] / base["params"], 4) if base else None}
        print(f"{variant:18s} {seconds:8.2f} {args.batch_size / seconds:10.2f} {cpu:11.2f} {max(entry['rss']):13.0f} "
              f"{entry['params'] / 1e6:9.2f} {speed:6.2f} {cpu_speed:10.2f}")
    if base and (bad := [v for v, r in ratios.items() if abs(r["params"] - 1) > 0.05]):
        print(f"WARNING: parameter counts differ by more than 5%: {bad}")
    print(json.dumps({"benchmark": "alignment_vs_open_clip", "ratios": ratios, "size": args.size,
                      "batch_size": args.batch_size,
                      "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                      "machine": f"{platform.machine()} {os.cpu_count()} cpus", "versions": _versions(args.python),
                      "load_avg": {"min": min(loads), "max": max(loads)}}))


if __name__ == "__main__":
    main()
