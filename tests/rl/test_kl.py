"""KL estimators k1/k2/k3: hand numbers, exact expectations under the policy, clamp, registry."""

from __future__ import annotations

import math

import pytest
import torch

from prismrl.rl.kl import KL_ESTIMATORS, KLEstimator, kl_penalty


def test_hand_numbers():
    # pi(y) = 0.5, pi_ref(y) = 0.25: d = log pi_ref - log pi = -log 2
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    log2 = math.log(2.0)
    assert kl_penalty(logp, ref, KLEstimator.K1).item() == pytest.approx(log2)  # 0.693147
    assert kl_penalty(logp, ref, KLEstimator.K2).item() == pytest.approx(0.5 * log2**2)  # 0.240227
    assert kl_penalty(logp, ref, KLEstimator.K3).item() == pytest.approx(0.5 + log2 - 1.0)  # 0.193147
    same = torch.randn(2, 3)
    for est in KLEstimator:
        assert torch.equal(kl_penalty(same, same, est), torch.zeros(2, 3))


def test_k1_k3_unbiased_k2_second_order_exact_expectation():
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)  # policy over 7 tokens
    ref = torch.log_softmax(logp + 0.1 * torch.randn(7, generator=g, dtype=torch.float64), 0)
    true_kl = (logp.exp() * (logp - ref)).sum()
    p = logp.exp()
    row, ref_row = logp.view(1, 7), ref.view(1, 7)
    for est in (KLEstimator.K1, KLEstimator.K3):
        expectation = (p * kl_penalty(row, ref_row, est)[0]).sum()  # E_{y ~ pi}[k(y)]
        torch.testing.assert_close(expectation, true_kl)
    k2 = (p * kl_penalty(row, ref_row, KLEstimator.K2)[0]).sum()
    assert k2.item() == pytest.approx(true_kl.item(), rel=0.1)  # close for nearby distributions


def test_vs_naive_loop_and_gradient():
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(2, 4, generator=g, dtype=torch.float64).requires_grad_()
    ref = torch.randn(2, 4, generator=g, dtype=torch.float64)
    out = kl_penalty(logp, ref, KLEstimator.K3)
    for b in range(2):
        for t in range(4):
            d = ref[b, t].item() - logp[b, t].item()
            assert out[b, t].item() == pytest.approx(math.exp(d) - d - 1)
    out.sum().backward()
    torch.testing.assert_close(logp.grad, 1.0 - torch.exp(ref - logp.detach()))  # d/dlogp k3


def test_clamp_and_errors():
    logp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[5.0, 0.5]])
    out = kl_penalty(logp, ref, KLEstimator.K3, clamp=10.0)
    assert out[0, 0].item() == 10.0  # exp(5) - 6 = 142.4 clamped
    assert out[0, 1].item() == pytest.approx(math.exp(0.5) - 1.5)
    out.sum().backward()
    assert logp.grad[0, 0].item() == 0.0
    assert set(KL_ESTIMATORS) == set(KLEstimator)
    with pytest.raises(ValueError, match=r"ref_logprobs: expected shape \(1, 2\), received \(2,\)"):
        kl_penalty(logp, torch.zeros(2))
    with pytest.raises(TypeError, match="estimator"):
        kl_penalty(logp, ref, "k3")
    with pytest.raises(ValueError, match="clamp"):
        kl_penalty(logp, ref, clamp=0.0)
