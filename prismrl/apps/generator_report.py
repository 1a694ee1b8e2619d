"""Baseline vs PPO-trained generator: the report the GenAlign stage is judged by.

    python -m prismrl.apps.generator_report --checkpoint runs/.../last.ckpt [--num-samples 64] [--seeds 0 1 2]

From a ``GeneratorPPOModule`` checkpoint (written by ``prismrl fit``), for each generator
- ``baseline``: the policy before PPO (LoRA adapters switched off, or the frozen reference copy),
- ``trained``: the policy in the checkpoint,
N labelled examples are sampled (classes alternating, fresh in-context draws never used in training), parsed,
and a classifier (the stage's classifier, reset to its starting weights) is trained on the parseable ones with
the stage's settings and evaluated on the golden **test** split (never seen by the reward, which uses val).
Each source also gets data statistics of its parseable examples: ``class_balance`` (normalized entropy of the
class counts, 1 = even), ``duplicate_rate`` (texts equal to a golden text or an earlier one, compared on their
case-folded words; the golden row counts repeats within its draw only), text lengths in words and characters, and
a ``quality_score`` in [0, 1] (``prismrl.apps.synthetic_dataset.quality_score``: the mean of golden accuracy,
(1 + silhouette) / 2, 1 - parse failure rate, 1 - duplicate rate and class balance).
A ``golden`` row trains the same classifier on N real golden train examples as a reference point. Each seed
draws a new set of N samples per generator; the table gives mean and standard deviation over the seeds. Written
to ``--out``: ``report.md`` (table, parse statistics, sample outputs of the first seed), ``metrics.csv`` (one row
per source and seed, plus mean / std rows), ``metrics.png`` (bars: means with std error bars) and
``embeddings.png`` (2-D PCA of the first seed's examples in the classifier's embedding space).
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prismrl.checkpoints import load_checkpoint
from prismrl.evaluation.synthetic_quality import class_distances

METRICS = ("quality_score", "golden_accuracy", "golden_loss", "inter", "intra", "silhouette", "parse_failure_rate",
           "num_valid", "class_balance", "duplicate_rate", "length_words_mean", "length_words_std", "length_chars_mean")
EVAL_REQUEST_OFFSET = 10_000_000  # in-context draws of the report start here, far from any training request id


def load_stage(checkpoint: str | Path):
    """(module, datamodule) rebuilt from a checkpoint, golden data bound; on CPU, eval mode."""
    from prismrl.datamodules.golden_text import GoldenTextDataModule
    from prismrl.lightning_modules.generator_ppo import GeneratorPPOModule

    path = Path(checkpoint)
    saved = load_checkpoint(path, field="checkpoint").get("datamodule_hyper_parameters", {})
    module = GeneratorPPOModule.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    data = GoldenTextDataModule(**{k: v for k, v in saved.items() if not k.startswith("_")})
    data.setup("fit")
    module.bind_golden(data.train_set, data.val_set)
    return module, data


def sample_generator(module, num_samples: int, batch_size: int, baseline: bool, seed: int) -> list[dict[str, Any]]:
    """``num_samples`` parsed generations (classes alternating) from the trained policy or the baseline."""
    torch.manual_seed(seed)
    classes = len(module.label_names)
    rows: list[dict[str, Any]] = []
    for start in range(0, num_samples, batch_size):
        ids = list(range(start, min(start + batch_size, num_samples)))
        labels = [i % classes for i in ids]
        _, _, report = module.generate_examples(labels, [EVAL_REQUEST_OFFSET + i for i in ids], baseline=baseline)
        rows += [{"label": y, "text": item.text, "status": item.status.value} for y, item in zip(labels, report.items)]
        print(f"  {'baseline' if baseline else 'trained'}: {len(rows)}/{num_samples} samples", flush=True)
    return rows


def data_statistics(texts: list[str], labels: list[int], num_classes: int,
                    golden_texts: Sequence[str] = ()) -> dict[str, Any]:
    """Class counts and balance, duplicate rate (vs ``golden_texts`` and within), word / character lengths."""
    from prismrl.apps.synthetic_dataset import (
        class_balance,
        duplicate_sources,
        length_stats,
    )

    counts = [labels.count(c) for c in range(num_classes)]
    duplicates = duplicate_sources(texts, golden_texts)
    words, chars = length_stats([len(t.split()) for t in texts]), length_stats([len(t) for t in texts])
    return {"class_counts": counts, "class_balance": class_balance(counts),
            "duplicate_rate": sum(bool(d) for d in duplicates) / len(texts) if texts else float("nan"),
            "length_words_mean": words["mean"], "length_words_std": words["std"], "length_chars_mean": chars["mean"]}


def score_examples(module, test_set, texts: list[str], labels: list[int], failures: float,
                   golden_texts: Sequence[str] = ()) -> dict[str, Any]:
    """Train the reset classifier on (texts, labels); golden test metrics, distances, silhouette, embeddings, data
    statistics (duplicates against ``golden_texts``) and the quality score."""
    from prismrl.apps.synthetic_dataset import quality_score
    from prismrl.rewards.classifier import ClassifierReward

    hp = module.hparams
    judge = ClassifierReward(module.classifier, test_set.texts, test_set.labels, module.reward_weights,
                             hp.classifier_steps, hp.classifier_lr, hp.classifier_batch_size, hp.distance_metric,
                             initial_state=module.classifier_start, training=hp.get("classifier_training"))
    labels_t = torch.tensor(labels, dtype=torch.long)
    judge.fit(texts, labels_t)
    loss, accuracy = judge.evaluate()
    out: dict[str, Any] = {"golden_accuracy": accuracy, "golden_loss": loss, "parse_failure_rate": failures,
                           "num_valid": len(texts), "inter": float("nan"), "intra": float("nan"),
                           "silhouette": float("nan"), "embeddings": None, "labels": labels}
    if texts:
        embeddings = judge.embed_texts(texts)
        dist = class_distances(embeddings, labels_t, hp.distance_metric)
        out.update(inter=dist.inter, intra=dist.intra, silhouette=dist.silhouette, embeddings=embeddings)
    judge.reset()
    out.update(data_statistics(texts, labels, len(module.label_names), golden_texts))
    out["quality_score"] = quality_score(accuracy, out["silhouette"], failures, out["duplicate_rate"],
                                         out["class_balance"])
    return out


def summarize(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """{source: {metric: (mean, std)}} over the seeds (population std; NaN values are skipped)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for source in per_seed[0]:
        out[source] = {}
        for metric in METRICS:
            values = torch.tensor([float(run[source][metric]) for run in per_seed], dtype=torch.float64)
            values = values[~torch.isnan(values)]
            mean = float(values.mean()) if len(values) else float("nan")
            std = float(values.std(unbiased=False)) if len(values) else float("nan")
            out[source][metric] = (mean, std)
    return out


def _plots(summary: dict[str, dict[str, tuple[float, float]]], first: dict[str, dict[str, Any]],
           label_names: Sequence[str], out: Path) -> None:
    from prismrl.evaluation.plotting import new_figure, save_png_atomic

    names = list(summary)
    shown = ("quality_score", "golden_accuracy", "golden_loss", "silhouette", "parse_failure_rate", "class_balance",
             "length_words_mean")
    fig, axes = new_figure(ncols=len(shown), panel_size=(2.6, 3.0))
    for ax, metric in zip(axes, shown):
        ax.bar(names, [summary[n][metric][0] for n in names], yerr=[summary[n][metric][1] for n in names], capsize=3,
               color=["#999999", "#1f77b4", "#2ca02c"][: len(names)])
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=30)
    save_png_atomic(fig, out / "metrics.png")
    fig, axes = new_figure(ncols=len(names), panel_size=(4.0, 3.6))
    for ax, name in zip(axes, names):
        emb = first[name]["embeddings"]
        ax.set_title(name)
        if emb is None or len(emb) < 3:
            ax.text(0.5, 0.5, "too few parseable examples", ha="center", transform=ax.transAxes)
            continue
        centered = emb.double() - emb.double().mean(0)
        coords = centered @ torch.linalg.svd(centered, full_matrices=False).Vh[:2].T  # [N, 2] PCA
        labels = torch.tensor(first[name]["labels"])
        for c, label in enumerate(label_names):
            pts = coords[labels == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=12, label=label)
        ax.legend(fontsize=8)
    save_png_atomic(fig, out / "embeddings.png")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_report(per_seed: list[dict[str, dict[str, Any]]], seeds: Sequence[int], samples: dict[str, list[dict]],
                 label_names: Sequence[str], out: Path, header: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """report.md, metrics.csv and the two PNG plots under ``out``; returns the summary {source: {metric: (mean, std)}}."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(per_seed)
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "seed", *METRICS])
        for seed, run in zip(seeds, per_seed):
            writer.writerows([name, seed, *[_fmt(row[m]) for m in METRICS]] for name, row in run.items())
        for i, stat in enumerate(("mean", "std")):
            writer.writerows([name, stat, *[_fmt(row[m][i]) for m in METRICS]] for name, row in summary.items())
    _plots(summary, per_seed[0], label_names, out)
    lines = ["# Generator report: baseline vs PPO-trained generator", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()] + ["", f"Mean ± std over seeds {list(seeds)}:", ""]
    lines += ["| source | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{row[m][0]:.4f} ± {row[m][1]:.4f}" for m in METRICS) + " |"
              for name, row in summary.items()]
    lines += ["", "golden_accuracy / golden_loss: a classifier trained on the source's examples, evaluated on the golden "
              "test split. inter / intra: mean distance between / within classes of the examples in the classifier's "
              "embedding space; silhouette in [-1, 1]. quality_score: mean of golden_accuracy, (1 + silhouette) / 2, "
              "1 - parse_failure_rate, 1 - duplicate_rate and class_balance (normalized entropy of the class counts of "
              "the parseable examples, 1 = even). duplicate_rate: share of texts equal to a golden text or an earlier "
              "one (case-folded words); the golden row counts repeats within its draw only.", ""]
    lines += [f"Class balance (parseable examples per class, seed {seeds[0]}):", "",
              "| source | " + " | ".join(label_names) + " | balance |", "|---" * (len(label_names) + 2) + "|"]
    lines += [f"| {name} | " + " | ".join(str(n) for n in row["class_counts"]) + f" | {row['class_balance']:.4f} |"
              for name, row in per_seed[0].items()]
    lines += ["", "Text length (parseable examples, words): mean ± std over seeds of each draw's mean: "
              + ", ".join(f"{name} {row['length_words_mean'][0]:.1f} ± {row['length_words_mean'][1]:.1f}"
                          for name, row in summary.items()),
              "", "![metrics](metrics.png)", "", "![embeddings](embeddings.png)"]
    for name, rows in samples.items():
        counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
        lines += ["", f"## Samples: {name} (seed {seeds[0]})", "", f"parse statuses: {counts}", ""]
        for r in rows[:12]:
            text = r["text"].replace("|", "\\|") if r["text"] else f"*({r['status']})*"
            lines.append(f"- **{label_names[r['label']]}**: {text}")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def build_report(checkpoint: str | Path, out: str | Path, num_samples: int = 64, batch_size: int = 16,
                 seeds: Sequence[int] = (0,)) -> dict[str, dict[str, tuple[float, float]]]:
    """Sample, score and write the report; returns {source: {metric: (mean, std over seeds)}}."""
    if num_samples < 2:
        raise ValueError(f"num_samples: expected an int >= 2, received {num_samples!r}")
    if not seeds:
        raise ValueError("seeds: expected at least one seed, received none")
    start = time.perf_counter()
    module, data = load_stage(checkpoint)
    train = data.train_set
    per_class = [[i for i, y in enumerate(train.labels) if y == c] for c in range(train.num_classes)]
    per_seed, samples = [], {}
    golden_texts = [*train.texts, *data.val_set.texts, *data.test_set.texts]
    for seed in seeds:
        results = {}
        for name, baseline in (("baseline", True), ("trained", False)):
            rows = sample_generator(module, num_samples, batch_size, baseline, seed)
            valid = [r for r in rows if r["status"] == "ok"]
            samples.setdefault(name, rows)
            results[name] = score_examples(module, data.test_set, [r["text"] for r in valid],
                                           [r["label"] for r in valid], 1.0 - len(valid) / len(rows), golden_texts)
        generator = torch.Generator().manual_seed(seed)  # a seeded draw of N real examples, classes alternating
        shuffled = [[members[j] for j in torch.randperm(len(members), generator=generator).tolist()] for members in per_class]
        classes = train.num_classes
        picked = [shuffled[i % classes][(i // classes) % len(shuffled[i % classes])] for i in range(num_samples)]
        results["golden"] = score_examples(module, data.test_set, [train.texts[i] for i in picked],
                                           [train.labels[i] for i in picked], 0.0)  # repeats within the draw only
        per_seed.append(results)
    header = {"checkpoint": str(checkpoint), "samples per generator and seed (N)": num_samples,
              "golden test examples": len(data.test_set), "classifier training steps": module.hparams.classifier_steps,
              "seeds": list(seeds), "wall time (s)": round(time.perf_counter() - start, 1)}
    return write_report(per_seed, list(seeds), samples, train.label_names, Path(out), header)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prismrl-generator-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a GeneratorPPOModule checkpoint (.ckpt)")
    parser.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/../report)")
    parser.add_argument("--num-samples", type=int, default=64, help="synthetic examples per generator (N)")
    parser.add_argument("--batch-size", type=int, default=16, help="generations per generate() call")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one sample draw per seed; mean ± std")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent.parent / "report"
    summary = build_report(args.checkpoint, out, args.num_samples, args.batch_size, args.seeds)
    for name, row in summary.items():
        print(f"{name}: " + ", ".join(f"{m}={row[m][0]:.4f}±{row[m][1]:.4f}" for m in METRICS))
    print(f"report written to {out / 'report.md'}")


if __name__ == "__main__":
    main()
