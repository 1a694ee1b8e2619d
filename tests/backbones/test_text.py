import pytest
import torch
import torch.nn.functional as F

from prismrl.backbones import HFTextEncoder

from .conftest import tiny_text_config

LONG = "a much longer sentence with very many words in it so that the first one gets padded"


def cosine(a, b):
    return float(F.cosine_similarity(a, b, dim=-1))


def test_minilm_shapes_and_semantics(minilm):
    assert minilm.hidden_size == 384
    with torch.no_grad():
        out = minilm.encode(["a dog", "a puppy", "quantum chromodynamics"])
    assert out.tokens.shape[0] == 3 and out.tokens.shape[2] == 384
    assert out.mask.dtype == torch.bool and out.mask.shape == out.tokens.shape[:2]
    assert out.pooled.shape == (3, 384)
    dog, puppy, qcd = out.pooled
    assert cosine(dog, puppy) > cosine(dog, qcd) + 0.3


def test_minilm_mean_pooling_ignores_padding(minilm):
    with torch.no_grad():
        alone = minilm.encode(["a dog"])
        batch = minilm.encode(["a dog", LONG])
    assert not batch.mask[0].all()  # the short text really is padded
    torch.testing.assert_close(batch.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)
    # hand-computed masked mean over the real tokens only
    real = batch.mask[0]
    torch.testing.assert_close(batch.pooled[0], batch.tokens[0][real].mean(dim=0))


def test_tokenize_pads_and_truncates(minilm):
    batch = minilm.tokenize(["hi", LONG * 10])
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (2, minilm.max_length)
    assert batch["attention_mask"][0].sum() == 3  # [CLS] hi [SEP]
    with pytest.raises(TypeError, match="texts"):
        minilm.tokenize("not a list")
    with pytest.raises(ValueError, match="texts"):
        minilm.tokenize([])


def test_forward_without_mask_uses_all_tokens(minilm):
    batch = minilm.tokenize(["a dog"])
    with torch.no_grad():
        torch.testing.assert_close(minilm(batch["input_ids"]).pooled, minilm(**batch).pooled)
    with pytest.raises(ValueError, match="input_ids"):
        minilm(batch["input_ids"][0])


@pytest.mark.parametrize("model_type", ["bert", "modernbert", "roberta"])
def test_tiny_configs(model_type):
    torch.manual_seed(0)
    enc = HFTextEncoder(tiny_config=tiny_text_config(model_type)).eval()
    assert enc.hidden_size == 32
    assert enc.model.config.pad_token_id == enc.tokenizer.pad_token_id
    with torch.no_grad():
        alone = enc.encode(["a dog"])
        batch = enc.encode(["a dog", LONG])
    assert batch.tokens.shape == (2, batch.mask.shape[1], 32) and batch.pooled.shape == (2, 32)
    assert not batch.mask[0].all()
    torch.testing.assert_close(batch.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch.pooled[0], batch.pooled[1], atol=1e-3)


def test_cls_pooling_is_first_token():
    enc = HFTextEncoder(tiny_config=tiny_text_config("bert"), pooling="cls").eval()
    with torch.no_grad():
        out = enc.encode(["a dog", LONG])
    torch.testing.assert_close(out.pooled, out.tokens[:, 0])


def test_eager_and_sdpa_agree():
    torch.manual_seed(0)
    sdpa = HFTextEncoder(tiny_config=tiny_text_config("bert")).eval()
    eager = HFTextEncoder(tiny_config=tiny_text_config("bert"), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert eager.model.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(sdpa.encode(["a dog", LONG]).pooled, eager.encode(["a dog", LONG]).pooled)


def test_gradient_checkpointing_gives_the_same_gradients():
    config = tiny_text_config("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    plain = HFTextEncoder(tiny_config=config).train()
    ckpt = HFTextEncoder(tiny_config=config, gradient_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.model.is_activation_checkpointing
    for enc in (plain, ckpt):
        enc.encode(["a dog", LONG]).pooled.pow(2).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_load_from_saved_folder(tmp_path):
    torch.manual_seed(0)
    tiny = HFTextEncoder(tiny_config=tiny_text_config("roberta")).eval()
    tiny.save_pretrained(str(tmp_path))
    loaded = HFTextEncoder(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(["a dog", LONG]).pooled, tiny.encode(["a dog", LONG]).pooled)


def test_vocab_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"tiny_config.vocab_size: expected >= 30522 .* received 100"):
        HFTextEncoder(tiny_config=tiny_text_config("bert", vocab_size=100))


@pytest.mark.parametrize(
    "kwargs", [{}, {"model_name_or_path": "shipped:all-minilm-l6-v2", "tiny_config": tiny_text_config("bert")}]
)
def test_exactly_one_model_source(kwargs):
    with pytest.raises(ValueError, match="exactly one"):
        HFTextEncoder(**kwargs)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"pooling": "max"}, "pooling"),
        ({"max_length": 1000}, "max_length"),
        ({"max_length": 1}, "max_length"),
        ({"tiny_config": {"hidden_size": 8}}, "model_type"),
    ],
)
def test_bad_settings(kwargs, field):
    kwargs.setdefault("tiny_config", tiny_text_config("bert"))
    with pytest.raises(ValueError, match=field):
        HFTextEncoder(**kwargs)


@pytest.mark.parametrize("model_type", ["bert", "modernbert", "roberta"])
def test_every_parameter_gets_a_gradient(model_type):
    """No unused weights (BERT's pooler is dropped), so DDP needs no find_unused_parameters."""
    enc = HFTextEncoder(tiny_config=tiny_text_config(model_type))
    enc.encode(["a dog", LONG]).pooled.pow(2).sum().backward()
    assert [n for n, p in enc.named_parameters() if p.grad is None] == []


def test_pretrained_encoder_trains_with_dropout_unless_frozen():
    from prismrl.backbones.text import HFTextEncoder

    trainable = HFTextEncoder(model_name_or_path="shipped:all-minilm-l6-v2")
    frozen = HFTextEncoder(model_name_or_path="shipped:all-minilm-l6-v2", freeze=True)
    assert all(m.training for m in trainable.model.modules())  # from_pretrained alone would leave dropout off
    assert not any(m.training for m in frozen.model.modules())
