"""Inter/intra-class distances against a naive loop, silhouette against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import pairwise_distances as sk_pairwise
from sklearn.metrics import silhouette_samples as sk_silhouette_samples
from sklearn.metrics import silhouette_score

from prismrl.evaluation.synthetic_quality import class_distances, pairwise_distances


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_against_sklearn_and_naive_loops(metric):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(13, 5, generator=gen)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3])  # class 3 is a singleton
    torch.testing.assert_close(pairwise_distances(x, metric), torch.from_numpy(sk_pairwise(x.double().numpy(), metric=metric)),
                               atol=1e-10, rtol=0)
    out = class_distances(x, labels, metric)
    assert out.silhouette == pytest.approx(silhouette_score(x.numpy(), labels.numpy(), metric=metric), abs=1e-6)
    d = sk_pairwise(x.double().numpy(), metric=metric)
    y = labels.numpy()
    same = [d[i, j] for i in range(13) for j in range(13) if i != j and y[i] == y[j]]
    diff = [d[i, j] for i in range(13) for j in range(13) if y[i] != y[j]]
    assert out.intra == pytest.approx(np.mean(same)) and out.inter == pytest.approx(np.mean(diff))
    for i in range(13):
        partners = [d[i, j] for j in range(13) if j != i and y[j] == y[i]]
        assert math.isnan(out.intra_per_sample[i]) if not partners else out.intra_per_sample[i] == pytest.approx(np.mean(partners))
        assert out.inter_per_sample[i] == pytest.approx(np.mean([d[i, j] for j in range(13) if y[j] != y[i]]))
    from prismrl.evaluation.synthetic_quality import silhouette_samples

    np.testing.assert_allclose(silhouette_samples(pairwise_distances(x, metric), labels).numpy(),
                               sk_silhouette_samples(x.numpy(), y, metric=metric), atol=1e-6)


def test_hand_computed_points_and_degenerate_sets():
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0]])
    out = class_distances(x, torch.tensor([0, 0, 1, 1]), "euclidean")
    assert out.intra == pytest.approx(1.0)
    assert out.inter == pytest.approx((3.0 + math.sqrt(10)) / 2)
    one_class = class_distances(x, torch.zeros(4), "euclidean")
    assert math.isnan(one_class.inter) and math.isnan(one_class.silhouette) and one_class.intra > 0
    with pytest.raises(ValueError, match="labels: expected 4 labels"):
        class_distances(x, torch.zeros(3))
    with pytest.raises(ValueError, match="metric: expected one of"):
        class_distances(x, torch.zeros(4), "manhattan")
