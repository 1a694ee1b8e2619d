"""One GRPO step: prismrl's GRPOModule under Lightning vs TRL's GRPOTrainer, on the shipped SmolLM2-135M-Instruct.

    pip install -e '.[bench]'                                  # TRL (benchmark-only; never imported by prismrl)
    python benchmarks/grpo_vs_trl.py --steps 10 --repeats 4 --threads 1
    python benchmarks/grpo_vs_trl.py --modes lora --steps 3 --repeats 2    # a quick look

Same work on both sides: the converted SmolLM2-135M-Instruct folder from prismrl's cache, the arithmetic task's
prompts (chat template on both), 2 prompts x 4 completions per step, at most 32 new tokens (HF generate, sampling
at temperature 1.0), beta 0.04 (k3 KL to the reference: adapters off for LoRA, a frozen copy for full fine-tuning),
DAPO loss aggregation, eps 0.2 / 0.28, one optimizer step per rollout, gradient checkpointing, fp32 on CPU.
Modes: "lora" (r 16, alpha 32, all linear layers) and "full". Each run is its own process (prismrl and TRL alternate,
so load on a shared machine hits both alike) and does --steps measured steps after one warm-up step. Reported per
side and mode: mean seconds per step over all measured steps of all runs, CPU seconds per step (the process's
CPU time: with 1 thread it stays comparable when other jobs load the machine), seconds per generated token, peak RSS
(the process's ru_maxrss, model load included), and the mean reward of the last step (the config's reward on both
sides). The table is followed by one JSON line with the ratios (TRL time / prismrl time: > 1 means prismrl is
faster), machine, versions and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROMPTS, GROUP, NEW_TOKENS, BETA = 2, 4, 32, 0.04
LR = {"lora": 5e-4, "full": 1e-5}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _task_reward(completions, answer, **_) -> list[float]:
    """The TRL side's reward: the prismrl config's own, 0.5 * format + 1.0 * correct last number (max 1.5)."""
    from prismrl.data.records import PromptRecord
    from prismrl.rewards.functions import (
        FormatReward,
        NumericMatchReward,
        WeightedSumReward,
    )

    reward = WeightedSumReward([FormatReward(pattern=r"-?\d+\s*[-+*]\s*-?\d+\s*=\s*-?\d+\.?", full_match=True),
                                NumericMatchReward()], weights=[0.5, 1.0])
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return reward(texts, [PromptRecord(prompt="", answer=str(a)) for a in answer])


def run_prismrl(mode: str, steps: int, seed: int) -> dict:
    import yaml
    from lightning.pytorch.callbacks import Callback

    from prismrl.cli import build_cli

    with open(os.path.join(ROOT, "configs/grpo/smollm2_arithmetic.yaml")) as f:
        config = yaml.safe_load(f)
    work = tempfile.mkdtemp(prefix="grpo_vs_trl_")
    config["seed_everything"] = seed
    config["trainer"].update(max_steps=steps + 1, logger=False, callbacks=[], enable_checkpointing=False,
                             limit_val_batches=0, default_root_dir=work, enable_progress_bar=False)
    init = config["model"]["init_args"]
    init["policy"]["lora"] = {"r": 16, "alpha": 32, "target_modules": "all-linear"} if mode == "lora" else None
    init["policy"]["gradient_checkpointing"] = True
    init.update(group_size=GROUP, beta=BETA, loss_aggregation="dapo", eps_low=0.2, eps_high=0.28)
    init["sampling"].update(max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=1.0)
    init["optimizer"] = {"lr": LR[mode], "warmup_ratio": 0.0}
    config["data"]["init_args"]["loader"]["batch_size"] = PROMPTS
    path = os.path.join(work, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    times, cpu, tokens, rewards = [], [], [], []

    class StepTimer(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            times.append(time.perf_counter() - self.start)
            cpu.append(time.process_time() - self.cpu)
            metrics = trainer.callback_metrics
            tokens.append(float(metrics.get("train/completion_length", float("nan"))) * PROMPTS * GROUP)
            rewards.append(float(metrics.get("train/reward", float("nan"))))

    cli = build_cli(["--config", path], run=False)
    cli.trainer.callbacks.append(StepTimer())
    cli.trainer.fit(cli.model, cli.datamodule)
    return {"seconds": times[1:], "cpu_seconds": cpu[1:], "tokens": tokens[1:], "reward": rewards[-1],
            "peak_rss_mib": _rss_mib()}


def run_trl(mode: str, steps: int, seed: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from prismrl.backbones.causal_lm import smollm2_folder
    from prismrl.data.prompt_tasks import arithmetic_records

    records = arithmetic_records("train", num_examples=512, max_operand=9, seed=0)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r.prompt}], "answer": r.answer}
                              for r in records])
    work = tempfile.mkdtemp(prefix="grpo_vs_trl_")
    args = GRPOConfig(
        output_dir=work, per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
        max_completion_length=NEW_TOKENS, beta=BETA, loss_type="dapo", epsilon=0.2, epsilon_high=0.28,
        learning_rate=LR[mode], lr_scheduler_type="constant", gradient_checkpointing=True, use_cpu=True,
        max_steps=steps + 1, logging_steps=1, report_to=[], save_strategy="no", temperature=1.0, top_p=1.0,
        seed=seed, bf16=False, dataloader_num_workers=0, disable_tqdm=True,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear") if mode == "lora" else None
    times, cpu, tokens, rewards = [], [], [], []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)
            cpu.append(time.process_time() - self.cpu)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))
                tokens.append(float(logs.get("completions/mean_length", float("nan"))) * PROMPTS * GROUP)

    trainer = GRPOTrainer(model=str(smollm2_folder()), reward_funcs=_task_reward, args=args, train_dataset=data,
                          peft_config=peft_config, callbacks=[StepTimer()])
    trainer.train()
    return {"seconds": times[1:], "cpu_seconds": cpu[1:], "tokens": tokens[1:],
            "reward": rewards[-1] if rewards else float("nan"), "peak_rss_mib": _rss_mib()}


def _versions(python: str) -> dict:
    code = ("import json, torch, transformers, lightning, peft\n"
            "try:\n import trl; t = trl.__version__\nexcept ImportError: t = None\n"
            "print(json.dumps({'torch': torch.__version__, 'transformers': transformers.__version__, "
            "'lightning': lightning.__version__, 'peft': peft.__version__, 'trl': t}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per run (after one warm-up step)")
    parser.add_argument("--repeats", type=int, default=4, help="runs per side and mode, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--python", default=sys.executable, help="interpreter with prismrl and TRL installed")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "prismrl:lora" etc.
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        side, mode = args.worker.split(":")
        result = (run_prismrl if side == "prismrl" else run_trl)(mode, args.steps, args.seed)
        print("RESULT " + json.dumps(result))
        return
    results: dict = {}
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        for mode in args.modes.split(","):
            for side in (("prismrl", "trl") if repeat % 2 == 0 else ("trl", "prismrl")):
                cmd = [args.python, __file__, "--worker", f"{side}:{mode}", "--steps", str(args.steps),
                       "--threads", str(args.threads), "--seed", str(args.seed + repeat)]
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    sys.exit(f"{side} {mode} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
                run = json.loads(lines[-1][7:])
                entry = results.setdefault((mode, side), {"seconds": [], "cpu": [], "tokens": [], "reward": [], "rss": []})
                entry["seconds"] += run["seconds"]
                entry["cpu"] += run["cpu_seconds"]
                entry["tokens"] += run["tokens"]
                entry["reward"].append(run["reward"])
                entry["rss"].append(run["peak_rss_mib"])
                loads.append(os.getloadavg()[0])
                print(f"  run {repeat + 1} {mode:4s} {side:7s}: {statistics.mean(run['seconds']):6.2f} s/step "
                      f"{statistics.mean(run['cpu_seconds']):6.2f} CPU s/step "
                      f"load {loads[-1]:.1f}", flush=True)
    print(f"{'mode':5s} {'side':8s} {'s/step':>8s} {'CPU s/step':>11s} {'ms/token':>9s} {'peak RSS MiB':>13s} "
          f"{'last reward':>12s}")
    summary = {}
    for (mode, side), entry in results.items():
        seconds = statistics.mean(entry["seconds"])
        per_token = sum(entry["seconds"]) / max(sum(entry["tokens"]), 1.0)
        cpu = statistics.mean(entry["cpu"])
        summary[(mode, side)] = (seconds, per_token, max(entry["rss"]), cpu)
        print(f"{mode:5s} {side:8s} {seconds:8.2f} {cpu:11.2f} {1e3 * per_token:9.1f} {max(entry['rss']):13.0f} "
              f"{statistics.mean(entry['reward']):12.3f}")
    ratios = {}
    for mode in args.modes.split(","):
        mine, theirs = summary[(mode, "prismrl")], summary[(mode, "trl")]
        ratios[mode] = {"speed": theirs[0] / mine[0], "cpu_speed": theirs[3] / mine[3],
                        "speed_per_token": theirs[1] / mine[1], "peak_rss": mine[2] / theirs[2]}
    print(json.dumps({"benchmark": "grpo_vs_trl", "ratios": ratios, "steps": args.steps, "repeats": args.repeats,
                      "threads": args.threads, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                      "versions": _versions(args.python), "load_avg": {"min": min(loads), "max": max(loads)}}))


if __name__ == "__main__":
    main()
