"""Domain corpora: passage cutting by hand-computed examples, leak-free splits, the cache, domain tokens."""

from __future__ import annotations

import json

import pytest

from prismrl.backbones.masked_lm import load_domain_tokenizer, validate_domain_tokens
from prismrl.data.domain_corpus import (
    ensure_domain_corpus,
    lee_documents,
    pack_passages,
    paragraphs,
    python_docs_documents,
    split_documents,
    with_domain_prefix,
)

TOKENIZER = "shipped:all-minilm-l6-v2"


def test_paragraphs_collapse_whitespace_and_drop_underlines():
    text = 'The "assert" statement\n**********************\n\nAssert   statements\n  are handy:\n\n   assert x\n\n\n'
    assert paragraphs(text) == ['The "assert" statement', "Assert statements are handy:", "assert x"]
    assert paragraphs("\n \n") == []


def test_pack_passages_joins_and_cuts_by_words():
    paras = ["a b c", "d e", "f g h i j k l", "m"]
    # limit 5: "a b c" + "d e" fit; the 7-word paragraph is cut into 5 + 2; then "l"-tail joins "m"
    assert pack_passages(paras, passage_words=5, min_words=1) == ["a b c d e", "f g h i j", "k l m"]
    assert pack_passages(paras, passage_words=5, min_words=4) == ["a b c d e", "f g h i j"]
    with pytest.raises(ValueError, match="passage_words / min_words"):
        pack_passages(paras, passage_words=0, min_words=1)


def test_split_holds_out_whole_documents_and_deduplicates_paragraphs():
    shared = "this paragraph appears in two documents word word word"
    documents = {f"doc{i}": f"doc {i} first paragraph with some words here\n\n{shared}" for i in range(10)}
    train, val = split_documents(documents, passage_words=20, min_words=3, val_fraction=0.2, seed=0)
    texts = train + val
    assert sum(shared in t for t in texts) == 1  # kept once, at its first occurrence
    assert len(train) + len(val) == 10
    val_docs = {t.split()[1] for t in val}
    assert not val_docs & {t.split()[1] for t in train if t.startswith("doc")}
    assert 2 <= len(val) <= 3
    assert split_documents(documents, 20, 3, 0.2, seed=0) == (train, val)
    assert split_documents(documents, 20, 3, 0.2, seed=1) != (train, val)
    with pytest.raises(ValueError, match="val_fraction"):
        split_documents(documents, 20, 3, 1.0, 0)


def test_python_docs_corpus_is_cached_by_content(tmp_path):
    documents = python_docs_documents()
    assert len(documents) > 50 and sum(len(t.split()) for t in documents.values()) > 30_000
    corpus = ensure_domain_corpus("python_docs", root=tmp_path, passage_words=64)
    train, val = corpus.train_texts(), corpus.val_texts()
    assert len(train) == corpus.num_train > 500 and len(val) == corpus.num_val > 50
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.2
    assert max(len(t.split()) for t in train + val) <= 64 and min(len(t.split()) for t in train + val) >= 8
    assert not set(train) & set(val)
    manifest = json.loads((corpus.root / "manifest.json").read_text())
    assert manifest["corpus"] == "python_docs" and manifest["num_train"] == len(train)
    mtime = corpus.train_path.stat().st_mtime_ns
    again = ensure_domain_corpus("python_docs", root=tmp_path, passage_words=64)
    assert again.root == corpus.root and again.train_path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    other = ensure_domain_corpus("python_docs", root=tmp_path, passage_words=32)
    assert other.root != corpus.root and max(len(t.split()) for t in other.train_texts()) <= 32
    with pytest.raises(ValueError, match=r"corpus: expected one of \['lee_news', 'python_docs'\], received 'wiki'"):
        ensure_domain_corpus("wiki", root=tmp_path)


def test_lee_reader_takes_one_article_per_line(tmp_path):
    (tmp_path / "lee_background.cor").write_text("First article text.\nSecond article.\n", encoding="latin-1")
    (tmp_path / "lee.cor").write_text("Held article \xe9t\xe9.\n\n", encoding="latin-1")
    documents = lee_documents(tmp_path)
    assert documents == {
        "lee_background.cor:0": "First article text.",
        "lee_background.cor:1": "Second article.",
        "lee.cor:0": "Held article été.",
    }
    (tmp_path / "lee.cor").unlink()
    with pytest.raises(FileNotFoundError, match="lee.cor"):
        lee_documents(tmp_path)


def test_domain_tokens_become_unsplit_special_tokens():
    tokenizer = load_domain_tokenizer(TOKENIZER, ["<DOMAIN_NEWS>", "<DOMAIN_LAW>"])
    assert len(tokenizer) == 30522 + 2
    ids = tokenizer.convert_tokens_to_ids(["<DOMAIN_NEWS>", "<DOMAIN_LAW>"])
    assert ids == [30522, 30523] and set(ids) <= set(tokenizer.all_special_ids)
    encoded = tokenizer(with_domain_prefix(["Hello world"], ["<DOMAIN_NEWS>"]))["input_ids"][0]
    assert tokenizer.convert_ids_to_tokens(encoded) == ["[CLS]", "<DOMAIN_NEWS>", "hello", "world", "[SEP]"]
    assert len(load_domain_tokenizer(TOKENIZER)) == 30522


@pytest.mark.parametrize("token", ["[MASK]", "python", "##ing"])
def test_existing_token_is_rejected_by_name(token):
    with pytest.raises(ValueError, match=rf"domain_tokens: '{__import__('re').escape(token)}' already exists in the vocabulary"):
        load_domain_tokenizer(TOKENIZER, ["<NEW>", token])


def test_domain_token_validation():
    assert validate_domain_tokens(None) == []
    with pytest.raises(TypeError, match="list of str"):
        validate_domain_tokens("<D>")
    with pytest.raises(ValueError, match="without whitespace"):
        validate_domain_tokens(["<D A>"])
    with pytest.raises(ValueError, match="distinct"):
        validate_domain_tokens(["<D>", "<D>"])
    assert with_domain_prefix(["x"], []) == ["x"]
    assert with_domain_prefix(["x"], ["<A>", "<B>"]) == ["<A> <B> x"]
