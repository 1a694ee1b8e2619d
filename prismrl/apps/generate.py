"""Sample a labelled synthetic dataset from a generator PPO checkpoint (or the baseline) into Parquet and CSV.

    prismrl-generate --checkpoint runs/generator_ppo/smollm2_cpu/version_0/checkpoints/last.ckpt --per-label 50 --out data/synthetic
    prismrl-generate --checkpoint .../last.ckpt --baseline --total 100 --balance negative=0.3,positive=0.7 --out ...
    prismrl-generate --config configs/generator_ppo/smollm2_cpu.yaml --per-label 4 --out ...   # the untrained base

The generator writes one example per request (class y, in-context examples drawn from the golden train split by the
stage's ``ICLSampler``); requests alternate over the classes. ``--baseline`` samples the generator before PPO
(LoRA adapters switched off, or the frozen reference copy); ``--config`` builds the stage from its YAML without
training (the untrained base). Generations that do not parse (empty, no letter, another class named) are asked
again with fresh in-context examples, up to ``--max-rounds`` rounds; what still fails is left out and counted.

Quality columns come from a judge: the stage's classifier reset to its starting weights and trained on the golden
train split with the stage's classifier settings (``classifier_steps`` or ``classifier_training``); its accuracy
on the golden val split is in the stats. Written to ``--out`` (atomically: temporary files renamed into place):

- ``<name>.parquet`` / ``<name>.csv``: one row per example, columns ``synthetic_dataset.COLUMNS``: ``text``, ``label`` (class name),
  ``label_id``, ``icl_ids`` (positions of the prompt's in-context examples in the golden train split; JSON list
  in the CSV), ``request_id``, ``confidence`` (the judge's probability of the intended label), ``classifier_agrees``
  (the judge's top class is the intended one), ``length_chars``, ``length_words``, ``duplicate`` and
  ``duplicate_of`` ("golden": the same text as a golden example, any split; "output": as an earlier row; "" else;
  texts compare case-folded, on their words only);
- ``<name>.stats.json``: counts per class, parse statuses, agreement, confidence, lengths, duplicates, settings.

Everything is a function of (checkpoint, ``--seed``, counts, ``--batch-size``): the same command writes the same
files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prismrl.apps.synthetic_dataset import (
    dataset_stats,
    duplicate_sources,
    write_dataset,
)

GENERATE_REQUEST_OFFSET = 20_000_000  # in-context draws of generated datasets; training and the report use lower ids
SEED_STRIDE = 1_000_000_000  # request ids of seed s: OFFSET + s * STRIDE + attempt


# ----- what to sample -----
def parse_balance(text: str | None) -> dict[str, float] | None:
    """``"negative=0.3,positive=0.7"`` -> {"negative": 0.3, "positive": 0.7}; None / "" -> None (even)."""
    if not text:
        return None
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"balance: expected 'label=weight,label=weight', received {text!r}") from None
    return out


def check_sizes(per_label: int | None, total: int | None, balance: dict[str, float] | None = None) -> None:
    """ValueError unless exactly one of ``per_label`` / ``total`` is an int >= 1 (``balance`` only with ``total``)."""
    if (per_label is None) == (total is None):
        raise ValueError(f"per_label / total: expected exactly one, received per_label={per_label!r}, total={total!r}")
    field, value = ("per_label", per_label) if per_label is not None else ("total", total)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}: expected an int >= 1, received {value!r}")
    if per_label is not None and balance is not None:
        raise ValueError(f"balance: only used with total, received {balance} with per_label")


def label_counts(label_names: Sequence[str], per_label: int | None = None, total: int | None = None,
                 balance: dict[str, float] | None = None) -> list[int]:
    """Examples to write per class: ``per_label`` each, or ``total`` split by ``balance`` (weights per class name,
    normalized; missing classes get 0; None = even) with largest remainders (ties to the lower class id)."""
    check_sizes(per_label, total, balance)
    if per_label is not None:
        return [per_label] * len(label_names)
    weights = [1.0] * len(label_names)
    if balance is not None:
        unknown = sorted(set(balance) - set(label_names))
        if unknown:
            raise ValueError(f"balance: expected class names among {list(label_names)}, received {unknown}")
        weights = [float(balance.get(name, 0.0)) for name in label_names]
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"balance: expected finite weights >= 0 with a positive sum, received {balance}")
    shares = [total * w / sum(weights) for w in weights]
    counts = [math.floor(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda c: (-(shares[c] - counts[c]), c))
    for c in order[: total - sum(counts)]:
        counts[c] += 1
    return counts


def interleaved_labels(counts: Sequence[int]) -> list[int]:
    """Class ids in round-robin order until each class has its count: [2, 1] -> [0, 1, 0]."""
    left, out = list(counts), []
    while any(left):
        for c in range(len(left)):
            if left[c]:
                out.append(c)
                left[c] -= 1
    return out


# ----- loading and sampling -----
def load_generator(checkpoint: str | Path | None = None, config: str | Path | None = None):
    """(module, datamodule, description) from a generator PPO checkpoint, or built from a stage config (untrained)."""
    from prismrl.lightning_modules.generator_ppo import GeneratorPPOModule

    if (checkpoint is None) == (config is None):
        raise ValueError(f"checkpoint / config: expected exactly one, received checkpoint={checkpoint!r}, config={config!r}")
    if checkpoint is not None:
        from prismrl.apps.generator_report import load_stage
        from prismrl.checkpoints import load_checkpoint
        from prismrl.lightning_modules.plumbing import check_checkpoint_stage

        saved = load_checkpoint(checkpoint, field="checkpoint")
        check_checkpoint_stage(saved, GeneratorPPOModule, where="checkpoint")
        if "hyper_parameters" not in saved or "datamodule_hyper_parameters" not in saved:
            raise ValueError(f"checkpoint: expected a checkpoint written by `prismrl fit` for GeneratorPPOModule (with "
                             f"model and datamodule hyperparameters), received {str(checkpoint)!r} with the keys "
                             f"{sorted(saved)}")
        del saved
        module, data = load_stage(checkpoint)
        return module, data, f"checkpoint {checkpoint}"
    from prismrl.cli import build_cli

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config: expected a YAML file, received {str(path)!r} (no such file)")
    argv, sys.argv = sys.argv, sys.argv[:1]  # the LightningCLI reads only the config, not this app's arguments
    try:
        cli = build_cli(["--config", str(path)], run=False)
    finally:
        sys.argv = argv
    module, data = cli.model, cli.datamodule
    if not isinstance(module, GeneratorPPOModule):
        raise ValueError(f"config: expected a GeneratorPPOModule config, received a {type(module).__name__} config "
                         f"({str(path)!r})")
    data.setup("fit")
    module.eval()
    module.bind_golden(data.train_set, data.val_set)
    return module, data, f"config {config} (untrained)"


def sample_requests(module, labels: Sequence[int], seed: int, batch_size: int, baseline: bool,
                    max_rounds: int) -> tuple[list[dict[str, Any]], dict[str, int], int]:
    """One parsed example per requested label (failures asked again, up to ``max_rounds`` rounds).

    Returns (rows in request order, without the ones that never parsed; parse status counts over every attempt;
    rounds run)."""
    torch.manual_seed(seed)
    slots: list[dict[str, Any] | None] = [None] * len(labels)
    pending = list(range(len(labels)))
    statuses: dict[str, int] = {}
    attempt, rounds = 0, 0
    while pending and rounds < max_rounds:
        rounds += 1
        failed = []
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            ids = [GENERATE_REQUEST_OFFSET + seed * SEED_STRIDE + attempt + i for i in range(len(chunk))]
            attempt += len(chunk)
            chunk_labels = [labels[s] for s in chunk]
            _, _, report = module.generate_examples(chunk_labels, ids, baseline=baseline)
            for slot, request_id, y, item in zip(chunk, ids, chunk_labels, report.items):
                statuses[item.status.value] = statuses.get(item.status.value, 0) + 1
                if item.ok:
                    slots[slot] = {"text": item.text, "label_id": y, "request_id": request_id,
                                   "icl_ids": [int(i) for i in module.icl.sample(request_id)]}
                else:
                    failed.append(slot)
            done = sum(s is not None for s in slots)
            print(f"  round {rounds}: {done}/{len(labels)} examples", flush=True)
        pending = failed
    return [s for s in slots if s is not None], statuses, rounds


def judge_classifier(module, data):
    """The stage's classifier reset and trained on the golden train split (stage settings); returns
    (ClassifierReward holding it, its golden val accuracy)."""
    from prismrl.rewards.classifier import ClassifierReward

    hp = module.hparams
    judge = ClassifierReward(module.classifier, data.val_set.texts, data.val_set.labels, module.reward_weights,
                             hp.classifier_steps, hp.classifier_lr, hp.classifier_batch_size, hp.distance_metric,
                             initial_state=module.classifier_start, training=hp.get("classifier_training"))
    judge.fit(list(data.train_set.texts), torch.tensor(data.train_set.labels, dtype=torch.long))
    return judge, judge.evaluate()[1]


def score_rows(module, data, rows: list[dict[str, Any]]) -> float:
    """Add the quality columns to ``rows`` in place; returns the judge's golden val accuracy."""
    judge, accuracy = judge_classifier(module, data)
    texts = [r["text"] for r in rows]
    with torch.no_grad():
        probs = torch.softmax(module.classifier.head(judge.embed_texts(texts)).float(), -1) if texts else None  # [N, C]
    judge.reset()
    golden = [*data.train_set.texts, *data.val_set.texts, *data.test_set.texts]
    for i, (row, dup) in enumerate(zip(rows, duplicate_sources(texts, golden))):
        y = row["label_id"]
        row.update(label=module.label_names[y], confidence=round(float(probs[i, y]), 6),
                   classifier_agrees=bool(int(probs[i].argmax()) == y), length_chars=len(row["text"]),
                   length_words=len(row["text"].split()), duplicate=bool(dup), duplicate_of=dup)
    return accuracy


def generate_dataset(out: str | Path, checkpoint: str | Path | None = None, config: str | Path | None = None,
                     per_label: int | None = None, total: int | None = None, balance: dict[str, float] | None = None,
                     baseline: bool = False, seed: int = 0, batch_size: int = 16, max_rounds: int = 5,
                     name: str = "dataset") -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Path]]:
    """Sample, score and write a dataset (module docstring); returns (rows, stats, {kind: path})."""
    from prismrl.choices import check_positive_int

    check_positive_int("batch_size", batch_size)
    check_positive_int("max_rounds", max_rounds)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, received {seed!r}")
    if not name or Path(name).name != name:
        raise ValueError(f"name: expected a file name without folders, received {name!r}")
    check_sizes(per_label, total, balance)  # bad N fails before anything loads
    start = time.perf_counter()
    module, data, source = load_generator(checkpoint, config)
    counts = label_counts(module.label_names, per_label, total, balance)
    labels = interleaved_labels(counts)
    generator = "baseline (generator before PPO)" if baseline else "trained" if checkpoint is not None else "untrained base"
    print(f"sampling {len(labels)} examples ({dict(zip(module.label_names, counts))}) from the {generator} generator",
          flush=True)
    rows, statuses, rounds = sample_requests(module, labels, seed, batch_size, baseline, max_rounds)
    accuracy = score_rows(module, data, rows)
    stats = dataset_stats(rows, module.label_names, counts)
    stats.update(parse_statuses=statuses, rounds=rounds, missing=len(labels) - len(rows),
                 judge_golden_val_accuracy=accuracy, generator=generator, source=source, seed=seed,
                 batch_size=batch_size, wall_seconds=round(time.perf_counter() - start, 1))
    if stats["missing"]:
        print(f"warning: {stats['missing']} request(s) never parsed in {max_rounds} rounds; left out", flush=True)
    paths = write_dataset(rows, stats, out, name)
    return rows, stats, paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prismrl-generate", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a GeneratorPPOModule checkpoint (.ckpt) written by `prismrl fit`")
    source.add_argument("--config", help="a generator PPO stage config: sample its untrained base generator")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--per-label", type=int, help="examples per class")
    size.add_argument("--total", type=int, help="examples in all, split by --balance (default: even)")
    parser.add_argument("--balance", default=None, help="class weights with --total, e.g. negative=0.3,positive=0.7")
    parser.add_argument("--baseline", action="store_true", help="sample the generator before PPO (adapters off)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--name", default="dataset", help="file stem: <name>.parquet, <name>.csv, <name>.stats.json")
    parser.add_argument("--seed", type=int, default=0, help="sampling and in-context draws (same seed, same files)")
    parser.add_argument("--batch-size", type=int, default=16, help="generations per generate() call")
    parser.add_argument("--max-rounds", type=int, default=5, help="rounds of asking again for unparseable generations")
    args = parser.parse_args(argv)
    try:
        rows, stats, paths = generate_dataset(
            args.out, args.checkpoint, args.config, args.per_label, args.total, parse_balance(args.balance),
            args.baseline, args.seed, args.batch_size, args.max_rounds, args.name)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(json.dumps({k: stats[k] for k in ("written", "per_label", "class_balance", "classifier_agreement",
                                            "confidence_mean", "length_words", "duplicates",
                                            "judge_golden_val_accuracy", "parse_statuses", "wall_seconds")}, indent=2))
    for kind, path in paths.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
