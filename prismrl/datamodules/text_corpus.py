"""Domain text as masked-LM batches: tokenized passages, reproducible 80/10/10 masking, resumable order.

Masking uses transformers' ``DataCollatorForLanguageModeling.torch_mask_tokens`` (select each
non-special token with ``mlm_probability``; of the selected, ``mask_replace_prob`` become [MASK],
``random_replace_prob`` a random token id in ``[0, len(tokenizer))``, the rest stay). The collator
draws from the torch generator it holds, or the global torch RNG when none is set; here every sample
gets its own generator seeded by ``SeedSequence([seed, split, epoch, sample index])``, so a sample's
mask is a pure function of those four numbers: independent of batch composition, worker processes,
ranks, the global RNG, and of where a run was resumed. Validation always uses epoch 0: its masks are
identical at every evaluation, so validation metrics before and after training compare like with like.
The epoch is read from the training loader's ``ResumableSampler`` (set by Lightning before each epoch;
workers are not persistent, so they start every epoch with the current value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from prismrl.backbones.answer_masking import IGNORE_INDEX
from prismrl.backbones.masked_lm import load_domain_tokenizer, validate_domain_tokens
from prismrl.choices import check_positive_int
from prismrl.data.domain_corpus import (
    ensure_domain_corpus,
    read_lines,
    with_domain_prefix,
)
from prismrl.data.loaders import (
    LoaderSettings,
    ResumableDataLoader,
    ResumableSampler,
    resolve_rank_world,
)

SPLIT_STREAMS = {"train": 0, "val": 1}


class TokenizedTexts(Dataset):
    """Item i = ``{"index": i, "input_ids": list[int]}`` (already truncated, with special tokens)."""

    def __init__(self, input_ids: list[list[int]]) -> None:
        self.input_ids = input_ids

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": int(index), "input_ids": self.input_ids[index]}


def mask_seed(seed: int, stream: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample's mask."""
    return int(np.random.SeedSequence([seed, stream, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class SeededMLMCollator:
    """Mask each sample with its own seeded generator, then pad: input_ids / attention_mask / labels ``[B, T]``.

    labels = the original id at selected positions, -100 elsewhere (padding included).
    """

    def __init__(
        self,
        tokenizer: Any,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int = 0,
        stream: int = 0,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        from transformers import DataCollatorForLanguageModeling

        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability: expected a value in (0, 1), received {mlm_probability!r}")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1:
            raise ValueError(
                "mask_replace_prob / random_replace_prob: expected non-negative values summing to <= 1, "
                f"received {mask_replace_prob!r} / {random_replace_prob!r}"
            )
        self.inner = DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=mlm_probability, mask_replace_prob=mask_replace_prob,
            random_replace_prob=random_replace_prob, return_tensors="pt",
        )
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.pad_id = int(tokenizer.pad_token_id)
        self.seed, self.stream, self.pad_to_multiple_of = seed, stream, pad_to_multiple_of
        self.sampler: Any | None = None  # the epoch source (a ResumableSampler); None -> epoch 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        epoch = int(getattr(self.sampler, "epoch", 0)) if self.sampler is not None else 0
        inputs, targets = [], []
        for example in examples:
            ids = torch.tensor(example["input_ids"], dtype=torch.long)[None]  # [1, L]
            special = torch.isin(ids, self.special_ids)  # [1, L]
            self.inner.generator = torch.Generator().manual_seed(mask_seed(self.seed, self.stream, epoch, example["index"]))
            masked, labels = self.inner.torch_mask_tokens(ids, special_tokens_mask=special)
            inputs.append(masked[0])
            targets.append(labels[0])
        self.inner.generator = None
        length = max(len(t) for t in inputs)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(inputs), length), self.pad_id, dtype=torch.long)  # [B, T]
        labels = torch.full((len(inputs), length), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((len(inputs), length), dtype=torch.long)  # [B, T]
        for row, (ids, target) in enumerate(zip(inputs, targets)):
            input_ids[row, : len(ids)] = ids
            labels[row, : len(ids)] = target
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class TextCorpusDataModule(LightningDataModule):
    """Masked-LM batches over a domain corpus: a built-in one (``corpus``) or your own files.

    Args:
        tokenizer_name_or_path: HF id, folder or "shipped:<alias>"; must match the model's.
        domain_tokens: new special tokens (same list as the model's), prepended to every text.
        corpus: a built-in corpus name (see ``prismrl.data.domain_corpus.CORPORA``); set it to null to use
            ``train_path`` / ``val_path`` instead (``.txt``: one text per line; ``.parquet``: ``text_column``).
        root: cache root for built-in corpora (default ``$PRISMRL_CACHE``).
        train_path: your training texts (``.txt``: one text per line; ``.parquet``: ``text_column``), with
            ``corpus: null``.
        val_path: your validation texts (same formats).
        text_column: the text column of Parquet files.
        passage_words: words per passage the built-in corpus is cut into.
        val_fraction: share of the built-in corpus's passages held out for validation.
        max_length: tokens per text after truncation (incl. special and domain tokens).
        loader: texts per training / validation batch, workers, pinned memory.
        mlm_probability: share of tokens selected for prediction (15%).
        mask_replace_prob: share of the selected tokens replaced by [MASK] (80%).
        random_replace_prob: share of the selected tokens replaced by a random token (10%; the rest stay).
        pad_to_multiple_of: pad each batch's length to a multiple of this (None = the longest text).
        seed: the data order and the masks.
    """

    def __init__(
        self,
        tokenizer_name_or_path: str = "shipped:all-minilm-l6-v2",
        domain_tokens: list[str] | None = None,
        corpus: str | None = "python_docs",
        train_path: str | None = None,
        val_path: str | None = None,
        text_column: str = "text",
        root: str | None = None,
        passage_words: int = 64,
        val_fraction: float = 0.1,
        max_length: int = 128,
        loader: LoaderSettings = LoaderSettings(batch_size=32),
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        pad_to_multiple_of: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.domain_tokens = validate_domain_tokens(domain_tokens)
        if (corpus is None) == (train_path is None):
            raise ValueError(
                f"corpus / train_path: expected exactly one of them, received corpus={corpus!r}, train_path={train_path!r}"
            )
        if (train_path is None) != (val_path is None):
            raise ValueError(f"val_path: expected it together with train_path, received train_path={train_path!r}, val_path={val_path!r}")
        if max_length < len(self.domain_tokens) + 3:
            raise ValueError(f"max_length: expected >= {len(self.domain_tokens) + 3} (special + domain tokens + 1), received {max_length}")
        check_positive_int("seed", seed, minimum=0)
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.max_length, self.loader, self.seed = max_length, loader, seed
        self.masking = dict(mlm_probability=mlm_probability, mask_replace_prob=mask_replace_prob,
                            random_replace_prob=random_replace_prob, pad_to_multiple_of=pad_to_multiple_of)
        self._tokenizer: Any | None = None
        self.datasets: dict[str, TokenizedTexts] = {}

    @property
    def tokenizer(self) -> Any:
        """The tokenizer with the domain tokens added (loaded once)."""
        if self._tokenizer is None:
            self._tokenizer = load_domain_tokenizer(self.tokenizer_name_or_path, self.domain_tokens)
        return self._tokenizer

    def prepare_data(self) -> None:
        if self.hparams.corpus is not None:
            self._corpus()

    def _corpus(self):
        hp = self.hparams
        return ensure_domain_corpus(hp.corpus, hp.root, hp.passage_words, val_fraction=hp.val_fraction, seed=hp.seed)

    def texts(self, split: str) -> list[str]:
        """The raw texts of "train" or "val" (without domain tokens)."""
        if self.hparams.corpus is not None:
            corpus = self._corpus()
            return corpus.train_texts() if split == "train" else corpus.val_texts()
        return read_texts(self.hparams.train_path if split == "train" else self.hparams.val_path, self.hparams.text_column)

    def _dataset(self, split: str) -> TokenizedTexts:
        if split not in self.datasets:
            texts = with_domain_prefix(self.texts(split), self.domain_tokens)
            encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
            self.datasets[split] = TokenizedTexts(encoded)
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._dataset("train")
        self._dataset("val")

    def _collator(self, split: str) -> SeededMLMCollator:
        return SeededMLMCollator(self.tokenizer, seed=self.seed, stream=SPLIT_STREAMS[split], **self.masking)

    def train_dataloader(self) -> ResumableDataLoader:
        dataset = self._dataset("train")
        rank, world = resolve_rank_world(self._trainer_or_none())
        collator = self._collator("train")
        loader = ResumableDataLoader(dataset, self.loader.batch_size, shuffle=True, seed=self.seed, drop_last=True,
                                     num_replicas=world, rank=rank, collate_fn=collator, **self.loader.worker_kwargs())
        collator.sampler = loader.sampler
        if len(loader) == 0:
            raise ValueError(f"loader.batch_size: {self.loader.batch_size} is larger than this rank's "
                             f"{loader.sampler.num_samples} training texts")
        return loader

    def val_dataloader(self) -> DataLoader:
        dataset = self._dataset("val")
        rank, world = resolve_rank_world(self._trainer_or_none())
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, self.loader.eval_batch_size, sampler=sampler, collate_fn=self._collator("val"),
                          **self.loader.worker_kwargs())

    def _trainer_or_none(self) -> Any | None:
        return self.trainer if getattr(self, "trainer", None) is not None else None


def read_texts(path: str | Path, text_column: str = "text") -> list[str]:
    """Texts from a ``.parquet`` file (column ``text_column``) or a text file (one per non-empty line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train_path / val_path: no file at {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_column not in table.column_names:
            raise ValueError(f"text_column: expected a column of {path.name} ({table.column_names}), received {text_column!r}")
        return [str(t) for t in table.column(text_column).to_pylist() if t]
    return read_lines(path)
