import pytest
import torch
from torch import nn

from prismrl.backbones import (
    EfficientNetLiteEncoder,
    EmbeddingTower,
    HFTextEncoder,
    HFVisionEncoder,
)

from .conftest import tiny_text_config, tiny_vision_config

LONG = "a much longer sentence with very many words in it"


@pytest.fixture(scope="module")
def text_tower() -> EmbeddingTower:
    torch.manual_seed(0)
    return EmbeddingTower(HFTextEncoder(tiny_config=tiny_text_config("bert")), embed_dim=16, attention_heads=4).eval()


def test_text_tower_shapes_and_padding(text_tower):
    with torch.no_grad():
        alone = text_tower.encode_texts(["a dog"])
        batch = text_tower.encode_texts(["a dog", LONG])
        tokens = text_tower.encoder.tokenize(["a dog", LONG])
        direct, enc = text_tower.forward_with_tokens(**tokens)
    assert batch.shape == (2, 16)
    torch.testing.assert_close(batch[0], alone[0], atol=1e-5, rtol=1e-5)  # padding is masked out of the pool
    torch.testing.assert_close(direct, batch)
    torch.testing.assert_close(direct, text_tower.projection(text_tower.pool(enc.tokens, enc.mask)[:, 0]))


def test_encoder_pooling_uses_the_encoders_vector():
    torch.manual_seed(0)
    tower = EmbeddingTower(HFTextEncoder(tiny_config=tiny_text_config("bert")), embed_dim=8, pooling="encoder").eval()
    assert tower.pool is None
    with torch.no_grad():
        emb, enc = tower.forward_with_tokens(**tower.encoder.tokenize(["a dog", LONG]))
    torch.testing.assert_close(emb, tower.projection(enc.pooled))


def test_vision_towers():
    torch.manual_seed(0)
    clip = EmbeddingTower(HFVisionEncoder(tiny_config=tiny_vision_config("clip_vision_model")), 8, attention_heads=2)
    cnn = EmbeddingTower(EfficientNetLiteEncoder(pretrained=False), 8, projection_hidden_dim=32)
    assert clip(torch.randn(2, 3, 32, 32)).shape == (2, 8)
    out = cnn(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 8)
    out.sum().backward()
    assert cnn.pool.queries.grad is not None and cnn.pool.queries.grad.abs().sum() > 0
    with pytest.raises(TypeError, match="encode_texts"):
        clip.encode_texts(["a dog"])


def test_tower_errors():
    enc = HFTextEncoder(tiny_config=tiny_text_config("bert"))
    with pytest.raises(ValueError, match="attention_heads: must be a positive divisor of the encoder's hidden_size=32"):
        EmbeddingTower(enc, 8, attention_heads=3)
    with pytest.raises(ValueError, match="pooling"):
        EmbeddingTower(enc, 8, pooling="max")
    with pytest.raises(ValueError, match="embed_dim"):
        EmbeddingTower(enc, 0)
    with pytest.raises(TypeError, match="hidden_size"):
        EmbeddingTower(nn.Linear(2, 2), 8)
