"""MaskedLMModule: domain tokens, the sparse MLM loss against transformers' own, export, DAP round trip."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from prismrl.backbones import HFTextEncoder
from prismrl.backbones.masked_lm import load_dap_encoder_into
from prismrl.data.loaders import LoaderSettings
from prismrl.datamodules.text_corpus import TextCorpusDataModule
from prismrl.lightning_modules.masked_lm import MaskedLMModule
from prismrl.optim import OptimizerSettings

TOKENIZER = "shipped:all-minilm-l6-v2"
DOMAIN = ["<DOMAIN_PYDOC>", "<DOMAIN_CODE>"]
TINY = {
    "bert": dict(model_type="bert", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=64),
    "roberta": dict(model_type="roberta", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=80),
    "modernbert": dict(model_type="modernbert", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=64, global_attn_every_n_layers=1),
}


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> TextCorpusDataModule:
    dm = TextCorpusDataModule(TOKENIZER, DOMAIN, root=str(tmp_path_factory.mktemp("cache")), max_length=48,
                              loader=LoaderSettings(batch_size=8))
    dm.setup("fit")
    return dm


def _module(family: str = "bert", domain=DOMAIN, **kwargs) -> MaskedLMModule:
    torch.manual_seed(0)
    return MaskedLMModule(tiny_config=dict(TINY[family], vocab_size=30522), tokenizer_name_or_path=TOKENIZER,
                          domain_tokens=domain, **kwargs)


def _train_steps(module: MaskedLMModule, datamodule, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    for _, batch in zip(range(steps), datamodule.train_dataloader()):
        logits, targets = module.masked_logits(batch)
        torch.nn.functional.cross_entropy(logits, targets).backward()
        optimizer.step()
        optimizer.zero_grad()


def test_domain_tokens_resize_embeddings_to_the_mean_row():
    module = _module()
    embeddings = module.model.get_input_embeddings().weight
    assert module.vocab_size == 30524 and embeddings.shape == (30524, 32)
    assert module.domain_token_ids == [30522, 30523]
    expected = embeddings[:30522].mean(dim=0)
    torch.testing.assert_close(embeddings[30522], expected)
    torch.testing.assert_close(embeddings[30523], expected)
    bias = module.model.cls.predictions.bias
    assert bias.shape == (30524,) and module.model.get_output_embeddings().weight is embeddings
    logits, _ = module.masked_logits({"input_ids": torch.tensor([[101, 30523, 2003, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
                                      "labels": torch.tensor([[-100, -100, 2003, -100]])})
    assert logits.shape == (1, 30524)


def test_existing_domain_token_is_a_clear_error():
    with pytest.raises(ValueError, match=r"domain_tokens: '\[SEP\]' already exists in the vocabulary of tokenizer 'shipped:all-minilm-l6-v2'"):
        _module(domain=["<NEW>", "[SEP]"])


@pytest.mark.parametrize("family", ["bert", "roberta", "modernbert"])
def test_sparse_loss_equals_the_transformers_loss_and_export_loads_in_hf_text_encoder(family, datamodule, tmp_path):
    module = _module(family)
    _train_steps(module, datamodule, steps=2)
    module.eval()
    batch = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        logits, targets = module.masked_logits(batch)
        reference = module.model(**batch).loss  # full logits at every position, then cross-entropy on the labels
    assert logits.shape == (int((batch["labels"] != -100).sum()), 30524)
    torch.testing.assert_close(torch.nn.functional.cross_entropy(logits, targets), reference, rtol=1e-5, atol=1e-5)

    folder = module.export_encoder(tmp_path / "encoder")
    encoder = HFTextEncoder(model_name_or_path=str(folder), max_length=48)
    expected, loaded = module.encoder.state_dict(), encoder.model.state_dict()
    assert expected.keys() == loaded.keys()
    for key in expected:
        assert torch.equal(expected[key], loaded[key]), key
    assert len(encoder.tokenizer) == 30524 and encoder.tokenizer.convert_tokens_to_ids(DOMAIN) == [30522, 30523]
    out = encoder.encode(["<DOMAIN_PYDOC> the assert statement"])
    assert out.pooled.shape == (1, 32)


def test_export_replaces_an_existing_folder_atomically(tmp_path):
    module = _module()
    target = tmp_path / "encoder"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    module.export_encoder(target)
    names = sorted(p.name for p in target.iterdir())
    assert "stale.txt" not in names and {"config.json", "model.safetensors", "tokenizer.json", "prismrl_dap.json"} <= set(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]  # no temp or old folders left behind
    assert module.model.config.architectures is None  # the MLM model's config is left as it was


def test_load_dap_encoder_into_copies_weights_and_checks_sizes(datamodule, tmp_path):
    module = _module()
    _train_steps(module, datamodule, steps=2)
    folder = module.export_encoder(tmp_path / "encoder")
    target = HFTextEncoder(tiny_config=dict(TINY["bert"], vocab_size=30524), max_length=48)
    assert not torch.equal(target.model.embeddings.word_embeddings.weight, module.encoder.embeddings.word_embeddings.weight)
    load_dap_encoder_into(target, folder)
    for key, value in module.encoder.state_dict().items():
        assert torch.equal(target.model.state_dict()[key], value), key
    assert target.tokenizer.convert_tokens_to_ids(DOMAIN) == [30522, 30523]

    with pytest.raises(ValueError, match=r"vocab_size: the DAP encoder in .* has 30524, the text encoder has 30522"):
        load_dap_encoder_into(HFTextEncoder(tiny_config=TINY["bert"], max_length=48), folder)
    with pytest.raises(ValueError, match=r"hidden_size: the DAP encoder in .* has 32, the text encoder has 16"):
        load_dap_encoder_into(HFTextEncoder(tiny_config=dict(TINY["bert"], vocab_size=30524, hidden_size=16), max_length=48), folder)
    with pytest.raises(ValueError, match=r"model_type: the DAP encoder in .* has 'bert', the text encoder has 'roberta'"):
        load_dap_encoder_into(HFTextEncoder(tiny_config=dict(TINY["roberta"], vocab_size=30524), max_length=48), folder)


def test_setup_rejects_a_datamodule_with_another_tokenizer(tmp_path, datamodule):
    module = _module(domain=["<DOMAIN_PYDOC>"])
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"tokenizer: the datamodule tokenizer has 30524 tokens, the model's has 30523; give the datamodule"):
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 0
    swapped = TextCorpusDataModule(TOKENIZER, ["<DOMAIN_CODE>", "<DOMAIN_PYDOC>"], root=datamodule.hparams.root,
                                   max_length=48, loader=LoaderSettings(batch_size=8))
    with pytest.raises(ValueError, match=r"domain_tokens: the datamodule tokenizer maps \['<DOMAIN_PYDOC>', '<DOMAIN_CODE>'\] to \[30523, 30522\]"):
        pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   default_root_dir=tmp_path).fit(_module(), datamodule=swapped)


def test_fit_and_validate_log_masked_metrics_and_export_at_the_end(tmp_path, datamodule):
    module = _module(export_dir=str(tmp_path / "exported"),
                     optimizer=OptimizerSettings(lr=5e-3, betas=(0.9, 0.98), warmup_ratio=0.06))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=4, limit_val_batches=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    before = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    trainer.fit(module, datamodule=datamodule)
    after = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    for metrics in (before, after):
        assert 0.0 <= metrics["val/masked_accuracy"] <= 1.0
        assert metrics["val/perplexity"] == pytest.approx(float(torch.exp(torch.tensor(metrics["val/loss"]))), rel=1e-5)
    assert before["val/loss"] == pytest.approx(float(torch.log(torch.tensor(30524.0))), abs=0.3)  # ~uniform at init
    assert after["val/loss"] < before["val/loss"]
    exported = HFTextEncoder(model_name_or_path=str(tmp_path / "exported"), max_length=48)
    assert torch.equal(exported.model.embeddings.word_embeddings.weight, module.encoder.embeddings.word_embeddings.weight)


def test_shipped_minilm_gets_a_new_mlm_head_in_train_mode(caplog):
    with caplog.at_level("WARNING", logger="prismrl.lightning_modules.masked_lm"):
        module = MaskedLMModule(model_name_or_path=TOKENIZER, domain_tokens=["<DOMAIN_PYDOC>"])
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "shipped:all-minilm-l6-v2 has no weights for" in message and "cls.predictions.transform.dense.weight" in message
    assert all(m.training for m in module.model.modules())  # dropout active during fit
    assert module.model.config.hidden_size == 384 and module.vocab_size == 30523
