"""Lightning's overhead on the alignment step: the same module, batches and optimizer under ``Trainer`` vs a bare loop.

    python benchmarks/lightning_overhead.py --config configs/alignment/tiny.yaml --steps 100 --repeats 3 --threads 1

The module is built from the config (its datamodule's first training batch is reused every step, so data loading
is not measured). Variants, alternating within each repetition, each with a fresh module from the same seed:
- ``bare``: ``training_step`` -> ``backward`` -> clip the gradient norm (the config's ``gradient_clip_val``) ->
  ``optimizer.step`` -> ``scheduler.step`` -> ``zero_grad``; the optimizer and schedule are the module's own
  (``configure_optimizers``); ``self.log`` is a no-op without a trainer.
- ``trainer``: ``Trainer.fit`` with no logger, no progress bar, no checkpointing (what the loop itself costs).
- ``trainer_logged``: ``Trainer.fit`` with the config's loggers, ``log_every_n_steps`` and the progress bar on
  (what logging and the bar add).
Time per step = wall time from the start of the first measured step to the end of the last one (hooks and the
batch iteration between steps included) / measured steps; CPU time likewise from the process's CPU clock.
The table gives each variant's overhead over ``bare``; one JSON line follows with the machine and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(config: str, seed: int):
    """(module, first training batch, trainer kwargs of the config) from a fresh CLI parse."""
    import lightning.pytorch as pl

    from prismrl.cli import build_cli

    cli = build_cli(["--config", config, "--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False)
    datamodule = cli.datamodule
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    pl.seed_everything(seed, verbose=False)  # the same text-dropout draws for every variant of a repetition
    return cli.model, batch, cli.trainer


class _Clock:
    """Wall and CPU time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total, self.wall, self.cpu = warmup, total, 0.0, 0.0

    def step_start(self, index: int) -> None:
        if index == self.warmup:
            self.t0, self.c0 = time.perf_counter(), time.process_time()

    def step_end(self, index: int) -> None:
        if index == self.total - 1:
            self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0


def run_bare(module, batch, steps: int, warmup: int, clip: float | None) -> _Clock:
    total = steps + warmup
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=total)  # only for configure_optimizers
    config = module.configure_optimizers()
    module._trainer = None
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    module.train()
    clock = _Clock(warmup, total)
    for index, step_batch in enumerate([batch] * total):
        clock.step_start(index)
        loss = module.training_step(step_batch, index)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        clock.step_end(index)
    return clock


def run_trainer(module, batch, steps: int, warmup: int, clip: float | None, logged: bool, log_every: int) -> _Clock:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback

    from prismrl.loggers import CSVLogger, TensorBoardLogger

    total = steps + warmup
    clock = _Clock(warmup, total)

    class StepClock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.step_start(batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.step_end(batch_idx)

    work = tempfile.mkdtemp(prefix="lightning_overhead_")
    loggers = [TensorBoardLogger(work), CSVLogger(work)] if logged else False
    loader = torch.utils.data.DataLoader([batch] * total, batch_size=None, collate_fn=lambda x: x)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=total, logger=loggers, callbacks=[StepClock()],
                         enable_checkpointing=False, enable_progress_bar=logged, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=clip,
                         log_every_n_steps=log_every, default_root_dir=work)
    trainer.fit(module, train_dataloaders=loader)
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/alignment/tiny.yaml")
    parser.add_argument("--steps", type=int, default=100, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default="bare,trainer,trainer_logged")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    variants = args.variants.split(",")
    results: dict[str, dict[str, list[float]]] = {v: {"wall": [], "cpu": []} for v in variants}
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            module, batch, config_trainer = build(args.config, seed=repeat)
            clip = config_trainer.gradient_clip_val
            if variant == "bare":
                clock = run_bare(module, batch, args.steps, args.warmup, clip)
            else:
                clock = run_trainer(module, batch, args.steps, args.warmup, clip, variant == "trainer_logged",
                                    config_trainer.log_every_n_steps)
            results[variant]["wall"].append(clock.wall / args.steps)
            results[variant]["cpu"].append(clock.cpu / args.steps)
            loads.append(os.getloadavg()[0])
            print(f"  run {repeat + 1} {variant:15s} {1e3 * clock.wall / args.steps:8.2f} ms/step "
                  f"{1e3 * clock.cpu / args.steps:8.2f} CPU ms/step  load {loads[-1]:.1f}", flush=True)
    base = results.get("bare")
    print(f"\n{args.config}, {args.steps} steps x {args.repeats} runs, {args.threads} thread(s)")
    print(f"{'variant':15s} {'ms/step (min)':>14s} {'ms/step (median)':>17s} {'CPU ms/step (min)':>18s} "
          f"{'overhead (min)':>15s} {'CPU overhead (min)':>19s}")
    overheads = {}
    for variant, entry in results.items():
        wall, cpu = min(entry["wall"]), min(entry["cpu"])
        over = wall / min(base["wall"]) - 1 if base else float("nan")
        cpu_over = cpu / min(base["cpu"]) - 1 if base else float("nan")
        overheads[variant] = {"wall": round(over, 4), "cpu": round(cpu_over, 4)}
        print(f"{variant:15s} {1e3 * wall:14.2f} {1e3 * statistics.median(entry['wall']):17.2f} {1e3 * cpu:18.2f} "
              f"{100 * over:14.1f}% {100 * cpu_over:18.1f}%")
    import lightning

    print(json.dumps({"benchmark": "lightning_overhead", "config": args.config, "overhead_vs_bare": overheads,
                      "ms_per_step": {v: round(1e3 * min(e["wall"]), 2) for v, e in results.items()},
                      "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                      "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                      "versions": {"torch": torch.__version__, "lightning": lightning.__version__},
                      "load_avg": {"min": min(loads), "max": max(loads)}}))


if __name__ == "__main__":
    main()
