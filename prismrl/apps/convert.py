"""Convert your own images and captions into the Parquet file or WebDataset shards prismrl's datamodules read.

    prismrl-convert --images photos/ --out data/train.parquet
    prismrl-convert --csv captions.csv --out data/shards --format webdataset --shard-size 1000

Inputs:

- ``--images DIR``: every image file (``.jpg .jpeg .png .webp .bmp``) under ``DIR`` with a caption in a text file of
  the same stem beside it (``cat.jpg`` + ``cat.txt``). Images in sub-folders get the sub-folder as their class
  (``DIR/cat/1.jpg`` -> class ``cat``); images directly in ``DIR`` have no label.
- ``--csv FILE``: columns ``image`` (a path relative to the CSV's folder, or absolute), ``caption`` and optionally
  ``label`` (a class name or an integer).

Outputs (the schemas in the README's "Training on your own data"):

- ``--format parquet`` (default): one file with columns ``image`` (encoded bytes), ``caption`` (string) and, when
  there are labels, ``label`` (int64) — ``ParquetDataModule(train_path=...)``'s defaults.
- ``--format webdataset``: ``OUT/shard-000000.tar`` ... with members ``<key>.<ext>`` (the image bytes),
  ``<key>.txt`` (the caption) and, with labels, ``<key>.json`` (``{"label": N}``) — ``WebDataModule``'s defaults.

Class names are sorted and numbered from 0; they are printed and written to ``classes.txt`` beside the output, in
the order to give as ``class_names``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
FORMATS = ("parquet", "webdataset")


@dataclass(frozen=True)
class Sample:
    image: Path
    caption: str
    label: str | None


def samples_from_folder(folder: Path) -> list[Sample]:
    """Images under ``folder`` with their ``<stem>.txt`` captions; the sub-folder (if any) is the class."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--images: expected a folder, received '{folder}'")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ValueError(f"--images: expected image files ({', '.join(IMAGE_SUFFIXES)}) under '{folder}', received none")
    samples = []
    for image in images:
        caption_file = image.with_suffix(".txt")
        if not caption_file.is_file():
            raise FileNotFoundError(f"--images: expected a caption file '{caption_file}' for '{image}', received none")
        relative = image.relative_to(folder)
        label = relative.parts[0] if len(relative.parts) > 1 else None
        samples.append(Sample(image, caption_file.read_text(encoding="utf-8").strip(), label))
    return samples


def samples_from_csv(path: Path) -> list[Sample]:
    """Rows of ``path`` (columns ``image``, ``caption``, optional ``label``); image paths relative to its folder."""
    if not path.is_file():
        raise FileNotFoundError(f"--csv: expected a CSV file, received '{path}'")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"--csv: expected columns image, caption (and optionally label) in '{path}', "
                             f"received {reader.fieldnames}")
        rows = list(reader)
    samples = []
    for number, row in enumerate(rows, start=2):
        image = Path(row["image"])
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise FileNotFoundError(f"--csv: line {number} of '{path}': expected an image file, received '{row['image']}'")
        label = (row.get("label") or "").strip() or None
        samples.append(Sample(image, row["caption"].strip(), label))
    return samples


def label_ids(samples: Sequence[Sample]) -> tuple[list[int | None], list[str]]:
    """Integer labels and the class names in id order (integers stay integers; names are sorted)."""
    given = [s.label for s in samples]
    if all(g is None for g in given):
        return [None] * len(samples), []
    if any(g is None for g in given):
        raise ValueError("label: expected a label for every sample or for none, received a mix")
    if all(g.lstrip("-").isdigit() for g in given):
        return [int(g) for g in given], []
    names = sorted(set(given))
    index = {name: i for i, name in enumerate(names)}
    return [index[g] for g in given], names


def write_parquet(samples: Sequence[Sample], labels: Sequence[int | None], out: Path, row_group_size: int = 256) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"image": pa.array([s.image.read_bytes() for s in samples], pa.binary()),
               "caption": pa.array([s.caption for s in samples], pa.string())}
    if labels and labels[0] is not None:
        columns["label"] = pa.array(labels, pa.int64())
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), out, row_group_size=row_group_size)


def write_webdataset(samples: Sequence[Sample], labels: Sequence[int | None], out: Path, shard_size: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, len(samples), shard_size):
        shard = out / f"shard-{start // shard_size:06d}.tar"
        with tarfile.open(shard, "w") as tar:
            for i in range(start, min(start + shard_size, len(samples))):
                sample, key = samples[i], f"{i:08d}"
                members = {f"{key}{sample.image.suffix.lower()}": sample.image.read_bytes(),
                           f"{key}.txt": sample.caption.encode("utf-8")}
                if labels[i] is not None:
                    members[f"{key}.json"] = json.dumps({"label": labels[i]}).encode("utf-8")
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
        shards.append(shard)
    return shards


def convert(images: Path | None = None, csv_path: Path | None = None, out: Path = Path("data/train.parquet"),
            format: str = "parquet", shard_size: int = 1000) -> dict:
    """Convert; a summary dict (samples, classes, outputs)."""
    if (images is None) == (csv_path is None):
        raise ValueError("expected exactly one of --images DIR or --csv FILE, received "
                         f"{'both' if images is not None else 'neither'}")
    if format not in FORMATS:
        raise ValueError(f"--format: expected one of {list(FORMATS)}, received '{format}'")
    if shard_size < 1:
        raise ValueError(f"--shard-size: expected an integer >= 1, received {shard_size}")
    samples = samples_from_folder(Path(images)) if images is not None else samples_from_csv(Path(csv_path))
    empty = [str(s.image) for s in samples if not s.caption]
    if empty:
        raise ValueError(f"caption: expected a non-empty caption, received an empty one for {empty[0]}")
    labels, names = label_ids(samples)
    out = Path(out)
    if format == "parquet":
        write_parquet(samples, labels, out)
        outputs, folder = [out], out.parent
    else:
        outputs, folder = write_webdataset(samples, labels, out, shard_size), out
    if names:
        (folder / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return {"samples": len(samples), "class_names": names, "outputs": outputs,
            "labels": labels[0] is not None if labels else False}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prismrl-convert", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images with <stem>.txt captions (sub-folder = class)")
    source.add_argument("--csv", type=Path, help="CSV with columns image, caption and optionally label")
    parser.add_argument("--out", type=Path, required=True, help="Parquet file, or folder of shards for webdataset")
    parser.add_argument("--format", default="parquet", choices=FORMATS)
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per WebDataset shard")
    args = parser.parse_args(argv)
    try:
        summary = convert(args.images, args.csv, args.out, args.format, args.shard_size)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"prismrl-convert: {error}\n")
    outputs = summary["outputs"]
    print(f"{summary['samples']} samples -> {outputs[0] if len(outputs) == 1 else f'{len(outputs)} shards in {args.out}'}")
    if summary["class_names"]:
        print(f"class_names: {summary['class_names']}")
    if args.format == "parquet":
        print(f"data:\n  class_path: ParquetDataModule\n  init_args:\n    train_path: {outputs[0]}"
              + ("" if summary["labels"] else "\n    label_column: null"))
    else:
        last = len(outputs) - 1
        print(f"data:\n  class_path: WebDataModule\n  init_args:\n    train_shards: {args.out}/shard-{{000000..{last:06d}}}.tar"
              + ("" if summary["labels"] else "\n    label_key: null"))


if __name__ == "__main__":
    main()
