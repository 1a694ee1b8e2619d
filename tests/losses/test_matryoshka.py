"""MatryoshkaContrastiveLoss: per-dim slices, weights, single-dim sampling, dims validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prismrl.losses import (
    ClipLoss,
    MatryoshkaContrastiveLoss,
    SigLipLoss,
    validate_matryoshka_dims,
)

DIMS = [2, 4, 8]


def _raw_features(batch: int = 6, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = 3.0 * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    text = 3.0 * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return image.requires_grad_(), text.requires_grad_()


def _manual(base: torch.nn.Module, image: torch.Tensor, text: torch.Tensor, d: int) -> torch.Tensor:
    return base(F.normalize(image[:, :d], dim=-1), F.normalize(text[:, :d], dim=-1))


@pytest.mark.parametrize("base_cls", [ClipLoss, SigLipLoss])
def test_every_dim_matches_manual_slice_normalize_loss(base_cls: type) -> None:
    base = base_cls().double()
    weights = [1.0, 2.0, 5.0]
    loss_fn = MatryoshkaContrastiveLoss(base, DIMS, dim_weights=weights, full_dim_weight=0.25, mrl_weight=1.5)
    image, text = _raw_features()
    out = loss_fn(image, text)
    assert sorted(out.per_dim) == DIMS
    manual = {d: _manual(base, image, text, d) for d in DIMS}
    for d in DIMS:
        assert out.per_dim[d].item() == pytest.approx(manual[d].item(), abs=1e-12)
    full = _manual(base, image, text, 16)
    assert out.full.item() == pytest.approx(full.item(), abs=1e-12)
    mrl = (1.0 * manual[2] + 2.0 * manual[4] + 5.0 * manual[8]) / 8.0
    assert out.mrl.item() == pytest.approx(mrl.item(), abs=1e-12)
    assert out.total.item() == pytest.approx(0.25 * full.item() + 1.5 * mrl.item(), abs=1e-12)
    # the shared temperature receives gradient from every dim
    out.total.backward()
    assert base.logit_scale.grad is not None and base.logit_scale.grad.abs().item() > 0


def test_full_dim_inside_dims_and_empty_dims() -> None:
    base = ClipLoss().double()
    image, text = _raw_features()
    out = MatryoshkaContrastiveLoss(base, [4, 16])(image, text)
    assert out.per_dim[16] is out.full
    off = MatryoshkaContrastiveLoss(base, [], full_dim_weight=0.5)(image, text)
    assert off.per_dim == {} and off.mrl.item() == 0.0
    assert off.total.item() == pytest.approx(0.5 * _manual(base, image, text, 16).item(), abs=1e-12)


def test_pair_mask_reaches_every_dim() -> None:
    base = ClipLoss().double()
    image, text = _raw_features()
    mask = torch.tensor([True, True, False, True, False, True])
    out = MatryoshkaContrastiveLoss(base, DIMS)(image, text, pair_mask=mask)
    for d in DIMS:
        assert out.per_dim[d].item() == pytest.approx(_manual(base, image[mask], text[mask], d).item(), abs=1e-12)


def test_sample_single_dim_uses_global_rng_and_reproduces() -> None:
    base = ClipLoss().double()
    weights = [1.0, 1.0, 2.0]
    loss_fn = MatryoshkaContrastiveLoss(base, DIMS, dim_weights=weights, sample_single_dim=True).train()
    image, text = _raw_features()

    def run(steps: int) -> list[int]:
        picked = []
        for _ in range(steps):
            out = loss_fn(image, text)
            (d,) = out.per_dim
            i = DIMS.index(d)
            # unbiased estimate of the weighted mean: n * w_d / sum(w) * L(d)
            assert out.mrl.item() == pytest.approx(3 * weights[i] / 4.0 * out.per_dim[d].item(), abs=1e-12)
            picked.append(d)
        return picked

    torch.manual_seed(123)
    first = run(30)
    torch.manual_seed(123)
    expected = [DIMS[int(torch.randint(len(DIMS), (1,)).item())] for _ in range(30)]
    assert first == expected
    assert set(first) == set(DIMS)
    torch.manual_seed(123)
    assert run(30) == first
    state = torch.get_rng_state()  # restoring the RNG state resumes the same sequence
    after = run(10)
    torch.set_rng_state(state)
    assert run(10) == after


def test_eval_mode_scores_all_dims_without_consuming_rng() -> None:
    loss_fn = MatryoshkaContrastiveLoss(ClipLoss().double(), DIMS, sample_single_dim=True).eval()
    image, text = _raw_features()
    state = torch.get_rng_state()
    out = loss_fn(image, text)
    assert sorted(out.per_dim) == DIMS
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("dims", "problem"),
    [
        ([8, 4], "not strictly increasing at 8 -> 4"),
        ([4, 4], "not strictly increasing at 4 -> 4"),
        ([0, 8], "0 is not a positive int"),
        ([2, -1], "-1 is not a positive int"),
        ([4.0], "4.0 is not a positive int"),
        ([8, 32], "32 exceeds the full feature dim 16"),
        ("8", "a str, not a list"),
    ],
)
def test_invalid_dims_raise_clear_errors(dims: object, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_matryoshka_dims(dims, 16)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("dims: expected strictly increasing positive ints and <= full_dim=16")
    assert f"received {dims!r}" in message and problem in message
    with pytest.raises(ValueError, match="dims:"):
        MatryoshkaContrastiveLoss(ClipLoss(), dims, full_dim=16)  # type: ignore[arg-type]


def test_dims_checked_against_features_and_weights_checked() -> None:
    loss_fn = MatryoshkaContrastiveLoss(ClipLoss(), [4, 32])  # full dim unknown at construction
    with pytest.raises(ValueError, match="32 exceeds the full feature dim 16"):
        loss_fn(torch.randn(3, 16), torch.randn(3, 16))
    with pytest.raises(ValueError, match="dim_weights: expected 2 non-negative floats"):
        MatryoshkaContrastiveLoss(ClipLoss(), [4, 8], dim_weights=[1.0])
    with pytest.raises(ValueError, match="mrl_weight"):
        MatryoshkaContrastiveLoss(ClipLoss(), [4, 8], mrl_weight=-1.0)
    with pytest.raises(ValueError, match="expected feature dim full_dim=8, received 16"):
        MatryoshkaContrastiveLoss(ClipLoss(), [4], full_dim=8)(torch.randn(3, 16), torch.randn(3, 16))
