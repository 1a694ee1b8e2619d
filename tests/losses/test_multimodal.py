"""Tri-modal pairwise contrastive loss: missing modalities are masked, never dropped or silently counted."""

from __future__ import annotations

import math

import pytest
import torch

from prismrl.losses.contrastive import ClipLoss, SigLipLoss
from prismrl.losses.matryoshka import MatryoshkaContrastiveLoss
from prismrl.losses.multimodal import multimodal_contrastive_loss, pair_name

B, D = 8, 16
IT, AT, AI = ("image", "text"), ("audio", "text"), ("audio", "image")


def _features(seed: int = 0, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(B, D, generator=g).requires_grad_(requires_grad) for m in ("image", "text", "audio")}


def _mrl(base=None, dims=(4, 8)) -> MatryoshkaContrastiveLoss:
    return MatryoshkaContrastiveLoss(base or ClipLoss(init_temperature=0.1), dims=list(dims), full_dim=D)


def _naive_clip(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """Symmetric InfoNCE with explicit loops:
    mean_i of (-log softmax_j(s a_i.b_j)[i] - log softmax_j(s b_i.a_j)[i]) / 2."""
    a = [x / x.norm() for x in a.double()]
    b = [x / x.norm() for x in b.double()]
    n, total = len(a), 0.0
    for i in range(n):
        row_ab = [scale * float(a[i] @ b[j]) for j in range(n)]
        row_ba = [scale * float(b[i] @ a[j]) for j in range(n)]
        total += -(row_ab[i] - math.log(sum(math.exp(v) for v in row_ab)))
        total += -(row_ba[i] - math.log(sum(math.exp(v) for v in row_ba)))
    return total / (2 * n)


def _naive_mrl(a: torch.Tensor, b: torch.Tensor, scale: float, dims=(4, 8)) -> float:
    full = _naive_clip(a, b, scale)
    return full + sum(_naive_clip(a[:, :d], b[:, :d], scale) for d in dims) / len(dims)


def test_a_modality_missing_everywhere_gives_the_bimodal_loss():
    features = _features(requires_grad=True)
    losses = {IT: _mrl(), AT: _mrl(), AI: _mrl()}
    presence = {"audio": torch.zeros(B, dtype=torch.bool)}
    out = multimodal_contrastive_loss(features, losses, presence, {IT: 1.0, AT: 0.7, AI: 2.0})
    bimodal = _mrl()(features["image"], features["text"]).total
    torch.testing.assert_close(out.total, bimodal, rtol=0, atol=0)
    assert out.present == {IT: B, AT: 0, AI: 0}
    out.total.backward()
    assert features["audio"].grad is not None and torch.count_nonzero(features["audio"].grad) == 0  # in the graph, no pull


def test_partially_missing_audio_equals_the_loss_over_rows_with_both():
    features = _features(1)
    audio_present = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    losses = {IT: _mrl(), AT: _mrl(), AI: _mrl()}
    out = multimodal_contrastive_loss(features, losses, {"audio": audio_present}, {IT: 1.0, AT: 0.5, AI: 2.0})
    rows = audio_present.nonzero().flatten()
    expected_at = _naive_mrl(features["audio"][rows], features["text"][rows], scale=10.0)
    expected_ai = _naive_mrl(features["audio"][rows], features["image"][rows], scale=10.0)
    expected_it = _naive_mrl(features["image"], features["text"], scale=10.0)
    assert out.pairs[AT].total.item() == pytest.approx(expected_at, rel=1e-5)
    assert out.pairs[AI].total.item() == pytest.approx(expected_ai, rel=1e-5)
    assert out.pairs[IT].total.item() == pytest.approx(expected_it, rel=1e-5)
    assert out.total.item() == pytest.approx(expected_it + 0.5 * expected_at + 2.0 * expected_ai, rel=1e-5)
    assert out.present == {IT: B, AT: 5, AI: 5}


def test_missing_text_and_audio_combine_per_pair():
    features = _features(2)
    text = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    audio = torch.tensor([1, 0, 1, 1, 1, 0, 1, 1], dtype=torch.bool)
    losses = {IT: _mrl(), AT: _mrl(), AI: _mrl()}
    out = multimodal_contrastive_loss(features, losses, {"text": text, "audio": audio})
    for pair, rows in ((IT, text), (AT, text & audio), (AI, audio)):
        a, b = (features[m][rows] for m in pair)
        assert out.pairs[pair].total.item() == pytest.approx(_naive_mrl(a, b, scale=10.0), rel=1e-5), pair
    assert out.present == {IT: 6, AT: 4, AI: 6}


def test_siglip_pairs_also_reduce_to_the_sub_batch():
    features = _features(3)
    audio = torch.tensor([0, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)
    loss = _mrl(SigLipLoss(init_temperature=0.1, init_bias=-5.0), dims=(8,))
    out = multimodal_contrastive_loss(features, {AT: loss}, {"audio": audio})
    sub = loss(features["audio"][audio], features["text"][audio]).total
    torch.testing.assert_close(out.total, sub, rtol=1e-6, atol=1e-6)


def test_each_pair_keeps_its_own_temperature_gradient():
    features = _features(4)
    losses = {IT: _mrl(), AT: _mrl(), AI: _mrl()}
    multimodal_contrastive_loss(features, losses).total.backward()
    grads = [losses[p].base_loss.logit_scale.grad for p in (IT, AT, AI)]
    assert all(g is not None and g.abs() > 0 for g in grads)
    assert len({round(float(g), 8) for g in grads}) == 3


def test_pair_name():
    assert pair_name(AT) == "audio_text"


def test_bad_inputs_are_named():
    features = _features()
    losses = {IT: _mrl()}
    with pytest.raises(ValueError, match="pair_losses"):
        multimodal_contrastive_loss(features, {})
    with pytest.raises(ValueError, match=r"presence\['text'\]: expected a bool tensor of shape \[8\]"):
        multimodal_contrastive_loss(features, losses, {"text": torch.ones(B)})
    with pytest.raises(ValueError, match=r"presence\['text'\]"):
        multimodal_contrastive_loss(features, losses, {"text": torch.ones(B + 1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="names a modality without features"):
        multimodal_contrastive_loss({"image": features["image"], "text": features["text"]}, {AT: _mrl()})
    with pytest.raises(ValueError, match="one common B"):
        multimodal_contrastive_loss({"image": features["image"], "text": features["text"][:4]}, losses)
    with pytest.raises(ValueError, match="pair_weights: expected non-negative"):
        multimodal_contrastive_loss(features, losses, pair_weights={IT: -1.0})
