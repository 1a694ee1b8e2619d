"""ClipLoss / SigLipLoss against naive per-element references, clamping, masks and the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prismrl.losses import (
    ClipLoss,
    ContrastiveKind,
    SigLipLoss,
    build_contrastive_loss,
)


def _features(batch: int = 5, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=-1)
    return image.requires_grad_(), text.requires_grad_()


def naive_clip(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-row loop, log-softmax by hand: mean over rows and both directions of -log softmax_ii."""
    batch = image.shape[0]
    total = image.new_zeros(())
    for queries, keys in ((image, text), (text, image)):
        for i in range(batch):
            logits = [scale * torch.dot(queries[i], keys[j]) for j in range(batch)]
            peak = max(float(v) for v in logits)
            log_norm = peak + torch.log(sum(torch.exp(v - peak) for v in logits))
            total = total + (log_norm - logits[i])
    return total / (2 * batch)


def naive_siglip(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Double loop: -sum_ij log sigmoid(z_ij * (s x_i.y_j + b)) / B."""
    batch = image.shape[0]
    total = image.new_zeros(())
    for i in range(batch):
        for j in range(batch):
            z = 1.0 if i == j else -1.0
            logit = scale * torch.dot(image[i], text[j]) + bias
            total = total - torch.log(1.0 / (1.0 + torch.exp(-z * logit)))
    return total / batch


def _grads(loss: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, tensors)


def test_clip_matches_naive_loop_and_gradients() -> None:
    image, text = _features()
    loss_fn = ClipLoss(init_temperature=0.2).double()
    loss = loss_fn(image, text)
    scale = loss_fn.logit_scale.exp()
    ref = naive_clip(image, text, scale)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-10)
    got = _grads(loss, image, text, loss_fn.logit_scale)
    want = _grads(ref, image, text, loss_fn.logit_scale)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-8)
    assert loss_fn.temperature.item() == pytest.approx(0.2)


def test_clip_directions_are_not_symmetric_copies() -> None:
    # Swapping image and text keeps the loss (symmetric), but a one-direction loss would differ.
    image, text = _features(seed=3)
    loss_fn = ClipLoss().double()
    assert loss_fn(image, text).item() == pytest.approx(loss_fn(text, image).item(), abs=1e-12)
    scale = loss_fn.logit_scale.exp()
    one_direction = F.cross_entropy(scale * image @ text.T, torch.arange(5))
    assert abs(loss_fn(image, text).item() - one_direction.item()) > 1e-4


def test_clip_temperature_is_clamped_in_place_and_keeps_gradient() -> None:
    image, text = _features()
    loss_fn = ClipLoss(max_logit_scale=100.0).double()
    with torch.no_grad():
        loss_fn.logit_scale.fill_(20.0)  # exp(20) ~ 4.9e8
    assert loss_fn.temperature.item() == pytest.approx(0.01)
    loss = loss_fn(image, text)
    assert loss_fn.logit_scale.exp().item() <= 100.0 + 1e-9
    ref = naive_clip(image, text, torch.tensor(100.0, dtype=torch.float64))
    assert loss.item() == pytest.approx(ref.item(), abs=1e-9)
    loss.backward()
    assert loss_fn.logit_scale.grad is not None and loss_fn.logit_scale.grad.abs().item() > 0


def test_fixed_temperature_is_a_buffer() -> None:
    loss_fn = ClipLoss(init_temperature=0.05, learnable_temperature=False)
    assert list(loss_fn.parameters()) == []
    assert "logit_scale" in loss_fn.state_dict()
    assert loss_fn.temperature.item() == pytest.approx(0.05)


def test_siglip_matches_naive_double_loop_and_gradients() -> None:
    image, text = _features(batch=4, dim=3, seed=1)
    loss_fn = SigLipLoss(init_temperature=0.25, init_bias=-2.0).double()
    loss = loss_fn(image, text)
    ref = naive_siglip(image, text, loss_fn.logit_scale.exp(), loss_fn.logit_bias)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-10)
    params = (image, text, loss_fn.logit_scale, loss_fn.logit_bias)
    for g, w in zip(_grads(loss, *params), _grads(ref, *params)):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-8)


def test_siglip_defaults_and_hand_computed_2x2() -> None:
    default = SigLipLoss()
    assert default.logit_scale.item() == pytest.approx(math.log(10.0))
    assert default.logit_bias.item() == pytest.approx(-10.0)
    # s = 2, b = -1; x.y = [[0.6, 0.8], [0.8, -0.6]] -> logits [[0.2, 0.6], [0.6, -2.2]]
    # L = (softplus(-0.2) + 2 softplus(0.6) + softplus(2.2)) / 2 = 2.4890990...
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    loss = SigLipLoss(init_temperature=0.5, init_bias=-1.0)(image, text)
    assert loss.item() == pytest.approx(2.4890990, abs=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_pair_mask_drops_rows_and_columns(kind: str) -> None:
    image, text = _features(batch=6, seed=2)
    mask = torch.tensor([True, False, True, True, False, True])
    loss_fn = build_contrastive_loss(kind).double()
    masked = loss_fn(image, text, pair_mask=mask)
    subset = loss_fn(image[mask], text[mask])
    assert masked.item() == pytest.approx(subset.item(), abs=1e-12)
    gi, gt = _grads(masked, image, text)
    assert torch.all(gi[~mask] == 0) and torch.all(gt[~mask] == 0)
    assert gi[mask].abs().sum() > 0


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_all_invalid_pairs_give_zero_loss_without_nan(kind: str) -> None:
    image, text = _features(batch=3)
    loss_fn = build_contrastive_loss(kind).double()
    loss = loss_fn(image, text, pair_mask=torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(image.grad == 0) and not torch.isnan(loss_fn.logit_scale.grad)


def test_bad_inputs_raise_clear_errors() -> None:
    loss_fn = ClipLoss()
    with pytest.raises(ValueError, match="image_features/text_features.*\\(4, 3\\) and \\(4, 2\\)"):
        loss_fn(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="image_features: expected a float tensor of shape \\[B, D\\]"):
        loss_fn(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="pair_mask: expected a bool tensor of shape \\[4\\]"):
        loss_fn(torch.randn(4, 3), torch.randn(4, 3), pair_mask=torch.ones(4))
    with pytest.raises(ValueError, match="init_temperature"):
        ClipLoss(init_temperature=0.0)


def test_registry() -> None:
    assert isinstance(build_contrastive_loss("clip", init_temperature=0.1), ClipLoss)
    siglip = build_contrastive_loss(ContrastiveKind.siglip, init_bias=-5.0)
    assert isinstance(siglip, SigLipLoss) and siglip.logit_bias.item() == -5.0
    with pytest.raises(ValueError, match="kind: expected one of \\['clip', 'siglip'\\], received 'infonce'"):
        build_contrastive_loss("infonce")
