"""TextCorpusDataModule and the seeded 80/10/10 masking collator, on the real Python-docs corpus."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from prismrl.backbones.masked_lm import load_domain_tokenizer
from prismrl.data.loaders import LoaderSettings
from prismrl.datamodules.text_corpus import (
    SeededMLMCollator,
    TextCorpusDataModule,
    TokenizedTexts,
    read_texts,
)

TOKENIZER = "shipped:all-minilm-l6-v2"
DOMAIN = ["<DOMAIN_PYDOC>"]


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> TextCorpusDataModule:
    dm = TextCorpusDataModule(TOKENIZER, DOMAIN, root=str(tmp_path_factory.mktemp("cache")), max_length=64,
                              loader=LoaderSettings(batch_size=16))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_carry_the_domain_token_unmasked(datamodule):
    domain_id = datamodule.tokenizer.convert_tokens_to_ids(DOMAIN[0])
    special = torch.tensor(datamodule.tokenizer.all_special_ids)
    for batch in list(datamodule.train_dataloader())[:5] + list(datamodule.val_dataloader())[:2]:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 16 and ids.shape[1] <= 64
        assert (ids[:, 1] == domain_id).all() and (labels[:, :2] == -100).all()
        assert (labels[mask == 0] == -100).all()  # padding is never a target
        assert (ids[mask == 0] == datamodule.tokenizer.pad_token_id).all()
        assert not torch.isin(labels[labels != -100], special).any()  # a target is never a special token
    assert len(datamodule.datasets["train"]) > 500 and len(datamodule.datasets["val"]) > 50


def test_masking_rates_on_a_large_seeded_sample():
    tokenizer = load_domain_tokenizer(TOKENIZER, DOMAIN)
    texts = [f"{DOMAIN[0]} the quick brown fox number {i % 10} jumps over the lazy dog again and again" for i in range(2000)]
    dataset = TokenizedTexts(tokenizer(texts)["input_ids"])
    collate = SeededMLMCollator(tokenizer, seed=3)
    batch = collate([dataset[i] for i in range(len(dataset))])
    ids = torch.tensor([dataset[i]["input_ids"] for i in range(len(dataset))])  # equal lengths: no padding
    selected = batch["labels"] != -100
    candidates = ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    n = int(selected.sum())
    assert (batch["labels"][selected] == ids[selected]).all()
    assert not (selected & ~candidates).any()
    assert abs(n / int(candidates.sum()) - 0.15) < 0.005  # ~33k candidates: 5 sigma ~ 0.005
    as_mask = batch["input_ids"][selected] == tokenizer.mask_token_id
    kept = batch["input_ids"][selected] == ids[selected]
    replaced = ~as_mask & ~kept
    assert abs(float(as_mask.float().mean()) - 0.8) < 0.02
    assert abs(float(kept.float().mean()) - 0.1) < 0.015  # includes the rare random draw of the same id
    assert abs(float(replaced.float().mean()) - 0.1) < 0.015
    assert (batch["input_ids"][~selected] == ids[~selected]).all()


def test_masks_are_a_function_of_seed_epoch_and_sample_only():
    tokenizer = load_domain_tokenizer(TOKENIZER)
    dataset = TokenizedTexts(tokenizer([f"sample {i} with a few more words to mask here" for i in range(8)])["input_ids"])

    class Epoch:  # stands in for the loader's sampler
        epoch = 0

    collate = SeededMLMCollator(tokenizer, seed=0)
    collate.sampler = Epoch()
    whole = collate([dataset[i] for i in range(8)])
    parts = [collate([dataset[i] for i in (5, 2)]), collate([dataset[i] for i in (7,)])]  # other batches, other order
    assert torch.equal(parts[0]["labels"][0], whole["labels"][5]) and torch.equal(parts[0]["labels"][1], whole["labels"][2])
    assert torch.equal(parts[1]["input_ids"][0], whole["input_ids"][7])
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(collate([dataset[i] for i in range(8)])["labels"], whole["labels"])
    Epoch.epoch = 1
    assert not torch.equal(collate([dataset[i] for i in range(8)])["labels"], whole["labels"])
    other_seed = SeededMLMCollator(tokenizer, seed=1)
    assert not torch.equal(other_seed([dataset[i] for i in range(8)])["labels"], whole["labels"])


def test_validation_masks_repeat_and_training_masks_change_by_epoch(datamodule):
    first = next(iter(datamodule.val_dataloader()))
    loader = datamodule.train_dataloader()
    loader.set_epoch(1)
    next(iter(loader))
    assert torch.equal(next(iter(datamodule.val_dataloader()))["labels"], first["labels"])
    dataset = datamodule.datasets["train"]
    collate = loader.collate_fn
    loader.set_epoch(0)
    epoch0 = collate([dataset[0]])
    loader.set_epoch(1)
    assert not torch.equal(collate([dataset[0]])["labels"], epoch0["labels"])


def test_user_files_text_and_parquet(tmp_path):
    (tmp_path / "train.txt").write_text("first domain text\n\nsecond domain text\n")
    pq.write_table(pa.table({"body": ["held out one", "held out two"]}), tmp_path / "val.parquet")
    dm = TextCorpusDataModule(TOKENIZER, corpus=None, train_path=str(tmp_path / "train.txt"),
                              val_path=str(tmp_path / "val.parquet"), text_column="body", loader=LoaderSettings(batch_size=2))
    dm.setup("fit")
    assert dm.texts("train") == ["first domain text", "second domain text"]
    assert dm.texts("val") == ["held out one", "held out two"]
    assert len(dm.train_dataloader()) == 1
    with pytest.raises(ValueError, match=r"text_column: expected a column of val.parquet \(\['body'\]\), received 'text'"):
        read_texts(tmp_path / "val.parquet")
    with pytest.raises(FileNotFoundError, match="no file"):
        read_texts(tmp_path / "missing.txt")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="corpus / train_path: expected exactly one"):
        TextCorpusDataModule(TOKENIZER, corpus="python_docs", train_path="a.txt", val_path="b.txt")
    with pytest.raises(ValueError, match="val_path: expected it together with train_path"):
        TextCorpusDataModule(TOKENIZER, corpus=None, train_path="a.txt")
    with pytest.raises(ValueError, match="max_length: expected >= 5"):
        TextCorpusDataModule(TOKENIZER, ["<A>", "<B>"], max_length=4)
    tokenizer = load_domain_tokenizer(TOKENIZER)
    with pytest.raises(ValueError, match="mlm_probability"):
        SeededMLMCollator(tokenizer, mlm_probability=0.0)
    with pytest.raises(ValueError, match="mask_replace_prob / random_replace_prob"):
        SeededMLMCollator(tokenizer, mask_replace_prob=0.9, random_replace_prob=0.2)
